"""What a build finds in a run directory, for the config it composes now (the table runner and the
hyperparameter selection share it): usable, missing, of another config (stale), or unverified.

A stale or unverified directory stops the build, naming it and the keys that differ, unless it is moved
aside (``<dir>.stale-<its hash>``, nothing deleted) and trained again (``--rerun-stale``).
"""

from __future__ import annotations

import os
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
    ``reason`` names the differing keys) or ``unverified`` (metrics.json says completed but does not belong
    to its config.yaml: ``reason`` says why).
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


def stale_message(bad: list[RunCheck]) -> str:
    many = "y" if len(bad) == 1 else "ies"
    lines = [f"stopped: {len(bad)} run director{many} would be reused for another config than the table "
             + "composes now:"]
    for check in bad:
        what = "another config" if check.state == "stale" else "an unverified result"
        lines.append(f"  {check.run_dir} ({what}, config {check.stored_hash or 'unknown'}): {check.reason}")
    lines.append("Rebuild with the overrides those runs were trained with, or add --rerun-stale to move each "
                 "aside (to <dir>.stale-<hash>; nothing is deleted) and train it again.")
    return "\n".join(lines)


def move_aside(check: RunCheck) -> Path:
    """Rename a stale run directory to ``<name>.stale-<hash>`` (``-2``, ``-3`` ... if taken), holding its lock
    (a process training in it is waited for). Returns the new path."""
    run_dir = check.run_dir
    with locks.locked(locks.run_lock(run_dir), on_wait=lambda who: print(
            f"{run_dir} is in use by {who}: waiting before moving it aside", flush=True)):
        base = run_dir.with_name(f"{run_dir.name}.stale-{check.stored_hash or 'unknown'}")
        target, n = base, 1
        while target.exists():
            n += 1
            target = base.with_name(f"{base.name}-{n}")
        os.rename(run_dir, target)
    print(f"moved {check.state} run {run_dir} aside to {target}", flush=True)
    return target
