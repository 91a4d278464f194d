"""What a build finds in a run directory, for the config it composes now (the table runner and the
hyperparameter selection share it): usable, missing, of another config (stale), or unverified.

A stale or unverified directory stops the build, naming it and the keys that differ, unless it is moved
aside (``<dir>.stale-<its hash>``, nothing deleted) and trained again (``--rerun-stale``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from npair import identity, locks
from npair.runio import read_metrics


@dataclass(frozen=True)
class RunCheck:
    """What a build finds in one run directory, for the config it composes now.

    ``state``: ``completed`` (usable), ``missing`` (to train or resume), ``stale`` (it holds another config:
    ``reason`` names the differing keys), ``unverified`` (metrics.json says completed but does not belong
    to its config.yaml: ``reason`` says why) or ``unselected`` (a final run of a row whose hyperparameter
    is not chosen yet, so the config it must hold is not known: ``reason`` says why).
    """

    experiment: str
    seed: int
    run_dir: Path
    state: str
    reason: str = ""
    stored_hash: str | None = None  # the hash of the config the directory holds, if any

    @property
    def usable(self) -> bool:
        return self.state == "completed"


def check_dir(run_dir: Path, expected: DictConfig | dict[str, Any], experiment: str, seed: int) -> RunCheck:
    """:class:`RunCheck` of ``run_dir`` against the config ``expected`` (npair.identity)."""
    record = read_metrics(run_dir)
    stored = identity.stored_config(run_dir)
    stored_hash = identity.config_hash(stored) if stored is not None else (record or {}).get("config_hash")
    if stored is not None:
        diffs = identity.differences(stored, expected)
        if diffs:
            return RunCheck(experiment, seed, run_dir, "stale", identity.listing(diffs), stored_hash)
    if record and record.get("status") == "completed":
        problem = identity.record_problem(run_dir, record)
        if problem:
            return RunCheck(experiment, seed, run_dir, "unverified", problem, stored_hash)
        return RunCheck(experiment, seed, run_dir, "completed", stored_hash=stored_hash)
    return RunCheck(experiment, seed, run_dir, "missing", stored_hash=stored_hash)


BLOCKING = ("stale", "unverified", "unselected")  # states a build never reuses
_WHAT = {
    "stale": "another config",
    "unverified": "an unverified result",
    "unselected": "value not chosen yet",
}


def stale_message(bad: list[RunCheck], composer: str = "the table") -> str:
    """Why a build stops on the run directories ``bad`` (each named with its reason) and what to do."""
    many = "y" if len(bad) == 1 else "ies"
    lines = [
        f"stopped: {len(bad)} run director{many} would be reused for another config than {composer} "
        + "composes now:"
    ]
    for check in bad:
        what = _WHAT.get(check.state, check.state)
        lines.append(f"  {check.run_dir} ({what}, config {check.stored_hash or 'unknown'}): {check.reason}")
    lines.append(
        "Rebuild with the overrides those runs were trained with, or add --rerun-stale to move each "
        "aside (to <dir>.stale-<hash>; nothing is deleted) and train it again."
    )
    if any(check.state == "unselected" for check in bad):
        lines.append("A value not chosen yet is chosen by a build that trains (without --no-train).")
    return "\n".join(lines)


def settle(checks: Iterable[RunCheck], rerun_stale: bool, composer: str = "the table") -> list[RunCheck]:
    """Stop on the run directories a build must not reuse (:data:`BLOCKING`), naming them
    (:func:`stale_message`), or, with ``rerun_stale``, move each aside (:func:`move_aside`) so that it is
    trained again. Returns those moved aside."""
    bad = [check for check in checks if check.state in BLOCKING]
    if bad and not rerun_stale:
        raise SystemExit(stale_message(bad, composer))
    for check in bad:
        move_aside(check)
    return bad


def move_aside(check: RunCheck) -> Path:
    """Rename a stale run directory to ``<name>.stale-<hash>`` (``-2``, ``-3`` ... if taken), holding its lock
    (a process training in it is waited for). Returns the new path."""
    run_dir = check.run_dir
    with locks.locked(
        locks.run_lock(run_dir),
        on_wait=lambda who: print(
            f"{run_dir} is in use by {who}: waiting before moving it aside", flush=True
        ),
    ):
        base = run_dir.with_name(f"{run_dir.name}.stale-{check.stored_hash or 'unknown'}")
        target, n = base, 1
        while target.exists():
            n += 1
            target = base.with_name(f"{base.name}-{n}")
        os.rename(run_dir, target)
    print(f"moved {check.state} run {run_dir} aside to {target}", flush=True)
    return target


def add_run_dir_options(parser: argparse.ArgumentParser) -> None:
    """``--outputs`` and ``--rerun-stale``: where the runs live and what to do with runs of another config."""
    parser.add_argument(
        "--outputs", default=None, help="outputs directory (default: $NPAIR_ROOT/outputs or ./outputs)"
    )
    parser.add_argument(
        "--rerun-stale",
        action="store_true",
        help="move run directories of another config aside (<dir>.stale-<hash>), train again",
    )
