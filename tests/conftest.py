"""Shared fixtures: compose the real Hydra configs with tiny, fast overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from npair.build import compose_train

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"

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


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` from ``cwd`` as a user would; W&B stays offline in tests."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
