"""End to end: `python -m npair.train dataset=folder dataset.root=<tree>` trains and evaluates with a
class-disjoint split (the real entry point, in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def test_train_on_a_png_tree_writes_metrics(tmp_path, fake_data):
    pytest.importorskip("npair.train")
    tree = fake_data["folder"](tmp_path / "tree", {f"class_{i}": 4 for i in range(6)})
    out = tmp_path / "outputs"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "disabled",
    }
    cmd = [
        sys.executable,
        "-m",
        "npair.train",
        "dataset=folder",
        f"dataset.root={tree}",
        "backbone=small_convnet",
        "dataset.image_size=32",
        "trainer.max_steps=3",
        "trainer.progress_bar=false",
        "logger=none",
        "sampler.n_classes=2",
        f"paths.output_dir={out}",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = list(out.rglob("metrics.json"))
    assert len(found) == 1, proc.stderr[-2000:]
    metrics = json.loads(found[0].read_text())
    assert metrics["dataset"] == "folder" and metrics["protocol"] == "unseen"
    assert metrics["n_train"] == 12 and metrics["n_test"] == 12  # classes 0-2 train, 3-5 test
    assert metrics["steps_done"] == 3 and "recall@1" in metrics["final"]
