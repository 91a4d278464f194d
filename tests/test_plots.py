"""Figures are built from run histories and table CSVs: the plotted numbers (the JSON next to each PNG)
equal their sources."""

from __future__ import annotations

import csv
import importlib
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from npair import plots
from npair.evaluation.keys import SPREAD_SHORT
from npair.loggers import RunLogger
from npair.plots.cli import parse_run_specs
from tests.helpers import PAPER, REPO

COLUMNS = list(RunLogger.CSV_FIELDS)  # the columns of a real train_log.csv


def write_log(run_dir: Path, nway: list[float | None], two_way_offset: float = 0.4) -> Path:
    """A train_log.csv with steps 10, 20, ...; None leaves the probe cells of that row empty."""
    run_dir.mkdir(parents=True)
    with open(run_dir / "train_log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for i, acc in enumerate(nway):
            row = {
                "step": 10 * (i + 1),
                "epoch": 0,
                "loss": 3.0 - 0.1 * i,
                "lr": 1e-3,
                "images_per_s": 100,
                "batch_acc": 0.5,
                "elapsed_s": i,
            }
            if acc is not None:
                row.update(
                    probe_nway_acc=acc,
                    probe_2way_acc=min(1.0, acc + two_way_offset),
                    probe_nway_loss=4.0 * (1 - acc),
                    probe_2way_loss=0.3 * (1 - acc),
                )
            writer.writerow(row)
    return run_dir


def assert_png(path: Path) -> None:
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # something was drawn


def test_training_curves_plot_the_mean_of_the_train_logs(tmp_path: Path) -> None:
    triplet = write_log(tmp_path / "triplet", [0.10, 0.20, 0.30, 0.35, 0.38, 0.40])
    ovo = write_log(tmp_path / "ovo", [0.10, 0.25, 0.35, 0.42, 0.48, 0.50])
    mc0 = write_log(tmp_path / "mc0", [0.20, 0.30, 0.40, 0.47, 0.53, 0.60])
    mc1 = write_log(tmp_path / "mc1", [0.22, 0.32, 0.42, 0.49, 0.55, None])  # step 60 without probe values
    out = plots.training_curves(
        {"triplet": [triplet], "60-pair-ovo": [ovo], "60-pair-mc": [mc0, mc1]},
        tmp_path / "fig" / "curves.png",
        title="synthetic",
    )
    assert out == tmp_path / "fig" / "curves.png"
    assert_png(out)
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["lead"] == "60-pair-mc"
    mc = data["series"]["60-pair-mc"]["nway_acc"]
    assert mc["steps"] == [10, 20, 30, 40, 50]  # the steps both seeds logged
    assert mc["mean"] == pytest.approx([21.0, 31.0, 41.0, 48.0, 54.0])  # percent
    assert mc["se"] == pytest.approx([1.0] * 5)  # |a - b| / 2 for two seeds: std(ddof=1)/sqrt(2)
    assert data["series"]["60-pair-mc"]["nway_loss"]["mean"] == pytest.approx(
        [
            4.0 * (1 - (a + b) / 2)
            for a, b in [(0.2, 0.22), (0.3, 0.32), (0.4, 0.42), (0.47, 0.49), (0.53, 0.55)]
        ]
    )
    tri = data["series"]["triplet"]
    assert tri["2way_acc"]["mean"] == pytest.approx([50.0, 60.0, 70.0, 75.0, 78.0, 80.0])
    assert tri["nway_acc"]["se"] is None and tri["nway_acc"]["n_runs"] == 1
    # reference lines: the others' final N-way accuracy; mc reaches 40% at step 30 and 50% at step 50
    assert data["reference"] == pytest.approx({"triplet": 40.0, "60-pair-ovo": 50.0})
    assert data["crossings"]["triplet"]["step"] == 30
    assert data["crossings"]["60-pair-ovo"]["step"] == 50


def test_smoothed_curves_set_the_lines_and_crossings(tmp_path: Path) -> None:
    assert plots.trailing_mean([1.0, 3.0, 5.0, 9.0], 2) == pytest.approx([1.0, 2.0, 4.0, 7.0])
    assert plots.trailing_mean([1.0, 3.0, 5.0, 9.0], 3) == pytest.approx([1.0, 2.0, 3.0, 17 / 3])
    triplet = write_log(tmp_path / "triplet", [0.10, 0.20, 0.30, 0.35, 0.38, 0.40])
    ovo = write_log(tmp_path / "ovo", [0.10, 0.25, 0.35, 0.42, 0.48, 0.50])
    mc = write_log(tmp_path / "mc", [0.21, 0.31, 0.41, 0.48, 0.54, 0.60])
    out = plots.training_curves(
        {"triplet": [triplet], "ovo": [ovo], "mc": [mc]}, tmp_path / "s.png", smooth=2
    )
    data = json.loads(out.with_suffix(".json").read_text())
    acc = data["series"]["mc"]["nway_acc"]
    assert acc["mean"] == pytest.approx([21.0, 31.0, 41.0, 48.0, 54.0, 60.0])  # raw values kept
    assert acc["smoothed"] == pytest.approx([21.0, 26.0, 36.0, 44.5, 51.0, 57.0])
    assert data["reference"] == pytest.approx({"triplet": 39.0, "ovo": 49.0})  # smoothed final values
    assert [data["crossings"][k]["step"] for k in ("triplet", "ovo")] == [40, 50]


def test_training_curves_without_a_crossing_or_a_probe(tmp_path: Path) -> None:
    strong = write_log(tmp_path / "strong", [0.5, 0.9])
    weak = write_log(tmp_path / "weak", [0.1, 0.2])
    data = json.loads(
        plots.training_curves({"strong": [strong], "weak": [weak]}, tmp_path / "c.png", lead="weak")
        .with_suffix(".json")
        .read_text()
    )
    assert data["crossings"] == {"strong": {"reference": pytest.approx(90.0), "step": None}}
    bare = write_log(
        tmp_path / "bare", [None, None, None]
    )  # trainer.probe_classes=0: loss and batch accuracy
    data = json.loads(
        plots.training_curves({"bare": [bare]}, tmp_path / "b.png").with_suffix(".json").read_text()
    )
    assert set(data["series"]["bare"]) == {"train_loss", "batch_acc"}
    assert data["series"]["bare"]["train_loss"]["mean"] == pytest.approx([3.0, 2.9, 2.8])
    with pytest.raises(FileNotFoundError, match="no train_log.csv"):
        plots.training_curves({"x": [tmp_path / "nowhere"]}, tmp_path / "x.png")


def test_training_curves_of_real_runs_equal_their_train_logs(tiny: dict[str, Any], tmp_path: Path) -> None:
    runs = {"triplet": [tiny["runs"]["triplet/seed0"]], "4-pair-mc": [tiny["runs"]["npair_mc/seed0"]]}
    out = plots.training_curves(runs, tmp_path / "real.png")
    assert_png(out)
    data = json.loads(out.with_suffix(".json").read_text())
    for label, (run_dir,) in runs.items():
        rows = list(csv.DictReader(open(run_dir / "train_log.csv")))
        for measure, column in plots.MEASURES.items():
            series = data["series"][label][measure]
            scale = 100.0 if measure.endswith("acc") else 1.0
            assert series["steps"] == [int(r["step"]) for r in rows]
            assert series["mean"] == pytest.approx([scale * float(r[column]) for r in rows], rel=1e-12)
    final_triplet = float(
        list(csv.DictReader(open(runs["triplet"][0] / "train_log.csv")))[-1]["probe_nway_acc"]
    )
    assert data["reference"] == {"triplet": pytest.approx(100 * final_triplet)}


def test_eval_histories_equal_metrics_json(tiny: dict[str, Any], tmp_path: Path) -> None:
    runs = {"4-pair-mc": [tiny["runs"]["npair_mc/seed0"], tiny["runs"]["npair_mc/seed1"]]}
    out = plots.eval_histories(runs, tmp_path / "hist.png", metrics=("recall@1", "nmi", "not_a_metric"))
    assert_png(out)
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["metrics"] == ["recall@1", "nmi"]  # metrics no run has are left out
    for entry, run_dir in zip(data["runs"]["4-pair-mc"], runs["4-pair-mc"]):
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
        assert entry["recall@1"]["steps"] == [h["step"] for h in history] == [2, 4]
        assert entry["nmi"]["values"] == pytest.approx([100 * h["nmi"] for h in history])


def test_recall_at_k_plots_the_table_csv(tiny: dict[str, Any], tmp_path: Path) -> None:
    out = plots.recall_at_k(tiny["table_csv"], tmp_path / "recall.png")
    assert_png(out)
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["table"] == "tiny" and data["ks"] == [1, 2, 4, 8]
    rows = {(r["method"], r["metric"]): r for r in csv.DictReader(open(tiny["table_csv"]))}
    for method in ("triplet", "4-pair-mc"):
        got = data["methods"][method]
        assert got["mean"] == pytest.approx(
            [float(rows[(method, f"recall@{k}")]["mean"]) for k in (1, 2, 4, 8)]
        )
    assert data["methods"]["4-pair-mc"]["paper"] == [PAPER[f"recall@{k}"] for k in (1, 2, 4, 8)]
    assert data["methods"]["4-pair-mc"]["se"][0] == pytest.approx(
        float(rows[("4-pair-mc", "recall@1")]["se"])
    )
    assert data["methods"]["triplet"]["se"] == [None] * 4  # one seed: no standard error
    assert data["methods"]["triplet"]["paper"] == [43.30, None, None, None]


def test_table_figures_handle_missing_rows_and_tables_without_recall(tmp_path: Path) -> None:
    table = tmp_path / "t1.csv"
    table.write_text(
        "table,method,metric,mean,se,n_seeds,expected_seeds,paper,diff\n"
        "t1,triplet,knn_acc,70.0,0.4,3,3,70.24,-0.24\n"
        "t1,triplet,vrf_neg1,96.0,0.1,3,3,96.78,-0.78\n"
        "t1,72-pair-mc,knn_acc,,,0,3,88.37,\n"
        "t1,72-pair-mc,vrf_neg1,,,0,3,97.92,\n"
    )
    with pytest.raises(ValueError, match="no recall@K rows"):
        plots.recall_at_k(table, tmp_path / "r.png")
    (bars,) = plots.table_figures(table, tmp_path / "figs")
    assert bars == tmp_path / "figs" / "t1_metrics.png"
    assert_png(bars)
    data = json.loads(bars.with_suffix(".json").read_text())
    assert data["methods"]["triplet"] == {"mean": [70.0, 96.0], "se": [0.4, 0.1], "paper": [70.24, 96.78]}
    assert data["methods"]["72-pair-mc"]["mean"] == [None, None]  # missing, never drawn as zero data


def test_embedding_projection_of_a_trained_run(tiny: dict[str, Any], tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    run_dir = tiny["runs"]["npair_mc/seed0"]
    out = plots.embedding_projection(run_dir, tmp_path / "pca.png", max_points=40, n_classes=5)
    assert_png(out)
    data = json.loads(out.with_suffix(".json").read_text())
    test_labels = np.asarray(instantiate(OmegaConf.load(run_dir / "config.yaml").dataset.build).test.labels)
    assert data["classes"] == sorted(np.unique(test_labels).tolist())[:5]
    assert len(data["points"]) == len(data["labels"]) == 30  # 5 classes × 6 images < max_points
    assert data["labels"] == test_labels[data["indices"]].tolist()
    points = np.asarray(data["points"])
    assert points[:, 0].var() >= points[:, 1].var()  # first principal component first
    tsne = plots.embedding_projection(
        run_dir, tmp_path / "tsne.png", method="tsne", max_points=20, n_classes=5
    )
    data = json.loads(tsne.with_suffix(".json").read_text())
    assert len(data["points"]) == 20 and set(data["labels"]) <= set(data["classes"])
    with pytest.raises(ValueError, match="method='umap'"):
        plots.embedding_projection(run_dir, tmp_path / "u.png", method="umap")


def test_command_line_scripts(tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tiny["runs"]
    seeds = str(runs["npair_mc/seed0"].parent / "seed*")
    out = tmp_path / "cli" / "curves.png"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "plot_curves.py",
            "--run",
            f"triplet={runs['triplet/seed0']}",
            "--run",
            f"4-pair-mc={seeds}",
            "--out",
            str(out),
            "--title",
            "cli",
        ],
    )
    runpy.run_path(str(REPO / "scripts" / "plot_curves.py"), run_name="__main__")
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["title"] == "cli" and data["series"]["4-pair-mc"]["nway_acc"]["n_runs"] == 2
    monkeypatch.setattr(
        sys, "argv", ["plot_table.py", str(tiny["table_csv"]), "--out-dir", str(tmp_path / "t")]
    )
    runpy.run_path(str(REPO / "scripts" / "plot_table.py"), run_name="__main__")
    assert sorted(p.name for p in (tmp_path / "t").glob("*.png")) == ["tiny_metrics.png", "tiny_recall.png"]
    with pytest.raises(SystemExit, match="use --run LABEL=DIR"):
        parse_run_specs(["no-equals-sign"])
    assert parse_run_specs([f"a={seeds}", "a=x"]) == {
        "a": [runs["npair_mc/seed0"], runs["npair_mc/seed1"], Path("x")]
    }


# ----------------------------------------------------------------------- table figures, as a reader sees them
Cells = list[tuple[str, str, float | None, float | None]]
LABELS = {"recall@1": "R@1", "recall@2": "R@2", "recall@4": "R@4", "nmi": "NMI"}


def table_csv(path: Path, rows: Cells, labels: bool = True) -> Path:
    """A table CSV as npair.tables writes it: (method, metric, mean, paper) rows, SE 0.5, 3/3 seeds."""
    columns = [
        "table",
        "method",
        "metric",
        "mean",
        "se",
        "n_seeds",
        "expected_seeds",
        "paper",
        "diff",
        "completed_runs",
        *(["metric_label"] if labels else []),
    ]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for method, metric, mean, paper in rows:
            se, seeds = (None, 0) if mean is None else (0.5, 3)
            label = LABELS.get(metric, metric)
            cells = [path.stem, method, metric, mean, se, seeds, 3, paper, None, 3, label]
            writer.writerow(cells[: len(columns)])
    return path


def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The matplotlib Figures the table figures save, collected as they are saved."""
    table_figures = importlib.import_module("npair.plots.table_figures")  # the attribute is a function
    figures: list[Any] = []

    def keep(fig: Any, out: Path, data: dict[str, Any]) -> Path:
        figures.append(fig)
        return save(fig, out, data)

    save = table_figures.save_figure
    monkeypatch.setattr(table_figures, "save_figure", keep)
    return figures


def test_the_recall_legend_sits_beside_the_lines_not_on_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    methods = [f"λ = 0.00{i}, unnormalised, asymmetric, cosine (variant {i})" for i in range(7)]
    rows = [(m, f"recall@{k}", 20.0 + 5 * i + 10 * k, None) for i, m in enumerate(methods) for k in (1, 4)]
    figures = drawn(monkeypatch)
    plots.recall_at_k(table_csv(tmp_path / "ablation.csv", rows), tmp_path / "r.png")
    (fig,) = figures
    (ax,) = fig.axes
    renderer = fig.canvas.get_renderer()
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 > axes.x1  # to the right of the axes: it covers no line
    assert axes.width > 0.5 * fig.bbox.width  # and the axes keep most of the figure


def test_the_papers_series_are_labelled_per_method_and_drawn_unlike_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the paper's 60-pair-mc lies on our triplet-nm: they must differ in colour, marker and line style
    rows = [
        ("triplet", "recall@1", 30.0, 43.3),
        ("triplet", "recall@2", 41.0, 55.8),
        ("triplet-nm", "recall@1", 50.0, None),
        ("triplet-nm", "recall@2", 63.0, None),
        ("60-pair-mc", "recall@1", 38.0, 50.0),
        ("60-pair-mc", "recall@2", 52.0, 63.0),
    ]
    figures = drawn(monkeypatch)
    out = plots.recall_at_k(table_csv(tmp_path / "t2.csv", rows), tmp_path / "r.png")
    data = json.loads(out.with_suffix(".json").read_text())
    heading = "ours, mean ± s.e. across training seeds (3/3 seeds each)"
    assert data["legend"] == [
        heading,
        "triplet",
        "triplet-nm",
        "60-pair-mc",
        "paper",
        "triplet (paper)",
        "60-pair-mc (paper)",
    ]
    (ax,) = figures[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == data["legend"]
    at_same_place = [line for line in ax.get_lines() if list(line.get_ydata()) == [50.0, 63.0]]
    (ours_nm,) = [line for line in at_same_place if line.get_marker() == "o"]
    (paper_mc,) = [line for line in at_same_place if line is not ours_nm]
    assert paper_mc.get_color() != ours_nm.get_color()
    assert (paper_mc.get_marker(), paper_mc.get_markerfacecolor()) == ("s", "white")
    assert ours_nm.get_linestyle() == "-" and paper_mc.get_linestyle() != "-"
    assert paper_mc.get_zorder() < ours_nm.get_zorder()  # ours on top where they meet


def test_a_table_with_one_k_gets_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [("triplet", "recall@1", 29.0, 43.3), ("triplet-nm", "recall@1", 47.8, None)]
    figures = drawn(monkeypatch)
    out = plots.recall_at_k(table_csv(tmp_path / "smoke.csv", rows), tmp_path / "smoke_recall.png")
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["kind"] == "bars" and data["metrics"] == ["recall@1"]
    assert data["methods"]["triplet"] == {"mean": [29.0], "se": [0.5], "paper": [43.3]}
    (ax,) = figures[0].axes
    assert [round(p.get_height(), 1) for p in ax.patches] == [29.0, 47.8]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["R@1"] and "Recall@1" in ax.get_title()


def test_metric_figures_use_the_tables_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [("triplet", "nmi", 55.0, 55.8), ("triplet", "recall@1", 29.0, 43.3)]
    figures = drawn(monkeypatch)
    out = plots.metric_bars(table_csv(tmp_path / "t.csv", rows), tmp_path / "m.png")
    assert json.loads(out.with_suffix(".json").read_text())["labels"] == ["NMI", "R@1"]
    assert [t.get_text() for t in figures[0].axes[0].get_xticklabels()] == ["NMI", "R@1"]
    older = plots.metric_bars(table_csv(tmp_path / "old.csv", rows, labels=False), tmp_path / "o.png")
    assert json.loads(older.with_suffix(".json").read_text())["labels"] == ["nmi", "recall@1"]  # older CSVs


def test_every_error_bar_says_it_is_the_spread_across_training_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wording = SPREAD_SHORT["training_seeds"]  # one wording for tables, CSVs and figures
    assert wording == "s.e. across training seeds"
    rows = [
        ("triplet", "recall@1", 30.0, 43.3),
        ("triplet", "recall@2", 41.0, 55.8),
        ("triplet", "nmi", 55.0, None),
    ]
    figures = drawn(monkeypatch)
    plots.recall_at_k(table_csv(tmp_path / "t2.csv", rows), tmp_path / "r.png")
    plots.metric_bars(table_csv(tmp_path / "t2.csv", rows), tmp_path / "m.png")
    lines, bars = (fig.axes[0] for fig in figures)
    assert lines.get_title() == f"t2: Recall@K (mean ± {wording})"
    assert lines.get_legend().get_texts()[0].get_text().startswith(f"ours, mean ± {wording}")
    assert bars.get_title() == f"t2 (mean ± {wording})"

    curves = importlib.import_module("npair.plots.curves")
    kept: list[Any] = []
    monkeypatch.setattr(curves, "save_figure", lambda fig, out, data: kept.append(fig) or out)
    runs = {
        "triplet": [
            write_log(tmp_path / "a", [0.1, 0.2, 0.3, 0.35, 0.38, 0.4]),
            write_log(tmp_path / "b", [0.1, 0.2, 0.3, 0.36, 0.39, 0.41]),
        ]
    }
    plots.training_curves(runs, tmp_path / "c.png")
    (note,) = [t.get_text() for t in kept[0].texts if "2-way" in t.get_text()]
    assert f"Mean over training seeds ± {wording} (band)" in note


def test_the_labels_of_close_reference_lines_do_not_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    levels = {"a": 25.5, "b": 25.5, "c": 29.2, "d": 97.0, "e": 99.0}
    heights = plots.curves.label_heights(levels, gap=4.5)
    ordered = sorted(heights.values())
    assert all(b - a >= 4.5 - 1e-9 for a, b in zip(ordered, ordered[1:]))
    assert heights["a"] == 25.5 and max(ordered) <= 95.5  # the lowest stays on its line; none above the axis

    curves = importlib.import_module("npair.plots.curves")
    kept: list[Any] = []
    monkeypatch.setattr(curves, "save_figure", lambda fig, out, data: kept.append(fig) or out)
    runs = {
        name: [write_log(tmp_path / name, [0.1, 0.2, 0.3, 0.35, 0.38, final])]
        for name, final in [("triplet", 0.40), ("60-pair-ovo", 0.41), ("60-pair-mc", 0.60)]
    }
    plots.training_curves(runs, tmp_path / "c.png")
    labels = [t for t in kept[0].axes[1].texts if "final" in t.get_text()]
    assert len(labels) == 2
    (y0, y1) = sorted(t.xyann[1] for t in labels)  # 40 % and 41 %: the labels sit 4.5 points apart
    assert y1 - y0 >= 4.5 - 1e-9
