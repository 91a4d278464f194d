"""Helpers shared by the tests: the tiny run overrides, composing the real configs with them, running a
command as a user would, and the tiny outputs tree that several test modules read."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from npair.build import compose_train
from npair.configuration import CONFIG_DIR
from npair.tables import Row, TableSpec, write_table
from npair.train import run

REPO = Path(__file__).resolve().parents[1]
__all__ = ["CONFIG_DIR", "PAPER", "REPO", "TINY", "compose_config", "run_cli", "tiny_outputs"]

# A glyphs run that takes seconds: 20 classes (10 train / 10 test) × 6 images, a narrow net, 3 steps.
TINY = [
    "dataset.build.n_classes=20",
    "dataset.build.images_per_class=6",
    "backbone.net.widths=[8,8,8,8]",
    "dataset.embedding_dim=8",
    "sampler.n_classes=4",
    "trainer.max_steps=4",
    "trainer.eval_every=2",
    "trainer.log_every=1",
    "trainer.progress_bar=false",
    "eval.kmeans_seeds=2",
    "logger=none",
]


def compose_config(overrides: list[str] | None = None, tmp_path: Path | None = None) -> DictConfig:
    extra = [f"paths.root_dir={tmp_path}"] if tmp_path is not None else []
    return compose_train([*extra, *(overrides or [])])


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` from ``cwd`` as a user would; W&B stays offline in tests."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


# The paper's CUB-200 Recall@K of 60-pair-mc (Table 2c), the reference row of the tiny table.
_CACHE: dict[str, Any] = {}
PAPER = {"recall@1": 50.96, "recall@2": 63.34, "recall@4": 74.29, "recall@8": 83.22}


def tiny_outputs(base: Path) -> dict[str, Any]:
    """Train three tiny runs once per session into an outputs tree like ``make reproduce-table`` makes (two
    seeds of N-pair-mc logged to W&B offline, one triplet run with ``logger=none``) and build their table.
    Returns paths and stdout (memoised: later calls return the first tree)."""
    if "outputs" in _CACHE:
        return _CACHE
    root = base / "outputs"
    wandb_dir, none_wandb_dir = base / "wandb_dir", base / "wandb_dir_none"
    overrides = [o for o in TINY if o != "logger=none"]
    runs: dict[str, Path] = {}
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_DIR", str(wandb_dir))
        for seed in (0, 1):
            cfg = compose_config([*overrides, "logger=wandb", "name=tiny/npair_mc", f"seed={seed}"], base)
            runs[f"npair_mc/seed{seed}"] = root / "runs" / "tiny" / "npair_mc" / f"seed{seed}"
            run(cfg, runs[f"npair_mc/seed{seed}"])
        mp.setenv("WANDB_DIR", str(none_wandb_dir))
        triplet = [o for o in overrides if not o.startswith("sampler.")]
        cfg = compose_config(
            [*triplet, "logger=none", "loss=triplet", "sampler.n_triplets=4", "name=tiny/triplet"], base
        )
        runs["triplet/seed0"] = root / "runs" / "tiny" / "triplet" / "seed0"
        run(cfg, runs["triplet/seed0"])
    spec = TableSpec(
        name="tiny",
        title="Tiny table",
        seeds=[0, 1],
        metrics=[{"key": k, "label": k} for k in ("recall@1", "recall@2", "recall@4", "recall@8", "nmi")],
        rows=[
            Row("triplet", "tiny/triplet", paper={"recall@1": 43.30}),
            Row("4-pair-mc", "tiny/npair_mc", paper=dict(PAPER)),
        ],
        paper_source="test fixture",
    )
    tables = write_table(spec, root)
    _CACHE.update(
        outputs=root,
        base=base,
        runs=runs,
        wandb_dir=wandb_dir,
        none_wandb_dir=none_wandb_dir,
        table_csv=tables["csv"],
        stdout=stdout.getvalue(),
    )
    return _CACHE
