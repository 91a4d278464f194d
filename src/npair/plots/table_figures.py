"""Table figures from a table CSV written by npair.tables: Recall@K per method and every metric as bars."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from npair.evaluation.keys import SPREAD_SHORT
from npair.plots.style import STYLE, label_colours, save_figure


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


SEEDS_SE = SPREAD_SHORT["training_seeds"]  # what every error bar of these figures is


def _metric_labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Metric key -> the table's column label (the CSV's ``metric_label``; the key for older CSVs)."""
    return {r["metric"]: r.get("metric_label") or r["metric"] for r in rows}


# Ours: solid lines and filled circles; the paper's: dashed lines, hollow squares; each method in its colour.
# The paper's are drawn beneath ours, so where two series meet our curve stays on top.
OURS_STYLE: dict[str, Any] = {"ls": "-", "marker": "o", "ms": 6, "lw": 1.8, "zorder": 3}
PAPER_STYLE: dict[str, Any] = {
    "ls": (0, (4, 2)),
    "marker": "s",
    "ms": 7,
    "lw": 1.1,
    "mfc": "white",
    "mew": 1.5,
    "alpha": 0.9,
    "zorder": 2,
}


def _legend_outside(ax: Any, **kwargs: Any) -> Any:
    """The legend to the right of the axes, where it cannot cover a line or a bar."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, **kwargs)


def _heading(text: str) -> tuple[Line2D, str]:
    """A legend entry without a symbol: the heading of the entries below it."""
    return Line2D([], [], ls="", marker=""), text


def _figure_width(axes_width: float, labels: Sequence[str]) -> float:
    """Inches for axes of ``axes_width`` plus a legend of ``labels`` to their right (8.5 pt legend text)."""
    return axes_width + 0.6 + 0.068 * max((len(label) for label in labels), default=0)


def recall_at_k(table_csv: Path, out: Path) -> Path:
    """Recall@K against K for each method of a table (paper Table 2 style), mean ± s.e. across training seeds.

    Ours: solid lines, filled circles, error bars ± s.e. across training seeds; the paper's numbers, where the
    table has them: dashed lines and hollow squares, one legend entry per method. Methods without completed
    runs appear only with their paper values. A table with one K has no line to draw: it gets bars
    (:func:`metric_bars`).
    """
    rows = read_table_csv(table_csv)
    recall = [r for r in rows if re.fullmatch(r"recall@\d+", r["metric"])]
    if not recall:
        raise ValueError(
            f"{table_csv}: no recall@K rows (metrics: {sorted({r['metric'] for r in rows})}); "
            "use metric_bars for this table"
        )
    ks = sorted({int(r["metric"].split("@")[1]) for r in recall})
    table = recall[0].get("table") or Path(table_csv).stem
    if len(ks) == 1:
        title = f"{table}: Recall@{ks[0]} (mean ± {SEEDS_SE})"
        return metric_bars(table_csv, out, [f"recall@{ks[0]}"], title=title)
    methods = _methods(recall)
    colours = label_colours(methods)
    offsets = np.linspace(-0.08, 0.08, len(methods)) if len(methods) > 1 else [0.0]
    data: dict[str, Any] = {"table": table, "ks": ks, "kind": "lines", "methods": {}, "legend": []}
    seeds_of = {
        m: tuple(
            max((r[key] for r in recall if r["method"] == m), default=0)
            for key in ("n_seeds", "expected_seeds")
        )
        for m in methods
    }
    same_seeds = len(set(seeds_of.values())) == 1  # then the heading says it once
    with rc_context(STYLE):
        widest = f"ours, mean ± {SEEDS_SE} (3/3 seeds each)"
        fig = Figure(figsize=(_figure_width(6.0, [*methods, widest]), 4.6))
        ax = fig.subplots()
        ours_entries, paper_entries = [], []
        for method, offset in zip(methods, offsets):
            by_k = {int(r["metric"].split("@")[1]): r for r in recall if r["method"] == method}
            x = np.arange(len(ks)) + offset
            mean = [by_k[k]["mean"] if k in by_k else None for k in ks]
            se = [by_k[k]["se"] if k in by_k else None for k in ks]
            paper = [by_k[k]["paper"] if k in by_k else None for k in ks]
            seeds, expected = seeds_of[method]
            ours = [(xi, m, s or 0.0) for xi, m, s in zip(x, mean, se) if m is not None]
            colour = colours[method]
            if ours:
                xs, ms, ss = zip(*ours)
                bars = ax.errorbar(xs, ms, yerr=ss, color=colour, capsize=3, **OURS_STYLE)
                ours_entries.append((bars, method if same_seeds else f"{method} ({seeds}/{expected} seeds)"))
            known = [(xi, p) for xi, p in zip(x, paper) if p is not None]
            if known:
                xs, ps = zip(*known)
                (line,) = ax.plot(xs, ps, color=colour, mec=colour, **PAPER_STYLE)
                paper_entries.append((line, f"{method} (paper)"))
            data["methods"][method] = {"mean": mean, "se": se, "paper": paper, "n_seeds": seeds}
        ax.set_xticks(np.arange(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K (%)")
        ax.set_title(f"{table}: Recall@K (mean ± {SEEDS_SE})")
        seeds, expected = next(iter(seeds_of.values()))
        ours_heading = f"ours, mean ± {SEEDS_SE}"
        if same_seeds:
            ours_heading += f" ({seeds}/{expected} seeds each)"
        entries = [_heading(ours_heading), *ours_entries]
        if paper_entries:
            entries += [_heading("paper"), *paper_entries]
        data["legend"] = [name for _, name in entries]
        _legend_outside(ax, handles=[h for h, _ in entries], labels=data["legend"])
        fig.tight_layout()
    return save_figure(fig, out, data)


def metric_bars(
    table_csv: Path, out: Path, metrics: Sequence[str] | None = None, title: str | None = None
) -> Path:
    """Each metric of a table (or ``metrics``): bars per method ± s.e. across training seeds, the paper's
    values as hollow diamonds, each metric under the table's column label."""
    rows = read_table_csv(table_csv)
    metrics = list(metrics) if metrics else list(dict.fromkeys(r["metric"] for r in rows))
    methods = _methods(rows)
    if not rows or not metrics:
        raise ValueError(f"{table_csv}: no rows to plot")
    labels = [_metric_labels(rows).get(m, m) for m in metrics]
    colours = label_colours(methods)
    table = rows[0].get("table") or Path(table_csv).stem
    cell = {(r["method"], r["metric"]): r for r in rows}
    width = 0.8 / len(methods)
    data: dict[str, Any] = {
        "table": table,
        "kind": "bars",
        "metrics": metrics,
        "labels": labels,
        "methods": {},
    }
    with rc_context(STYLE):
        fig = Figure(figsize=(min(14.0, max(6.0, 2.5 + 0.32 * len(metrics) * len(methods))), 4.6))
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
        ax.set_xticks(np.arange(len(metrics)), labels)
        ax.set_ylabel("%")
        ax.set_title(title or f"{table} (mean ± {SEEDS_SE})")
        handles, names = ax.get_legend_handles_labels()
        if any(any(p is not None for p in m["paper"]) for m in data["methods"].values()):
            handles.append(Line2D([], [], ls="", marker="D", mfc="none", mec="black"))
            names.append("paper")
        _legend_outside(ax, handles=handles, labels=names)
        ax.grid(axis="x", visible=False)
        fig.tight_layout()
    return save_figure(fig, out, data)


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
