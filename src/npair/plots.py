"""Figures built from run directories and table CSVs (never from anything else).

- :func:`training_curves` — the paper's training-curve figure (paper.md §5.5): (a) loss and (b) accuracy
  measured N-way and 2-way against the optimiser step, mean over seeds ± standard error, horizontal lines at
  the other models' final N-way accuracy and a marker where the N-pair-mc curve first reaches each.
- :func:`recall_at_k` — Recall@K per method with ± SE error bars and the paper's values (hollow markers).
- :func:`metric_bars` — every metric of a table as grouped bars with ± SE and the paper's values
  (:func:`table_figures` writes both for one table CSV: the call the table builder makes).
- :func:`eval_histories` — evaluation metrics against the step from the runs' metrics.json histories.
- :func:`embedding_projection` — a trained model's test-split embeddings projected to 2-D (PCA / t-SNE).

Every figure is a PNG plus a JSON next to it (same stem) holding the plotted numbers, so a reader (or a test)
can check a figure against its sources. Figures are drawn on matplotlib's Agg canvas without pyplot, so they
neither need a display nor change the caller's backend (the notebook keeps its inline backend).

    python -m npair.plots curves --run triplet=outputs/runs/a/seed0 --run 60-pair-mc='outputs/runs/b/seed*'
    python -m npair.plots table outputs/tables/mini_table2.csv --out-dir outputs/figures
    python -m npair.plots embedding outputs/runs/mini_table2/npair_mc/seed0 --method tsne --out f.png
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from npair.runio import atomic_write_json

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "lines.linewidth": 1.6,
}
# The paper's figure colours: triplet blue, ovo green, mc red; other labels take the next free colour.
PALETTE = ["#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
LABEL_COLOURS = (
    ("mc", "#d62728"),
    ("ovo", "#2ca02c"),
    ("triplet", "#1f77b4"),
    ("softmax", "#ff7f0e"),
    ("tuplet", "#9467bd"),
    ("contrastive", "#8c564b"),
)

# The curve measures and the train_log.csv column each comes from (npair.train.Probe; paper.md §5.5).
MEASURES = {
    "nway_loss": "probe_nway_loss",
    "2way_loss": "probe_2way_loss",
    "nway_acc": "probe_nway_acc",
    "2way_acc": "probe_2way_acc",
}
# Without a probe (trainer.probe_classes=0) a run still shows its own training loss and batch accuracy.
FALLBACK_MEASURES = {"train_loss": "loss", "batch_acc": "batch_acc"}
ACCURACY_SCALE = 100.0  # accuracies are plotted (and stored in the JSON) in percent


def label_colours(labels: Sequence[str]) -> dict[str, str]:
    """A colour per legend label: the paper's colours by loss name, then the palette in order."""
    colours: dict[str, str] = {}
    for label in labels:
        low = label.lower()
        colour = next((c for key, c in LABEL_COLOURS if key in low and c not in colours.values()), None)
        colours[label] = colour or next((c for c in PALETTE if c not in colours.values()), PALETTE[0])
    return colours


def _steps_formatter(value: float, _pos: int) -> str:
    if abs(value) >= 1000:
        text = f"{value / 1000:.1f}".rstrip("0").rstrip(".")
        return f"{text}k"
    return f"{value:.0f}"


def _save(fig: Figure, out: Path, data: dict[str, Any]) -> Path:
    """Write the PNG and the JSON of its plotted numbers (``<out stem>.json``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, bbox_inches="tight", facecolor="white")
    atomic_write_json(out.with_suffix(".json"), {"figure": out.name, **data})
    return out


# ------------------------------------------------------------------------------------ training curves
def read_train_log(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The columns of a run's train_log.csv as float arrays (empty cells → NaN)."""
    path = Path(run_dir) / "train_log.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no train_log.csv; is {run_dir} a run directory (outputs/runs/...)?")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: no logged steps yet")
    columns: dict[str, np.ndarray] = {}
    for key in rows[0]:
        columns[key] = np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])
    return columns


def mean_curve(logs: Sequence[dict[str, np.ndarray]], column: str) -> dict[str, Any] | None:
    """Mean over runs (and standard error, n ≥ 2) of one column at the steps every run logged it.

    None when no run has a value in that column.
    """
    per_run = []
    for log in logs:
        if column not in log:
            continue
        ok = np.isfinite(log[column])
        if ok.any():
            per_run.append(dict(zip(log["step"][ok].astype(int).tolist(), log[column][ok].tolist())))
    if not per_run:
        return None
    steps = sorted(set.intersection(*(set(r) for r in per_run)))
    if not steps:
        raise ValueError(
            f"{column}: the runs share no logged step (different trainer.log_every?); "
            "plot them under separate labels"
        )
    values = np.array([[r[s] for s in steps] for r in per_run], dtype=np.float64)
    mean = values.mean(axis=0)
    se = values.std(axis=0, ddof=1) / math.sqrt(len(per_run)) if len(per_run) > 1 else None
    return {
        "column": column,
        "steps": steps,
        "mean": mean.tolist(),
        "se": None if se is None else se.tolist(),
        "n_runs": len(per_run),
    }


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start): display smoothing that never
    looks ahead, so a smoothed curve reaches a level no earlier than the data does on average."""
    arr = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.concatenate([[0.0], arr]))
    starts = np.maximum(np.arange(1, len(arr) + 1) - window, 0)
    return ((sums[1:] - sums[starts]) / (np.arange(1, len(arr) + 1) - starts)).tolist()


def first_crossing(steps: Sequence[int], values: Sequence[float], level: float) -> int | None:
    """The first step at which ``values`` reaches ``level`` (≥), or None."""
    for step, value in zip(steps, values):
        if value >= level:
            return int(step)
    return None


def _probe_size(run_dirs: Sequence[Path]) -> tuple[int | None, bool]:
    """The N of "N-way" and whether it is exact: metrics.json ``probe_classes`` (the probe's actual size)
    when the runs record it, else the configured ``trainer.probe_classes`` (an upper bound: the probe takes
    all training classes when there are fewer); (None, False) when the runs disagree or record neither."""
    exact, configured = set(), set()
    for run_dir in run_dirs:
        metrics = Path(run_dir) / "metrics.json"
        if metrics.exists():
            exact.add(json.loads(metrics.read_text()).get("probe_classes"))
        path = Path(run_dir) / "config.yaml"
        if path.exists():
            from omegaconf import OmegaConf

            configured.add(OmegaConf.load(path).get("trainer", {}).get("probe_classes"))
    if len(exact) == 1 and None not in exact:
        return int(exact.pop()), True
    if len(configured) == 1 and None not in configured:
        return int(configured.pop()), False
    return None, False


def training_curves(
    runs: dict[str, list[Path]],
    out: Path,
    title: str = "",
    lead: str | None = None,
    band: bool = True,
    smooth: int = 1,
) -> Path:
    """The paper's training-curve figure (paper.md §5.5) from the runs' train_log.csv files.

    ``runs`` maps a legend label ("triplet", "60-pair-ovo", "60-pair-mc") to run directories (seeds; the mean
    is plotted, with a ± SE band when ``band``). Panel (a): N-way and 2-way loss of the fixed probe batch;
    panel (b): N-way and 2-way accuracy (%). Dotted horizontal lines mark the final N-way accuracy of every
    model but ``lead`` (default: the first label containing "mc", else the last), and a circle marks the
    first step at which ``lead``'s N-way accuracy reaches each line. ``smooth`` > 1 draws (and takes the
    lines and crossings from) a trailing mean over that many log points; the raw mean stays in the JSON.
    Returns ``out``; ``out.with_suffix(".json")`` holds the plotted series (``mean``, ``se`` and, when
    smoothing, ``smoothed``), the reference levels and the crossing steps.
    """
    if smooth < 1:
        raise ValueError(f"training_curves: smooth={smooth}; use 1 (none) or a window of log points")
    if not runs:
        raise ValueError("training_curves: no runs given; pass {label: [run_dir, ...]}")
    labels = list(runs)
    lead = lead or next((lab for lab in labels if "mc" in lab.lower()), labels[-1])
    if lead not in runs:
        raise ValueError(f"training_curves: lead={lead!r} is not one of the labels {labels}")
    series: dict[str, dict[str, Any]] = {}
    for label, dirs in runs.items():
        dirs = [Path(d) for d in dirs]
        if not dirs:
            raise ValueError(f"training_curves: label {label!r} has no run directories")
        logs = [read_train_log(d) for d in dirs]
        curves = {m: c for m, col in MEASURES.items() if (c := mean_curve(logs, col)) is not None}
        if not curves:  # no probe: the run's own loss and batch accuracy
            curves = {
                m: c for m, col in FALLBACK_MEASURES.items() if (c := mean_curve(logs, col)) is not None
            }
        for measure, curve in curves.items():
            if measure.endswith("acc"):
                curve["mean"] = [v * ACCURACY_SCALE for v in curve["mean"]]
                curve["se"] = None if curve["se"] is None else [v * ACCURACY_SCALE for v in curve["se"]]
            curve["runs"] = [str(d) for d in dirs]
        series[label] = curves

    shown = "smoothed" if smooth > 1 else "mean"
    for curves in series.values():
        for curve in curves.values():
            if smooth > 1:
                curve["smoothed"] = trailing_mean(curve["mean"], smooth)
    reference = {
        lab: s["nway_acc"][shown][-1] for lab, s in series.items() if lab != lead and "nway_acc" in s
    }
    crossings = {}
    lead_acc = series[lead].get("nway_acc")
    for lab, level in reference.items():
        step = first_crossing(lead_acc["steps"], lead_acc[shown], level) if lead_acc else None
        crossings[lab] = {"reference": level, "step": step}

    n_probe, exact = _probe_size([Path(d) for dirs in runs.values() for d in dirs])
    nway = f"{n_probe}-way" if exact else "N-way"
    n_note = (
        ""
        if exact or not n_probe
        else f" (N = trainer.probe_classes = {n_probe}, or all training classes if fewer)"
    )
    colours = label_colours(labels)
    styles = {
        "nway_loss": ("-", nway),
        "2way_loss": ("--", "2-way"),
        "nway_acc": ("-", nway),
        "2way_acc": ("--", "2-way"),
        "train_loss": (":", "training loss"),
        "batch_acc": (":", "batch acc."),
    }
    with rc_context(STYLE):
        fig = Figure(figsize=(12.5, 4.6))
        ax_loss, ax_acc = fig.subplots(1, 2)
        for label, curves in series.items():
            for measure, curve in curves.items():
                ax = ax_acc if measure.endswith("acc") else ax_loss
                linestyle, name = styles[measure]
                steps, mean = np.asarray(curve["steps"]), np.asarray(curve[shown])
                width = 2.2 if label == lead else 1.5
                ax.plot(steps, mean, linestyle, color=colours[label], lw=width)
                if band and curve["se"] is not None:
                    se = np.asarray(curve["se"])
                    ax.fill_between(steps, mean - se, mean + se, color=colours[label], alpha=0.15, lw=0)
        for lab, cross in crossings.items():
            ax_acc.axhline(cross["reference"], color=colours[lab], ls=":", lw=1.2, alpha=0.9)
            text = f"{lab} final {nway}: {cross['reference']:.1f}%"
            if cross["step"] is not None:
                text += f"; {lead} reaches it at step {_steps_formatter(cross['step'], 0)}"
                ax_acc.plot(
                    [cross["step"]],
                    [cross["reference"]],
                    "o",
                    ms=8,
                    mfc="white",
                    mec=colours[lead],
                    mew=2,
                    zorder=5,
                )
            ax_acc.annotate(
                text,
                xy=(0.99, cross["reference"]),
                xycoords=("axes fraction", "data"),
                xytext=(0, 2),
                textcoords="offset points",
                ha="right",
                va="bottom",
                fontsize=8,
                color=colours[lab],
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75},
            )
        has_probe = any("nway_loss" in curves for curves in series.values())
        ax_loss.set_title("(a) loss on the probe batch" if has_probe else "(a) training loss")
        ax_acc.set_title("(b) accuracy on the probe batch (%)")
        ax_loss.set_ylabel("loss")
        ax_acc.set_ylabel("accuracy (%)")
        ax_acc.set_ylim(0, 100)
        ax_loss.set_ylim(bottom=0)
        for ax in (ax_loss, ax_acc):
            ax.set_xlabel("iteration")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.xaxis.set_major_formatter(FuncFormatter(_steps_formatter))
        used = {m for curves in series.values() for m in curves}
        handles = [Line2D([], [], color=colours[lab], lw=2.2 if lab == lead else 1.6) for lab in labels]
        names = list(labels)
        for measure, (linestyle, name) in styles.items():
            if measure in used and name not in names:
                handles.append(Line2D([], [], color="0.25", ls=linestyle))
                names.append(name)
        fig.suptitle(title or "Training curves", fontsize=12)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        fig.legend(
            handles, names, loc="lower center", bbox_to_anchor=(0.5, 0.045), ncol=len(names), frameon=False
        )
        note = (
            f"{nway}: each anchor against the positives of all classes of a fixed training batch{n_note};\n"
            "2-way: its positive against one negative. Mean over seeds"
            + (" ± SE" if band else "")
            + (f", trailing mean over {smooth} log points." if smooth > 1 else ".")
        )
        fig.text(0.5, -0.02, note, ha="center", va="bottom", fontsize=8.5, color="0.35", linespacing=1.4)
    return _save(
        fig,
        out,
        {
            "title": title,
            "lead": lead,
            "smooth": smooth,
            "accuracy_scale": ACCURACY_SCALE,
            "measures": MEASURES,
            "series": series,
            "reference": reference,
            "crossings": crossings,
        },
    )


def eval_histories(
    runs: dict[str, list[Path]], out: Path, metrics: Sequence[str] = ("recall@1", "nmi", "f1")
) -> Path:
    """Evaluation metrics (%) against the step, one panel per metric, one line per run (seeds share a colour),
    from each run's metrics.json ``history``. Metrics no run has are left out."""
    histories: dict[str, list[dict[str, Any]]] = {}
    for label, dirs in runs.items():
        for run_dir in map(Path, dirs):
            path = run_dir / "metrics.json"
            if not path.exists():
                raise FileNotFoundError(f"{path}: no metrics.json; is {run_dir} a run directory?")
            record = json.loads(path.read_text())
            histories.setdefault(label, []).append(
                {"run": str(run_dir), "seed": record.get("seed"), "history": record.get("history", [])}
            )
    present = [
        m for m in metrics if any(m in h for runs_ in histories.values() for r in runs_ for h in r["history"])
    ]
    if not present:
        raise ValueError(f"eval_histories: no run has any of {list(metrics)} in its metrics.json history")
    colours = label_colours(list(histories))
    data: dict[str, Any] = {"metrics": present, "runs": {}}
    with rc_context(STYLE):
        fig = Figure(figsize=(4.3 * len(present), 3.6))
        axes = np.atleast_1d(fig.subplots(1, len(present)))
        for label, records in histories.items():
            data["runs"][label] = []
            for i, record in enumerate(records):
                entry = {"run": record["run"], "seed": record["seed"]}
                for ax, metric in zip(axes, present):
                    points = [
                        (h["step"], 100 * h[metric]) for h in record["history"] if h.get(metric) is not None
                    ]
                    entry[metric] = {"steps": [p[0] for p in points], "values": [p[1] for p in points]}
                    if points:
                        ax.plot(
                            *zip(*points),
                            "o-",
                            ms=3.5,
                            color=colours[label],
                            alpha=0.85,
                            label=label if i == 0 else None,
                        )
                data["runs"][label].append(entry)
        for ax, metric in zip(axes, present):
            ax.set_title(f"{metric} (%)")
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.xaxis.set_major_formatter(FuncFormatter(_steps_formatter))
        axes[0].legend(frameon=False)
        fig.suptitle("Evaluation during training (test split; one line per seed)", fontsize=11)
        fig.tight_layout()
    return _save(fig, out, data)


# ------------------------------------------------------------------------------------ table figures
def read_table_csv(table_csv: str | Path) -> list[dict[str, Any]]:
    """Rows of a table CSV written by npair.tables (mean/se/paper in percent; empty → None)."""
    path = Path(table_csv)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no table CSV; build it with `python -m npair.tables TABLE=<name>`")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    need = {"method", "metric", "mean", "se", "paper"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{path}: columns {sorted(rows[0])} lack {sorted(need - set(rows[0]))}")

    def num(text: str | None) -> float | None:
        return None if text in (None, "", "None") else float(text)

    return [
        {
            **r,
            "mean": num(r["mean"]),
            "se": num(r["se"]),
            "paper": num(r["paper"]),
            "n_seeds": int(r.get("n_seeds") or 0),
            "expected_seeds": int(r.get("expected_seeds") or 0),
        }
        for r in rows
    ]


def _methods(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def _legend_with_paper(ax: Any, methods: dict[str, Any], paper_key: Line2D, paper_label: str, **kwargs: Any) -> None:
    """The legend of ``ax``, plus one entry for the paper's markers when any method has a paper value."""
    handles, names = ax.get_legend_handles_labels()
    if any(any(p is not None for p in m["paper"]) for m in methods.values()):
        handles.append(paper_key)
        names.append(paper_label)
    ax.legend(handles, names, frameon=False, **kwargs)


def recall_at_k(table_csv: Path, out: Path) -> Path:
    """Recall@K against K for each method of a table (paper Table 2 style), mean ± SE over seeds.

    Filled markers and solid lines: ours; hollow markers and dashed lines: the paper's numbers, where the
    table has them. Methods without completed runs appear only with their paper values.
    """
    rows = read_table_csv(table_csv)
    recall = [r for r in rows if re.fullmatch(r"recall@\d+", r["metric"])]
    if not recall:
        raise ValueError(
            f"{table_csv}: no recall@K rows (metrics: {sorted({r['metric'] for r in rows})}); "
            "use metric_bars for this table"
        )
    ks = sorted({int(r["metric"].split("@")[1]) for r in recall})
    methods = _methods(recall)
    colours = label_colours(methods)
    table = recall[0].get("table") or Path(table_csv).stem
    offsets = np.linspace(-0.08, 0.08, len(methods)) if len(methods) > 1 else [0.0]
    data: dict[str, Any] = {"table": table, "ks": ks, "methods": {}}
    with rc_context(STYLE):
        fig = Figure(figsize=(6.8, 4.6))
        ax = fig.subplots()
        for method, offset in zip(methods, offsets):
            by_k = {int(r["metric"].split("@")[1]): r for r in recall if r["method"] == method}
            x = np.arange(len(ks)) + offset
            mean = [by_k[k]["mean"] if k in by_k else None for k in ks]
            se = [by_k[k]["se"] if k in by_k else None for k in ks]
            paper = [by_k[k]["paper"] if k in by_k else None for k in ks]
            seeds = max((r["n_seeds"] for r in by_k.values()), default=0)
            expected = max((r["expected_seeds"] for r in by_k.values()), default=0)
            ours = [(xi, m, s or 0.0) for xi, m, s in zip(x, mean, se) if m is not None]
            colour = colours[method]
            if ours:
                xs, ms, ss = zip(*ours)
                ax.errorbar(
                    xs,
                    ms,
                    yerr=ss,
                    fmt="-o",
                    color=colour,
                    ms=6,
                    capsize=3,
                    lw=1.8,
                    label=f"{method} (ours, {seeds}/{expected} seeds)",
                )
            known = [(xi, p) for xi, p in zip(x, paper) if p is not None]
            if known:
                xs, ps = zip(*known)
                ax.plot(xs, ps, "--", color=colour, lw=1.0, alpha=0.7)
                ax.plot(xs, ps, "o", ms=8, mfc="none", mec=colour, mew=1.6)
            data["methods"][method] = {"mean": mean, "se": se, "paper": paper, "n_seeds": seeds}
        ax.set_xticks(np.arange(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K (%)")
        ax.set_title(f"{table}: Recall@K (mean ± SE over seeds)")
        paper_key = Line2D([], [], ls="--", marker="o", mfc="none", color="0.4")
        _legend_with_paper(ax, data["methods"], paper_key, "paper (hollow)", loc="lower right")
        fig.tight_layout()
    return _save(fig, out, data)


def metric_bars(table_csv: Path, out: Path, metrics: Sequence[str] | None = None) -> Path:
    """Each metric of a table (or ``metrics``): bars per method ± SE, the paper's values: hollow diamonds."""
    rows = read_table_csv(table_csv)
    metrics = list(metrics) if metrics else list(dict.fromkeys(r["metric"] for r in rows))
    methods = _methods(rows)
    if not rows or not metrics:
        raise ValueError(f"{table_csv}: no rows to plot")
    colours = label_colours(methods)
    table = rows[0].get("table") or Path(table_csv).stem
    cell = {(r["method"], r["metric"]): r for r in rows}
    width = 0.8 / len(methods)
    data: dict[str, Any] = {"table": table, "metrics": metrics, "methods": {}}
    with rc_context(STYLE):
        fig = Figure(figsize=(max(6.0, 1.2 * len(metrics) * max(1, len(methods)) / 2 + 3), 4.6))
        ax = fig.subplots()
        for i, method in enumerate(methods):
            x = np.arange(len(metrics)) - 0.4 + width * (i + 0.5)
            get = [cell.get((method, m), {}) for m in metrics]
            mean = [g.get("mean") for g in get]
            se = [g.get("se") for g in get]
            paper = [g.get("paper") for g in get]
            ax.bar(
                x,
                [m if m is not None else 0.0 for m in mean],
                width * 0.9,
                color=colours[method],
                alpha=0.85,
                yerr=[s or 0.0 for s in se],
                capsize=2.5,
                error_kw={"lw": 1},
                label=method,
            )
            for xi, m, g in zip(x, mean, get):
                if m is None:  # a metric the row's runs do not produce is "n/a", not missing
                    text = "n/a" if int(g.get("completed_runs") or 0) > 0 else "missing"
                    ax.text(xi, 1, text, rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
            known = [(xi, p) for xi, p in zip(x, paper) if p is not None]
            if known:
                xs, ps = zip(*known)
                ax.plot(xs, ps, "D", ms=7, mfc="none", mec="black", mew=1.2)
            data["methods"][method] = {"mean": mean, "se": se, "paper": paper}
        ax.set_xticks(np.arange(len(metrics)), metrics)
        ax.set_ylabel("%")
        ax.set_title(f"{table} (mean ± SE over seeds)")
        paper_key = Line2D([], [], ls="", marker="D", mfc="none", mec="black")
        _legend_with_paper(ax, data["methods"], paper_key, "paper", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="x", visible=False)
        fig.tight_layout()
    return _save(fig, out, data)


def table_figures(table_csv: Path, out_dir: Path) -> list[Path]:
    """All figures of one table CSV: ``<table>_recall.png`` (if it has Recall@K) and ``<table>_metrics.png``.

    The call the table builder makes after writing ``outputs/tables/<name>.csv``.
    """
    table_csv, out_dir = Path(table_csv), Path(out_dir)
    rows = read_table_csv(table_csv)
    written = []
    if any(re.fullmatch(r"recall@\d+", r["metric"]) for r in rows):
        written.append(recall_at_k(table_csv, out_dir / f"{table_csv.stem}_recall.png"))
    if rows:
        written.append(metric_bars(table_csv, out_dir / f"{table_csv.stem}_metrics.png"))
    return written


# ------------------------------------------------------------------------------------ embeddings
def _rebase_data_dir(cfg: Any, data_dir: str | Path | None) -> Any:
    """Point the run's dataset paths at ``data_dir`` (the run's own paths.data_dir prefix is replaced)."""
    from omegaconf import OmegaConf

    if data_dir is None:
        return cfg
    old = str(cfg.paths.data_dir)
    container = OmegaConf.to_container(cfg, resolve=True)

    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        if isinstance(node, str) and node.startswith(old):
            return str(Path(data_dir)) + node[len(old) :]
        return node

    container["dataset"] = swap(container["dataset"])
    container["paths"]["data_dir"] = str(data_dir)
    return OmegaConf.create(container)


def locate_data_dir(cfg: Any, run_dir: Path) -> Path | None:
    """Where a run's data lives when its relative ``paths.data_dir`` does not resolve from here.

    Runs made from the repository root record ``./data``; read from elsewhere (the notebook runs in
    notebooks/), the run directory's own tree tells the root: ``<root>/<output_dir name>/runs/...``.
    None when the recorded path is absolute, exists as is, or no candidate exists.
    """
    data_dir = Path(str(cfg.paths.data_dir))
    if data_dir.is_absolute() or data_dir.exists():
        return None
    relative = Path(os.path.relpath(data_dir, str(cfg.paths.get("root_dir", "."))))
    out_name = Path(str(cfg.paths.get("output_dir", "outputs"))).name
    for parent in Path(run_dir).resolve().parents:
        if parent.name == out_name and (parent.parent / relative).exists():
            return parent.parent / relative
    return None


def project_2d(embeddings: np.ndarray, method: str = "pca") -> tuple[np.ndarray, str]:
    """2-D coordinates (scikit-learn PCA or t-SNE, seeded) and a note saying how they were made.

    scikit-learn's OpenMP pool is held to one thread: once torch has run, its own OpenMP pool and
    scikit-learn's spin against each other and t-SNE slows down by an order of magnitude.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        if method == "pca":
            from sklearn.decomposition import PCA

            pca = PCA(n_components=2, random_state=0)
            points = pca.fit_transform(embeddings)
            return points, f"PCA, {100 * pca.explained_variance_ratio_.sum():.0f}% of the variance"
        if method == "tsne":
            from sklearn.manifold import TSNE

            perplexity = float(min(30.0, max(2.0, (len(embeddings) - 1) / 3)))
            tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0)
            return tsne.fit_transform(embeddings), f"t-SNE, perplexity {perplexity:.0f}"
    raise ValueError(f"method={method!r}; use pca or tsne")


def embedding_projection(
    run_dir: Path,
    out: Path,
    method: str = "pca",
    max_points: int = 2000,
    n_classes: int = 20,
    data_dir: str | Path | None = None,
    device: str = "cpu",
) -> Path:
    """Test-split embeddings of a trained run projected to 2-D and coloured by class.

    Rebuilds the model from ``checkpoint.pt`` (``model`` state dict, ``config``) with
    ``npair.models.build_model`` and the data with ``hydra.utils.instantiate(cfg.dataset.build)``
    (``data_dir`` relocates the data; by default a relative data path is found next to the run's outputs
    tree, see :func:`locate_data_dir`), embeds the
    first ``n_classes`` test classes (at most ``max_points`` images, a seeded subsample), L2-normalises
    when the run evaluates with cosine similarity, and projects with PCA or t-SNE (scikit-learn).
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import Subset

    from npair.evaluation.embed import embed_dataset
    from npair.models import build_model

    if method not in {"pca", "tsne"}:
        raise ValueError(f"embedding_projection: method={method!r}; use pca or tsne")
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.exists():
        raise FileNotFoundError(
            f"{ckpt_path}: no checkpoint (trainer.save_checkpoint=false, or the run never "
            "evaluated); re-run the experiment to plot its embeddings"
        )
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if checkpoint.get("config"):
        cfg = OmegaConf.create(checkpoint["config"])
    elif (run_dir / "config.yaml").exists():
        cfg = OmegaConf.load(run_dir / "config.yaml")
    else:
        raise FileNotFoundError(f"{run_dir}: neither checkpoint['config'] nor config.yaml")
    cfg = _rebase_data_dir(cfg, data_dir if data_dir is not None else locate_data_dir(cfg, run_dir))
    model = build_model(cfg.backbone, int(cfg.dataset.embedding_dim))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    splits = instantiate(cfg.dataset.build)
    labels = np.asarray(splits.test.labels)
    classes = np.unique(labels)[:n_classes]
    indices = np.flatnonzero(np.isin(labels, classes))
    if len(indices) > max_points:
        indices = np.sort(np.random.default_rng(0).choice(indices, size=max_points, replace=False))
    embedded = embed_dataset(model, Subset(splits.test, indices.tolist()), device=device)
    emb = embedded.embeddings.astype(np.float64)
    similarity = str(cfg.eval.get("similarity", "cosine"))
    if similarity == "cosine":
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    points, axis_note = project_2d(emb, method)

    metrics_path = run_dir / "metrics.json"
    final = json.loads(metrics_path.read_text()).get("final", {}) if metrics_path.exists() else {}
    score = f", R@1 = {100 * final['recall@1']:.1f}%" if "recall@1" in final else ""
    cmap_name = "tab20" if len(classes) <= 20 else "turbo"
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(7.6 if len(classes) <= 20 else 6.4, 6.0))
        ax = fig.subplots()
        from matplotlib import colormaps

        cmap = colormaps[cmap_name]
        for i, cls in enumerate(classes):
            sel = embedded.labels == cls
            colour = cmap(i % 20) if cmap_name == "tab20" else cmap(i / max(1, len(classes) - 1))
            ax.scatter(
                points[sel, 0], points[sel, 1], s=14, color=colour, alpha=0.85, lw=0, label=str(int(cls))
            )
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color("0.8")
        split = "unseen test classes" if getattr(splits, "protocol", "unseen") == "unseen" else "test images"
        ax.set_title(
            f"{cfg.get('name', run_dir.name)} (seed {cfg.get('seed')}): {split}{score}\n"
            f"{len(points)} images of {len(classes)} classes, {embedded.embeddings.shape[1]}-d "
            f"{'L2-normalised ' if similarity == 'cosine' else ''}embeddings, {axis_note}",
            fontsize=10,
        )
        if len(classes) <= 20:
            ax.legend(
                title="class",
                loc="upper left",
                bbox_to_anchor=(1.0, 1.0),
                frameon=False,
                markerscale=1.5,
                fontsize=7.5,
            )
        fig.tight_layout()
    return _save(
        fig,
        out,
        {
            "run_dir": str(run_dir),
            "method": method,
            "similarity": similarity,
            "classes": [int(c) for c in classes],
            "indices": indices.tolist(),
            "labels": embedded.labels.tolist(),
            "points": np.round(points, 6).tolist(),
        },
    )


# ------------------------------------------------------------------------------------ CLI
def parse_run_specs(specs: Sequence[str]) -> dict[str, list[Path]]:
    """``label=dir1,dir2`` (directories may be glob patterns) → {label: [run dirs]}."""
    runs: dict[str, list[Path]] = {}
    for spec in specs:
        label, sep, dirs = spec.partition("=")
        if not sep or not label or not dirs:
            raise SystemExit(
                f"--run {spec!r}: use --run LABEL=DIR[,DIR...] (e.g. --run 60-pair-mc=outputs/runs/x/seed*)"
            )
        paths = []
        for item in dirs.split(","):
            matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
            if not matches:
                raise SystemExit(f"--run {spec!r}: {item!r} matches no directory")
            paths += [Path(m) for m in matches]
        runs.setdefault(label, []).extend(paths)
    return runs


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        prog="python -m npair.plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    curves = sub.add_parser("curves", help="the training-curve figure (paper §5.5) from run directories")
    curves.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="LABEL=DIR[,DIR...]",
        help="legend label and its run directories (seeds; glob patterns allowed); repeat per model",
    )
    curves.add_argument("--out", type=Path, default=Path("outputs/figures/training_curves.png"))
    curves.add_argument("--title", default="")
    curves.add_argument(
        "--lead", default=None, help="the label whose crossings are marked (default: the *mc* one)"
    )
    curves.add_argument("--no-band", action="store_true", help="no ± SE band")
    curves.add_argument("--smooth", type=int, default=1, help="trailing mean over this many log points")
    table = sub.add_parser("table", help="Recall@K and metric figures of table CSVs")
    table.add_argument("csv", nargs="+", type=Path, help="outputs/tables/<name>.csv")
    table.add_argument("--out-dir", type=Path, default=Path("outputs/figures"))
    emb = sub.add_parser("embedding", help="2-D projection of a run's test embeddings")
    emb.add_argument("run_dir", type=Path)
    emb.add_argument("--out", type=Path, default=None, help="default: outputs/figures/<run>_<method>.png")
    emb.add_argument("--method", choices=["pca", "tsne"], default="pca")
    emb.add_argument("--max-points", type=int, default=2000)
    emb.add_argument("--n-classes", type=int, default=20)
    emb.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "curves":
        written = [
            training_curves(
                parse_run_specs(args.run), args.out, args.title, args.lead, not args.no_band, args.smooth
            )
        ]
    elif args.command == "table":
        written = [p for path in args.csv for p in table_figures(path, args.out_dir)]
    else:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(args.run_dir).strip("/"))[-80:]
        out = args.out or Path("outputs/figures") / f"embedding_{slug}_{args.method}.png"
        written = [
            embedding_projection(
                args.run_dir, out, args.method, args.max_points, args.n_classes, args.data_dir
            )
        ]
    for path in written:
        print(f"wrote {path} (+ {path.with_suffix('.json').name})")
    return written


if __name__ == "__main__":
    main()
