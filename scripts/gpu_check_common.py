"""Shared by the GPU check's stage scripts (scripts/gpu_check_*.py): sizes per mode, the result record, JPEGs.

Every stage script is run by scripts/gpu_check.py as

    python scripts/gpu_check_<stage>.py --mode gpu|cpu-smoke --work <scratch dir> --result <json path>

and writes one JSON result: ``status`` (pass / fail), ``checks`` (each a name, ``ok`` true / false / null
for skipped, and a detail), ``figures`` (what it measured) and ``notes``. A stage passes when none of its
checks failed; a skipped check (an optional package missing, say) does not fail it but is listed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
MODES = ("gpu", "cpu-smoke")

# The generated image tree of stages 4 and 5 (stage 2 makes its own through bench_train.py): classes of
# CUB-like JPEGs (500×375 on the GPU), 70 % of the classes train, the rest test.
JPEGS = {
    "gpu": {"classes": 100, "per_class": 6, "size": (500, 375)},
    "cpu-smoke": {"classes": 24, "per_class": 4, "size": (160, 120)},
}


@dataclass
class Result:
    """What one stage found: checks (pass / fail / skipped), figures, notes."""

    checks: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None  # where the result is saved after every check (a stage killed midway keeps them)

    def check(self, name: str, ok: bool | None, detail: Any = None) -> bool | None:
        """Record a check; ``ok=None`` records it as skipped."""
        self.checks.append({"name": name, "ok": None if ok is None else bool(ok), "detail": detail})
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[None if ok is None else bool(ok)]
        print(f"[{mark}] {name}: {detail}", flush=True)
        if self.path is not None:
            write_json(self.path, self.to_dict())
        return ok

    @property
    def status(self) -> str:
        return "fail" if any(c["ok"] is False for c in self.checks) else "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checks": self.checks, "figures": self.figures, "notes": self.notes}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic write: readers see the old complete file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def stage_main(run: Callable[[str, Path, Result, float], None]) -> None:
    """The command line of a stage script: parse, run, write the result (a crash is a failed check).

    ``run(mode, work, result, budget_s)``: ``budget_s`` is the time the GPU check gives the stage (it is
    killed after that), so a stage can stop its own long parts in time to report what it measured.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--work", type=Path, required=True, help="scratch directory shared by the stages")
    parser.add_argument("--result", type=Path, required=True, help="where to write this stage's JSON result")
    parser.add_argument(
        "--budget-s", type=float, default=600.0, help="seconds before the GPU check kills the stage"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = Result(path=args.result)
    started = time.perf_counter()
    try:
        run(args.mode, args.work, result, args.budget_s)
    except Exception as err:  # noqa: BLE001 (recorded as the stage's failure, with the traceback in the log)
        traceback.print_exc()
        result.check("stage ran without an exception", False, f"{type(err).__name__}: {err}")
    result.figures.setdefault("stage_s", round(time.perf_counter() - started, 1))
    write_json(args.result, result.to_dict())
    sys.exit(0 if result.status == "pass" else 1)


def ensure_jpegs(work: Path, mode: str) -> tuple[Path, dict[str, Any]]:
    """The generated image tree of ``mode`` under ``work`` (made once, reused by later stages)."""
    sys.path.insert(0, str(SCRIPTS))
    from bench_train import make_jpegs

    spec = JPEGS[mode]
    root = work / f"jpegs_{mode}"
    done = root / ".complete"
    if not done.exists():
        if root.exists():  # an earlier stage stopped while writing it
            import shutil

            shutil.rmtree(root)
        make_jpegs(root, spec["classes"], spec["per_class"], spec["size"])
        done.write_text("ok\n")
    return root, spec


def npair_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``python -m npair.train``: this checkout's src first, W&B off, unbuffered
    output."""
    env = dict(os.environ)
    paths = [str(REPO / "src"), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def run_logged(
    cmd: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> int | None:
    """Run ``cmd`` with its output in ``log`` (a scratch file), then copied into this stage's output; its exit
    code, or None when it ran past ``timeout`` seconds (then its whole process group is killed)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            cmd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env or npair_env(),
            cwd=cwd,
            start_new_session=True,
        )  # its own process group: a timeout stops its children too
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
            handle.write(f"\n[killed after {timeout:.0f} s, the time this stage had left for it]\n")
    echo_log(log, cmd, returncode)
    return returncode


def echo_log(log: Path, cmd: list[str], returncode: int | None) -> None:
    """Copy a subprocess's log into this stage's output (which the GPU check keeps under logs/)."""
    print(f"\n$ {' '.join(cmd)}\n--- output ({log.name}) ---", flush=True)
    print(log.read_text(errors="replace") if log.exists() else "(no output)", flush=True)
    print(f"--- exit code {returncode} ---", flush=True)


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file (for a failure's detail)."""
    if not path.exists():
        return f"({path} was not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def nccl_version() -> str | None:
    """NCCL's version as torch reports it (a tuple in recent releases, an int in older ones)."""
    import torch

    if not torch.cuda.is_available() or not hasattr(torch.cuda, "nccl"):
        return None
    version = torch.cuda.nccl.version()
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
