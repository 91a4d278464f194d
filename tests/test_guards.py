"""Guards: impossible combinations fail before any file of the run is written, with messages naming the
values; a non-finite loss stops the run naming the step and keeps the last good checkpoint; unusable
checkpoints fail naming the file; a failed checkpoint write leaves the previous checkpoint whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import npair.collectives
import npair.run_context
from npair.checkpoint import CheckpointError
from npair.guards import NonFiniteError, SettingsError, per_rank_batch, require_finite_grad, validate_settings
from npair.locks import LOCK_FILE
from npair.runio import CHECKPOINT_FILE
from npair.train import run
from tests.helpers import CONFIG_DIR, TINY, compose_config, run_cli

FAST = [
    *[o for o in TINY if not o.startswith("trainer.max_steps")],
    "trainer.max_steps=2",
    "trainer.probe_classes=0",
]


def _no_run_files(run_dir: Path) -> bool:
    """Nothing of the run in ``run_dir``: no folder, or only its lock file (npair.locks)."""
    return not run_dir.exists() or not any(p.name != LOCK_FILE for p in run_dir.iterdir())


# ------------------------------------------------------------------------ impossible combinations
@pytest.mark.parametrize(
    "override, message",
    [
        (
            "sampler.n_classes=12",
            (
                r"sampler.n_classes=12 \(N classes per batch\) is larger than the 10 classes of the "
                r"training split of dataset=glyphs; lower sampler.n_classes to at most 10"
            ),
        ),
        (
            "sampler.n_per_class=7",
            (
                r"sampler.n_per_class=7 \(M images per class\) is larger than the smallest class of "
                r"the training split of dataset=glyphs: class \d+ has 6 image\(s\)"
            ),
        ),
        (
            "eval.ks=[1,2,4,60]",
            (
                r"eval.ks=\[1, 2, 4, 60\]: Recall@60 needs more than 60 test images, but the test "
                r"split of dataset=glyphs has 60; lower eval.ks \(at most 59\)"
            ),
        ),
    ],
)
def test_impossible_combinations_fail_before_any_file_is_written(
    tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        run(compose_config([*FAST, override], tmp_path), tmp_path / "run")
    assert _no_run_files(tmp_path / "run")


def test_a_batch_that_does_not_divide_across_ranks_fails_before_any_file(tmp_path: Path, monkeypatch) -> None:
    # A rank-0 view of a 2-rank run (the real 2-process run is in test_ddp_train.py): the guard runs
    # before the sampler, so no collective is reached; broadcasts and barriers are identities here.
    monkeypatch.setattr(
        npair.run_context,
        "setup",
        lambda trainer, device: (npair.run_context.Context(0, 0, 2, "gloo"), device),
    )
    monkeypatch.setattr(npair.collectives, "broadcast_object", lambda obj, ctx: obj)
    monkeypatch.setattr(npair.collectives, "barrier", lambda ctx: None)
    cfg = compose_config([*FAST, "trainer=ddp", "sampler.n_classes=5"], tmp_path)
    with pytest.raises(
        ValueError,
        match=r"sampler.n_classes=5 does not divide across 2 ranks: the global batch is "
        r"split evenly between ranks; use a multiple of 2",
    ):
        run(cfg, tmp_path / "run")
    assert _no_run_files(tmp_path / "run")
    assert per_rank_batch(cfg.sampler, 1) == {"n_classes": 5}
    assert per_rank_batch(compose_config([*FAST, "sampler.n_classes=6"]).sampler, 2) == {"n_classes": 3}


def test_a_distributed_launch_without_trainer_ddp_fails(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2\) but trainer.distributed=false: add trainer=ddp"):
        run(compose_config(FAST, tmp_path), tmp_path / "run")
    assert _no_run_files(tmp_path / "run")


# ------------------------------------------------------------------------------- non-finite values
def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    # An absurd learning rate sends the embedding head to ~1e30 after the first step: inner products overflow.
    cfg = compose_config(
        [
            *FAST,
            "trainer.max_steps=6",
            "trainer.eval_every=0",
            "trainer.checkpoint_every=1",
            "optimizer.lr=1e30",
        ],
        tmp_path,
    )
    with pytest.raises(NonFiniteError, match=r"non-finite loss \((nan|inf)\) at step (\d+)") as failure:
        run(cfg, tmp_path / "run")
    step = int(failure.value.args[0].split(" at step ")[1].split(";")[0])
    assert 1 < step <= 6
    kept = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    assert kept["step"] == step - 1
    assert f"kept the last good checkpoint, {tmp_path / 'run' / CHECKPOINT_FILE} (step {step - 1})" in str(
        failure.value
    )
    assert all(torch.isfinite(t).all() for t in kept["model"].values() if t.is_floating_point())
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "failed" and record["steps_done"] == step - 1
    assert f"at step {step}" in record["error"]


def test_a_non_finite_gradient_names_the_step() -> None:
    require_finite_grad(torch.tensor(3.0), 7, "kept x")
    with pytest.raises(
        NonFiniteError, match=r"non-finite gradient \(norm nan\) at step 7; the run stopped and kept x"
    ):
        require_finite_grad(torch.tensor(float("nan")), 7, "kept x")


# ---------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("finished")
    run(compose_config(FAST, base), base / "run")
    return base


def test_a_truncated_checkpoint_fails_naming_the_file(finished_run: Path, tmp_path: Path) -> None:
    data = (finished_run / "run" / CHECKPOINT_FILE).read_bytes()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CHECKPOINT_FILE).write_bytes(
        data[: len(data) // 2]
    )  # no metrics.json: resume=auto uses it
    path = tmp_path / "run" / CHECKPOINT_FILE
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint {path} is unreadable — truncated or corrupt .*"
        rf"delete {path} \(or set trainer.resume=never\)",
    ):
        run(compose_config(FAST, tmp_path), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_checkpoint_of_another_model_fails_naming_the_file(finished_run: Path, tmp_path: Path) -> None:
    path = finished_run / "run" / CHECKPOINT_FILE
    cfg = compose_config([*FAST, "dataset.embedding_dim=16", f"trainer.resume={path}"], tmp_path)
    with pytest.raises(
        CheckpointError, match=rf"checkpoint {path} does not fit this run's model \(.*size mismatch"
    ):
        run(cfg, tmp_path / "run")
    assert _no_run_files(tmp_path / "run")


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path: Path, monkeypatch) -> None:
    real_save, writes = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == "npair-checkpoint":
            writes.append(obj["step"])
            if len(writes) == 2:
                raise OSError("No space left on device (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    cfg = compose_config(
        [*FAST, "trainer.max_steps=4", "trainer.eval_every=0", "trainer.checkpoint_every=1"], tmp_path
    )
    with pytest.raises(OSError, match="simulated"):
        run(cfg, tmp_path / "run")
    monkeypatch.undo()
    assert writes == [1, 2]
    assert torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)["step"] == 1
    hidden = [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]
    assert hidden == []  # no temporaries


# ------------------------------------------------------------------------------- settings out of range
@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.grad_clip=-1", "trainer.grad_clip=-1: must be a number > 0, or null"),
        ("trainer.grad_clip=0", "trainer.grad_clip=0: must be a number > 0, or null"),
        ("trainer.max_steps=-5", "trainer.max_steps=-5: must be an integer >= 1"),
        ("trainer.max_steps=0", "trainer.max_steps=0: must be an integer >= 1"),
        ("trainer.max_steps=2.5", "trainer.max_steps=2.5: must be an integer >= 1"),
        ("trainer.max_steps=abc", "trainer.max_steps='abc': must be an integer >= 1"),
        ("trainer.log_every=0", "trainer.log_every=0: must be an integer >= 1"),
        ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0: must be an integer >= 1"),
        ("trainer.eval_every=-1", "trainer.eval_every=-1: must be an integer >= 0"),
        ("trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1: must be an integer >= 0, or null"),
        ("optimizer.lr=abc", "optimizer.lr='abc': must be a number > 0"),
        ("optimizer.lr=0", "optimizer.lr=0: must be a number > 0"),
        ("seed=-1", "seed=-1: must be an integer >= 0"),
        ("trainer.threads=-1", "trainer.threads=-1: must be an integer >= 1, or null"),
        ("trainer.num_workers=-1", "trainer.num_workers=-1: must be an integer >= 0"),
        ("trainer.probe_classes=-1", "trainer.probe_classes=-1: must be an integer >= 0"),
        ("trainer.precision=64", "trainer.precision=64: must be one of auto, 32, fp32, bf16, fp16, 16"),
        ("eval.ks=[0,1]", "eval.ks contains 0: each K must be an integer >= 1"),
    ],
)
def test_settings_out_of_range_fail_naming_key_value_and_range_before_any_file(
    tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(SettingsError) as failure:
        run(compose_config([*FAST, override], tmp_path), tmp_path / "run")
    assert message in str(failure.value)
    assert not (tmp_path / "run").exists()  # nothing of the run, not even its folder


def test_every_bad_setting_is_named_at_once_and_the_command_line_exits_non_zero(tmp_path: Path) -> None:
    result = run_cli(
        [
            "npair.train",
            *FAST,
            "trainer.max_steps=abc",
            "optimizer.lr=-1",
            "seed=-3",
            f"paths.root_dir={tmp_path}",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    for message in (
        "trainer.max_steps='abc': must be an integer >= 1 (optimiser steps)",
        "optimizer.lr=-1: must be a number > 0 (learning rate)",
        "seed=-3: must be an integer >= 0",
    ):
        assert message in out
    assert not list(tmp_path.rglob("metrics.json"))  # nor the run's config.yaml (Hydra's .hydra/ is Hydra's)
    assert [p for p in tmp_path.rglob("config.yaml") if p.parent.name != ".hydra"] == []


def test_every_trainer_config_passes_the_settings_check() -> None:  # experiments: test_experiment_configs.py
    for trainer in sorted((CONFIG_DIR / "trainer").glob("*.yaml")):
        validate_settings(compose_config([f"trainer={trainer.stem}"]))


def test_a_run_that_fails_after_its_metrics_json_exists_ends_failed_with_the_error(
    tmp_path: Path, monkeypatch
) -> None:
    def broken(*args, **kwargs):  # fails between the logger's start and the step loop
        raise RuntimeError("wrapping failed (simulated)")

    monkeypatch.setattr(npair.run_context, "for_training", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        run(compose_config(FAST, tmp_path), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: wrapping failed (simulated)"
