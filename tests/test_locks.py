"""npair.locks: a lock held by another process is seen, named and waited for; a killed holder releases it;
``python -m npair.train`` waits for the process that trains into its run directory and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from npair.locks import LOCK_FILE, Lock, holder, run_lock
from tests.helpers import TINY

HOLD = """
import sys, time
from npair.locks import Lock
lock = Lock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder_process(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_held_by_another_process_is_named_and_freed_when_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "run" / LOCK_FILE
    other = _holder_process(path, 60)
    try:
        assert holder(path).startswith(f"process {other.pid} on ")
        assert not Lock(path).acquire(wait=False)
        other.kill()  # killed: the kernel releases its flock
        other.wait(timeout=30)
        assert holder(path) is None
        mine = Lock(path)
        assert mine.acquire(wait=False) and mine.held
        mine.release()
    finally:
        other.kill()
    assert holder(tmp_path / "nothing" / LOCK_FILE) is None and not (tmp_path / "nothing").exists()


def test_waiting_says_for_whom_and_a_moved_lock_file_is_not_taken_for_its_path(tmp_path: Path) -> None:
    path = tmp_path / "seed0" / LOCK_FILE
    other = _holder_process(path, 2)
    said: list[str] = []
    lock = Lock(path)
    start = time.monotonic()
    assert lock.acquire(on_wait=said.append)  # blocks until the other process is done
    assert time.monotonic() - start > 0.5
    assert len(said) == 1 and said[0].startswith(f"process {other.pid} on ")
    lock.release()
    other.wait(timeout=30)
    # a directory moved aside while its lock was held: the lock now at the path is a new one
    held = Lock(path)
    held.acquire()
    os.rename(tmp_path / "seed0", tmp_path / "seed0.stale-x")
    fresh = Lock(path)
    assert fresh.acquire(wait=False)  # the file at the path is not the moved, still held one
    fresh.release()
    held.release()


def test_npair_train_waits_for_the_process_training_into_its_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    lock = run_lock(run_dir)
    assert lock.acquire(wait=False)  # this process "trains" into run_dir
    log = tmp_path / "train.log"
    env = {**os.environ, "WANDB_MODE": "offline"}
    with open(log, "w") as out:
        train = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "npair.train",
                *TINY,
                f"paths.root_dir={tmp_path}",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 120
        waiting = f"{run_dir} is in use by process {os.getpid()} on"
        while waiting not in log.read_text():
            assert time.time() < deadline and train.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        assert train.poll() is None and not (run_dir / "metrics.json").exists()  # nothing written meanwhile
    finally:
        lock.release()
    assert train.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
