"""scripts/bench_evaluator.py: per-round ratios and their median [min, max]; an end-to-end sweep (slow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_evaluator.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_evaluator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratios_are_taken_within_each_round():
    bench = _load_script()

    def m(seconds):
        return {"seconds": seconds, "peak_rss_gib": 1.0, "result": {}}

    rounds = [
        {"ours_recall": m(1.0), "pml_precision_at_1": m(4.0)},  # 0.25
        {"ours_recall": m(3.0), "pml_precision_at_1": m(6.0)},  # 0.5 (a loaded round slows both)
        {"ours_recall": m(2.0), "pml_precision_at_1": m(5.0)},  # 0.4
    ]
    summary = bench.summarise(rounds)
    ratio = summary["ratios"]["ours_recall / pml_precision_at_1"]
    assert (ratio["median"], ratio["min"], ratio["max"], ratio["target"]) == (0.4, 0.25, 0.5, 0.7)
    assert summary["measurements"]["ours_recall"]["seconds"] == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert bench.classes_for(60502) == 11316 and bench.classes_for(5000) == 935


@pytest.mark.slow
def test_tiny_sweep(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "300", "--rounds", "2", "--out", str(out),
         "--only", "ours_recall", "pml_precision_at_1", "ours_map_at_r", "pml_map_at_r"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "n = 300 (56 classes)" in proc.stdout and "ours_recall / pml_precision_at_1" in proc.stdout
    size = json.loads(out.read_text())["sizes"]["300"]
    assert len(size["rounds"]) == 2
    m = size["summary"]["measurements"]
    # the same numbers as PML, measured side by side
    assert m["ours_recall"]["result"]["recall@1"] == m["pml_precision_at_1"]["result"]["precision_at_1"]
    pml_map = m["pml_map_at_r"]["result"]["mean_average_precision_at_r"]
    assert abs(m["ours_map_at_r"]["result"]["map@r"] - pml_map) < 1e-12
