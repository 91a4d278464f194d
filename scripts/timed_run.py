"""Shared by scripts/bench_train.py and scripts/bench_mini_run.py: one training run, in-process and timed.

Composes the config as ``python -m npair.train <overrides>`` would, runs it with ``npair.train.run`` into
``run_dir`` and returns the wall time with what the run wrote: the ``elapsed_s`` column of train_log.csv
(one value per logged step) and metrics.json.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from omegaconf import DictConfig

from npair.build import compose_train
from npair.runio import METRICS_FILE, TRAIN_LOG_FILE
from npair.train import run


@dataclass
class TimedRun:
    cfg: DictConfig
    seconds: float  # the whole run: data, training, evaluation
    elapsed: list[float]  # train_log.csv elapsed_s, one per logged step
    record: dict[str, Any]  # metrics.json

    def seconds_after(self, warmup: int) -> float:
        """Training time of the logged steps after the first ``warmup`` (needs trainer.log_every=1)."""
        return self.elapsed[-1] - self.elapsed[warmup - 1]


def timed_run(overrides: list[str], run_dir: Path) -> TimedRun:
    cfg = compose_train(overrides)
    started = time.perf_counter()
    run(cfg, run_dir)
    seconds = time.perf_counter() - started
    with open(run_dir / TRAIN_LOG_FILE, newline="") as handle:
        elapsed = [float(row["elapsed_s"]) for row in csv.DictReader(handle)]
    return TimedRun(cfg, seconds, elapsed, json.loads((run_dir / METRICS_FILE).read_text()))
