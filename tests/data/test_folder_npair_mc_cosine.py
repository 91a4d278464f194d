"""The recommended loss on any image tree: `loss=npair_mc_cosine dataset=folder`, trained and selected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from npair.build import compose_train

SRC = Path(__file__).resolve().parents[2] / "src"
SMALL = [
    "backbone=small_convnet",
    "dataset.image_size=32",
    "trainer.max_steps=3",
    "trainer.progress_bar=false",
    "logger=none",
    "sampler.n_classes=2",
    "eval.kmeans_seeds=1",
]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "disabled",
    }


def test_npair_mc_cosine_is_the_normalised_form_with_its_own_sampler() -> None:
    cfg = compose_train(["loss=npair_mc_cosine"])
    assert cfg.loss._target_ == "npair.losses.NPairMCLoss" and cfg.loss.normalize_embeddings
    assert cfg.loss.reg_weight == 0.0 and 0.0 < cfg.loss.temperature < 1.0 and cfg.loss.anchors == "first"
    assert cfg.sampler._target_ == "npair.samplers.NPairSampler"


def test_npair_mc_cosine_trains_on_a_folder_tree(tmp_path: Path, fake_data) -> None:
    tree = fake_data["folder"](tmp_path / "tree", {f"class_{i}": 4 for i in range(6)})
    out = tmp_path / "outputs"
    cmd = [
        sys.executable,
        "-m",
        "npair.train",
        "loss=npair_mc_cosine",
        "dataset=folder",
        f"dataset.root={tree}",
        *SMALL,
        f"paths.output_dir={out}",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (found,) = list(out.rglob("metrics.json"))
    metrics = json.loads(found.read_text())
    assert (
        metrics["loss"] == "npair_mc_cosine"
        and metrics["dataset"] == "folder"
        and "recall@1" in metrics["final"]
    )


def test_selection_runs_on_a_folder_tree(tmp_path: Path, fake_data) -> None:
    # 10 classes: 5 train; validation holds out 2 of them (fraction 0.4), the remaining 3 train
    tree = fake_data["folder"](tmp_path / "tree", {f"class_{i}": 4 for i in range(10)})
    cmd = [
        sys.executable,
        "-m",
        "npair.select",
        "--grid",
        "loss.temperature=0.1,0.2",
        "--fraction",
        "0.4",
        "--final-seeds",
        "",
        "--outputs",
        str(tmp_path / "outputs"),
        "--name",
        "tree",
        "--jobs",
        "1",
        "loss=npair_mc_cosine",
        "dataset=folder",
        f"dataset.root={tree}",
        *SMALL,
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "outputs" / "selection" / "tree" / "selection.json").read_text())
    assert (
        record["validation"]["n_training_classes"] == 5 and record["validation"]["n_validation_classes"] == 2
    )
    run = tmp_path / "outputs" / "selection" / "tree" / "temperature-0.1" / "seed0"
    assert json.loads((run / "metrics.json").read_text())["n_test"] == 8  # 2 validation classes × 4 images
    assert OmegaConf.load(run / "config.yaml").dataset.validation.fraction == 0.4
