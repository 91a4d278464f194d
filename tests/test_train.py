"""The training entry point: run directory contents, determinism, overrides, sweeps, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from npair.runio import METRICS_SCHEMA_VERSION
from npair.train import run
from tests.helpers import TINY, compose_config, run_cli


def test_run_writes_a_complete_run_directory(tmp_path: Path) -> None:
    cfg = compose_config(TINY, tmp_path)
    final = run(cfg, tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "metrics.json", "checkpoint.pt", "train_log.csv"} <= files
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["schema_version"] == METRICS_SCHEMA_VERSION
    assert record["status"] == "completed"
    assert record["similarity"] == "cosine"
    assert len(record["config_hash"]) == 16
    assert [h["step"] for h in record["history"]] == [2, 4]  # eval_every=2 and at the end
    assert record["final"] == pytest.approx({k: v for k, v in record["history"][-1].items() if k != "step"})
    assert set(final) >= {"recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1"}
    assert 0.0 <= final["recall@1"] <= final["recall@8"] <= 1.0
    rows = list(csv.DictReader(open(tmp_path / "run" / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["loss"]) > 0 for r in rows)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4 and "model" in ckpt and ckpt["config"]["seed"] == 0


@pytest.mark.parametrize("channels_last", ["auto", "true"])  # true: the mini tables' CPU setting
def test_same_config_and_seed_give_identical_metrics(tmp_path: Path, channels_last: str) -> None:
    overrides = [*TINY, f"trainer.channels_last={channels_last}"]
    first = run(compose_config(overrides, tmp_path), tmp_path / "a")
    second = run(compose_config(overrides, tmp_path), tmp_path / "b")
    assert first == second  # exact, not approximate
    other_seed = run(compose_config([*overrides, "seed=1"], tmp_path), tmp_path / "c")
    assert other_seed != first


@pytest.mark.parametrize("loss", ["triplet", "npair_mc"])
def test_each_loss_trains_with_its_default_sampler(tmp_path: Path, loss: str) -> None:
    sampler = "sampler.n_classes=4" if loss != "triplet" else "sampler.n_triplets=4"
    cfg = compose_config(
        [*[o for o in TINY if not o.startswith("sampler.")], f"loss={loss}", sampler], tmp_path
    )
    final = run(cfg, tmp_path / loss)
    assert final["recall@1"] >= 0.0


def test_mismatched_loss_and_sampler_fail_before_training(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "loss=triplet", "sampler=npair"], tmp_path)
    with pytest.raises(
        ValueError, match="loss=triplet reads 'triplets' batches but sampler=npair makes 'class_blocks'"
    ):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


# ----------------------------------------------------------------------------- the command line
def test_cli_overrides_and_run_directory(tmp_path: Path) -> None:
    result = run_cli(
        [
            "npair.train",
            "dataset=glyphs",
            "loss=npair_mc",
            "trainer.max_steps=3",
            "sampler.n_classes=3",
            *[o for o in TINY if not o.startswith(("trainer.max_steps", "sampler."))],
            f"paths.root_dir={tmp_path}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "runs" / "npair_mc-glyphs").iterdir())
    assert len(runs) == 1
    record = json.loads((runs[0] / "metrics.json").read_text())
    assert record["status"] == "completed" and record["history"][-1]["step"] == 3
    assert "sampler:\n  name: npair\n" in (runs[0] / "config.yaml").read_text()
    assert (runs[0] / "train.log").exists()


def test_cli_multirun_makes_one_directory_per_job(tmp_path: Path) -> None:
    # Each loss with its default sampler (60 classes × 2 / 40 triplets): 60 training classes are needed.
    overrides = [o for o in TINY if not o.startswith(("sampler.", "dataset.build.n_classes"))] + [
        "dataset.build.n_classes=120"
    ]
    result = run_cli(
        ["npair.train", "-m", "loss=triplet,npair_mc", "seed=0,1", *overrides, f"paths.root_dir={tmp_path}"],
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    paths = sorted((tmp_path / "outputs" / "multiruns").rglob("metrics.json"))
    records = [json.loads(p.read_text()) for p in paths]
    assert len(records) == 4
    assert sorted((r["loss"], r["seed"]) for r in records) == [
        ("npair_mc", 0),
        ("npair_mc", 1),
        ("triplet", 0),
        ("triplet", 1),
    ]
    assert all(r["status"] == "completed" for r in records)
    # one sweep, one folder: every job and the sweep's multirun.yaml, whatever the sweep varies (loss -> name)
    (sweep,) = (tmp_path / "outputs" / "multiruns").iterdir()
    assert {p.parent for p in paths} == {sweep / str(job) for job in range(4)}
    assert (sweep / "multirun.yaml").is_file()


@pytest.mark.parametrize(
    "override, message",
    [
        ("dataset=no_such_dataset", "Could not find 'dataset/no_such_dataset'"),
        ("loss=no_such_loss", "Could not find 'loss/no_such_loss'"),
        ("trainer.max_stepz=3", "Key 'max_stepz' is not in struct"),
    ],
)
def test_unknown_names_and_misspelt_keys_fail_at_once(tmp_path: Path, override: str, message: str) -> None:
    result = run_cli(
        ["npair.train", override, "logger=none", f"paths.root_dir={tmp_path}"], cwd=tmp_path, timeout=120
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "outputs").exists()  # failed before any work


def test_the_training_function_stays_under_120_lines() -> None:
    """train() reads top to bottom with the loop at its centre; its set-up lives in npair.build."""
    import inspect

    import npair.train

    lines = inspect.getsource(npair.train.train).splitlines()
    assert len(lines) < 120, f"npair.train.train is {len(lines)} lines long; keep it under 120"
