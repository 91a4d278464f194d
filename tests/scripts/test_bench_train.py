"""scripts/bench_train.py's summary: median and range over rounds, the compile speed-up of runs measured
in the same round, the largest peak GPU memory; and its command line."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench_train


def _run(loss: str, compiled: bool, round_: int, rate: float, memory: float | None = None) -> dict:
    return {
        "loss": loss,
        "compile": compiled,
        "round": round_,
        "images_per_s": rate,
        "warmup_s": 1.0 + compiled,
        "gpu_memory": {"peak_allocated_gib": memory} if memory is not None else None,
    }


def test_summary_takes_medians_over_rounds_and_pairs_compile_runs_by_round() -> None:
    runs = [
        _run("npair_mc", False, 1, 100.0, 5.0),
        _run("npair_mc", True, 1, 150.0, 4.0),
        _run("npair_mc", False, 2, 200.0, 5.5),
        _run("npair_mc", True, 2, 220.0, 4.5),
        _run("npair_mc", False, 3, 120.0, 5.0),
        _run("npair_mc", True, 3, 240.0, 4.0),
    ]
    off, on = bench_train.summarise(runs)
    assert (off["compile"], on["compile"]) == (False, True)
    assert off["images_per_s_median"] == 120.0 and (off["images_per_s_min"], off["images_per_s_max"]) == (
        100,
        200,
    )
    assert off["peak_gpu_allocated_gib"] == 5.5 and off["speedup_vs_compile_off"] is None
    assert on["speedup_vs_compile_off"] == pytest.approx(1.5)  # median of 1.5, 1.1, 2.0
    assert on["warmup_s_median"] == 2.0 and on["rounds"] == 3


def test_summary_without_gpu_has_no_memory_figure() -> None:
    (row,) = bench_train.summarise([_run("triplet", False, 1, 10.0)])
    assert row["peak_gpu_allocated_gib"] is None and row["images_per_s_median"] == 10.0


def test_command_line_compile_modes_and_an_existing_image_tree(tmp_path: Path) -> None:
    assert bench_train.parse_args([]).compile_modes == ["off"]
    assert bench_train.parse_args(["--compile"]).compile_modes == ["on"]
    assert bench_train.parse_args(["--compile-modes", "off", "on"]).compile_modes == ["off", "on"]
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--compile", "--compile-modes", "off"])
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--jpegs", str(tmp_path / "missing")])
    args = bench_train.parse_args(["--jpegs", str(tmp_path), "--override", "backbone.net.widths=[8,16]"])
    assert args.jpegs == tmp_path and args.override == ["backbone.net.widths=[8,16]"]


def test_generated_jpegs_have_the_asked_size_and_layout(tmp_path: Path) -> None:
    from PIL import Image

    bench_train.make_jpegs(tmp_path, n_classes=3, per_class=2, size=(64, 48))
    assert bench_train.class_folders(tmp_path) == ["class_000", "class_001", "class_002"]
    files = sorted(tmp_path.rglob("*.jpg"))
    assert len(files) == 6
    with Image.open(files[0]) as image:
        assert image.size == (64, 48)
