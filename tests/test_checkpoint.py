"""What a checkpoint holds loads with torch.load(weights_only=True) (RNG states, numpy values, history),
and a checkpoint written by an earlier version of the code (tests/fixtures/run_212a68e) still loads and
resumes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from npair import checkpoint as ckpt
from npair.runio import CHECKPOINT_FILE
from npair.train import run
from tests.helpers import TINY, compose_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_212a68e"


def test_everything_a_run_checkpoints_loads_with_weights_only(tmp_path: Path) -> None:
    # hard negative class mining and a softmax classifier: the samplers and losses with the most state
    for name, overrides in {
        "mining": ["sampler=npair_hard_class", "sampler.n_candidates=8"],
        "softmax": ["loss=softmax", "sampler.n_classes=4"],
    }.items():
        base = [o for o in TINY if not o.startswith("sampler.")] if name == "softmax" else TINY
        run(compose_config([*base, *overrides, "trainer.max_steps=3"], tmp_path), tmp_path / name)
        path = tmp_path / name / CHECKPOINT_FILE
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert list(state) == [
            "format",
            "version",
            *ckpt.REQUIRED[:7],
            "step",
            "history",
            "elapsed_s",
            "skipped_at_load",
            "config",
            "config_hash",
            "rng",
        ]
        (rng,) = state["rng"]  # one rank
        assert isinstance(rng["numpy"]["keys"], torch.Tensor) and rng["numpy"]["keys"].shape == (624,)
        assert isinstance(rng["python"][1], tuple) and isinstance(rng["torch"], torch.Tensor)
        assert state["history"] == json.loads((tmp_path / name / "metrics.json").read_text())["history"]
        assert state["step"] == 3 and state["config"]["loss"]["name"] == (
            "softmax" if name == "softmax" else "npair_mc"
        )
        assert ckpt.load(path)["step"] == 3  # and so does the validating reader


def test_numpy_values_in_a_state_or_the_history_are_stored_in_weights_only_types(tmp_path: Path) -> None:
    bn = torch.nn.BatchNorm2d(3).state_dict()  # a state_dict carries _metadata: it must pass unchanged
    state = {key: {} for key in ckpt.REQUIRED if key != "rng"}
    state.update(
        model=bn,
        step=7,
        config={"seed": 0},
        sampler={"order": np.arange(5), "epoch": np.int64(2), "pairs": [(1, np.float32(0.5))]},
        history=[{"step": 7, "recall@1": np.float64(0.25)}],
    )
    path = tmp_path / CHECKPOINT_FILE
    ckpt.save(path, state, [ckpt.capture_rng()])
    loaded = ckpt.load(path)  # weights_only=True
    assert torch.equal(loaded["sampler"]["order"], torch.arange(5))
    assert loaded["sampler"]["epoch"] == 2 and type(loaded["sampler"]["epoch"]) is int
    assert loaded["sampler"]["pairs"] == [(1, 0.5)]
    assert loaded["history"] == [{"step": 7, "recall@1": 0.25}]
    assert type(loaded["history"][0]["recall@1"]) is float
    assert loaded["model"]._metadata == bn._metadata
    assert ckpt.weights_only_types(bn) is bn


def test_a_foreign_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_FILE
    torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION, "extra": Path("/")}, path)  # arbitrary object
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint {path} is unreadable"):
        ckpt.load(path)


def test_a_checkpoint_written_by_commit_212a68e_loads_and_resumes(tmp_path: Path) -> None:
    state = ckpt.load(FIXTURE / CHECKPOINT_FILE)
    assert state["version"] == ckpt.VERSION and state["step"] == 4
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    resume = f"trainer.resume={run_dir / CHECKPOINT_FILE}"  # a path: the config may differ in its data paths
    overrides = [*TINY, "trainer.threads=1", "trainer.max_steps=6", resume]
    final = run(compose_config(overrides, tmp_path), run_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    old = json.loads((FIXTURE / "metrics.json").read_text())
    assert record["status"] == "completed" and record["resumed_from_step"] == 4
    assert record["history"][:2] == old["history"]  # the evaluations at steps 2 and 4, carried over
    assert [h["step"] for h in record["history"]] == [2, 4, 6] and record["final"] == final
    with open(run_dir / "train_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(FIXTURE / "train_log.csv", newline="") as handle:
        old_rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows[:4]] == [r["loss"] for r in old_rows]
    assert ckpt.load(run_dir / CHECKPOINT_FILE)["step"] == 6
