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


def _legend_with_paper(
    ax: Any, methods: dict[str, Any], paper_key: Line2D, paper_label: str, **kwargs: Any
) -> None:
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
    return save_figure(fig, out, data)


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
        _legend_with_paper(
            ax, data["methods"], paper_key, "paper", loc="upper left", bbox_to_anchor=(1.0, 1.0)
        )
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
