"""trainer.compile=true: torch.compile'd training reaches the metrics of eager training (slow: compiles
C++ on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from npair.train import run
from tests.helpers import TINY, compose_config


@pytest.mark.slow
def test_compiled_training_matches_eager_training(tmp_path: Path) -> None:
    overrides = [*TINY, "trainer.max_steps=3", "trainer.eval_every=0", "trainer.probe_classes=0"]
    eager = run(compose_config(overrides, tmp_path), tmp_path / "eager")
    compiled = run(compose_config([*overrides, "trainer.compile=true"], tmp_path), tmp_path / "compiled")
    assert {k: v for k, v in compiled.items() if k.startswith("recall")} == pytest.approx(
        {k: v for k, v in eager.items() if k.startswith("recall")}, abs=1e-6
    )
