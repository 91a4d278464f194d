"""`python -m npair.tables` end to end on the `smoke` table: killed mid-run, it finishes only what is missing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO


def tables_cmd(outputs: Path) -> list[str]:
    return [sys.executable, "-m", "npair.tables", "TABLE=smoke", "--jobs", "1", "--outputs", str(outputs)]


def completed_runs(outputs: Path) -> dict[Path, float]:
    done = {}
    for path in (outputs / "runs").rglob("metrics.json"):
        if json.loads(path.read_text()).get("status") == "completed":
            done[path] = path.stat().st_mtime
    return done


def test_killed_table_run_restarts_only_the_missing_runs(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "NPAIR_ROOT": str(tmp_path)}
    outputs = tmp_path / "outputs"
    first = subprocess.Popen(tables_cmd(outputs), cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not completed_runs(outputs):
        time.sleep(0.2)
    assert first.poll() is None, "the table finished before it could be interrupted"
    os.killpg(first.pid, signal.SIGKILL)  # the runner and its training processes, mid-table
    first.wait()
    before = completed_runs(outputs)
    assert 1 <= len(before) < 4

    second = subprocess.run(tables_cmd(outputs), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    launched = [int(n) for n in re.findall(r"^training (\d+) runs?: ", second.stdout, flags=re.MULTILINE)]
    assert sum(launched) == 4 - len(before)  # one sweep per set of missing seeds
    after = completed_runs(outputs)
    assert len(after) == 4
    assert all(after[path] == mtime for path, mtime in before.items())  # finished runs were not touched
    table = (outputs / "tables" / "smoke.md").read_text()
    assert "missing" not in table and "(1/2 seeds)" not in table

    third = subprocess.run(tables_cmd(outputs), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "training" not in third.stdout  # nothing left to train: the table is rebuilt from the runs
    assert completed_runs(outputs) == after
    assert (outputs / "tables" / "smoke.md").read_text() == table
