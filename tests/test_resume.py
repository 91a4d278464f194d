"""Crash-safe runs: a run killed with SIGKILL and restarted in its run directory ends exactly like one
never interrupted; completed runs are left alone; the batch stream and RNG states resume exactly."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from npair.checkpoint import CheckpointError, RunDirectoryConflict, capture_rng, restore_rng
from npair.locks import LOCK_FILE
from npair.runio import CHECKPOINT_FILE
from npair.samplers import NPairSampler
from npair.stream import BatchStream, SkippingBatchSampler
from npair.train import run
from tests.helpers import TINY, compose_config, run_cli

# Long enough (in steps) for the test to kill the run between its first checkpoint and its end.
KILLABLE = [
    *[o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.eval_every", "trainer.log_every"))],
    "trainer.max_steps=80",
    "trainer.eval_every=40",
    "trainer.log_every=10",
    "trainer.checkpoint_every=5",
    "trainer.probe_classes=0",
    "trainer.threads=1",
]


def _model_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)["model"]


def test_sigkill_mid_run_then_restart_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    def command(run_dir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "npair.train",
            *KILLABLE,
            f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={run_dir}",
        ]

    env = {**os.environ, "WANDB_MODE": "offline"}
    run_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    # the uninterrupted run, in a process of its own like the others (a test process's global state could
    # differ)
    straight = subprocess.Popen(
        command(straight_dir),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    child = subprocess.Popen(
        command(run_dir), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        while child.poll() is None and not (run_dir / CHECKPOINT_FILE).exists():
            time.sleep(0.005)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, (
        f"the run ended before it could be killed:\n{child.stderr.read()[-2000:]}"
    )
    killed_at = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)["step"]
    assert 0 < killed_at < 80
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"

    restarted = subprocess.run(
        command(run_dir), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resuming" in restarted.stdout
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] >= killed_at

    assert straight.wait(timeout=300) == 0, straight.stderr.read()[-3000:]
    record = json.loads((straight_dir / "metrics.json").read_text())
    killed_model, straight_model = _model_state(run_dir), _model_state(straight_dir)
    assert all(torch.equal(killed_model[k], straight_model[k]) for k in straight_model)  # bit for bit
    assert resumed["final"] == record["final"] and resumed["history"] == record["history"]
    rows = (run_dir / "train_log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(
        range(10, 81, 10)
    )  # rows before the kill carried over


def test_a_completed_run_is_left_alone_and_resume_never_starts_over(tmp_path: Path) -> None:
    overrides = [*TINY, "trainer.max_steps=2", "trainer.probe_classes=0"]
    first = run(compose_config(overrides, tmp_path), tmp_path / "run")

    def run_files() -> dict[str, int]:  # the run's own files; its lock file (npair.locks) is not one
        return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir() if p.name != LOCK_FILE}

    files = run_files()
    again = run(compose_config(overrides, tmp_path), tmp_path / "run")
    assert again == first
    assert run_files() == files  # nothing rewritten
    over = run(compose_config([*overrides, "trainer.resume=never"], tmp_path), tmp_path / "run")
    assert over == first
    assert (tmp_path / "run" / "metrics.json").stat().st_mtime_ns != files["metrics.json"]


def test_resuming_with_another_config_fails_naming_the_keys(tmp_path: Path) -> None:
    overrides = [*TINY, "trainer.max_steps=2", "trainer.probe_classes=0"]
    run(compose_config(overrides, tmp_path), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (tmp_path / "run" / "metrics.json").write_text(
        json.dumps({**record, "status": "running"})
    )  # as if it crashed
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint .*checkpoint.pt was written by a different configuration "
        r"\(seed: 0 -> 1\)",
    ):
        run(compose_config([*overrides, "seed=1"], tmp_path), tmp_path / "run")


# ------------------------------------------------------------------------------------ the parts
def _stream(labels: np.ndarray) -> tuple[BatchStream, torch.utils.data.DataLoader]:
    sampler = SkippingBatchSampler(NPairSampler(labels, seed=3, n_classes=2, epoch_length=3))
    data = torch.utils.data.TensorDataset(torch.arange(len(labels)), torch.from_numpy(labels))
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=sampler, generator=torch.Generator().manual_seed(5)
    )
    return BatchStream(loader, sampler), loader


@pytest.mark.parametrize("consumed, epoch, position", [(0, 0, 0), (2, 0, 2), (3, 0, 3), (4, 1, 1), (7, 2, 1)])
def test_a_resumed_batch_stream_continues_with_the_same_batches(
    consumed: int, epoch: int, position: int
) -> None:
    labels = np.repeat(np.arange(6), 4)  # 3 batches per epoch
    straight, _ = _stream(labels)
    expected = [(e, b[0].tolist()) for e, b in (next(straight) for _ in range(consumed + 5))]
    first, _ = _stream(labels)
    for _ in range(consumed):
        next(first)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (epoch, position)
    resumed, _ = _stream(labels)
    resumed.load_state_dict(state)
    assert [(e, b[0].tolist()) for e, b in (next(resumed) for _ in range(5))] == expected[consumed:]


def test_rng_states_round_trip() -> None:
    state = capture_rng()
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_corrupt_metrics_next_to_a_checkpoint_is_not_mistaken_for_a_completed_run(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    shutil.copy(__file__, tmp_path / "run" / "metrics.json")  # not JSON
    with pytest.raises(ValueError, match="metrics.json is not valid JSON"):
        run(compose_config([*TINY, "trainer.max_steps=1"], tmp_path), tmp_path / "run")


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_the_run_resumes_exactly(
    tmp_path: Path, monkeypatch
) -> None:
    overrides = [*TINY, "trainer.max_steps=5", "trainer.probe_classes=0", "trainer.threads=1"]
    straight = run(compose_config(overrides, tmp_path), tmp_path / "straight")
    import npair.train

    real_accuracy, calls = npair.train.batch_accuracy, []

    def signal_at_step_3(*args, **kwargs):  # called once per logged step, inside the loop
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as SLURM does before a preemption
        return real_accuracy(*args, **kwargs)

    monkeypatch.setattr(npair.train, "batch_accuracy", signal_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config(overrides, tmp_path), tmp_path / "stopped")
    monkeypatch.undo()
    record = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["steps_done"] == 3
    assert torch.load(tmp_path / "stopped" / CHECKPOINT_FILE, weights_only=True)["step"] == 3
    assert run(compose_config(overrides, tmp_path), tmp_path / "stopped") == straight
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the loop's handler is gone again


def test_a_completed_run_directory_is_not_reused_for_another_config(tmp_path: Path) -> None:
    overrides = [*TINY, "trainer.max_steps=2", "trainer.probe_classes=0"]
    run(compose_config(overrides, tmp_path), tmp_path / "run")
    before = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(
        RunDirectoryConflict,
        match=r"run holds a completed run of another configuration "
        r"\(loss.reg_weight: 0.002 -> 0.5; seed: 0 -> 3\); it is "
        r"not reused for this one",
    ):
        run(compose_config([*overrides, "seed=3", "loss.reg_weight=0.5"], tmp_path), tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").read_text() == before  # the completed run is untouched
    # the command line: exit non-zero, naming the keys; the same config is still left alone (exit 0)
    command = ["npair.train", *overrides, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]
    other = run_cli([*command, "seed=3", "loss.reg_weight=0.5"], cwd=tmp_path)
    assert other.returncode != 0 and "loss.reg_weight: 0.002 -> 0.5; seed: 0 -> 3" in other.stderr
    same = run_cli(command, cwd=tmp_path)
    assert same.returncode == 0, same.stderr[-2000:]
    assert "holds a completed run of this config: left alone" in same.stdout + same.stderr
    assert (tmp_path / "run" / "metrics.json").read_text() == before


def test_an_unfinished_run_without_a_checkpoint_is_not_reused_for_another_config(tmp_path: Path) -> None:
    overrides = [*TINY, "trainer.max_steps=2", "trainer.probe_classes=0", "trainer.save_checkpoint=false"]
    run(compose_config(overrides, tmp_path), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({**record, "status": "failed"}))
    with pytest.raises(
        RunDirectoryConflict,
        match=r"holds an unfinished run with no checkpoint of another "
        r"configuration \(trainer.max_steps: 2 -> 3\)",
    ):
        run(compose_config([*overrides, "trainer.max_steps=3"], tmp_path), tmp_path / "run")
    assert run(compose_config(overrides, tmp_path), tmp_path / "run")  # the same config trains it again
