"""Training curves: the paper's training-curve figure from the runs' train_log.csv files, and the evaluation
history from their metrics.json files."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from npair.evaluation.keys import SPREAD_SHORT
from npair.identity import require_one_setting
from npair.plots.style import STYLE, label_colours, save_figure, steps_formatter
from npair.runio import CONFIG_FILE, METRICS_FILE, TRAIN_LOG_FILE
from npair.stats import mean_se

# The curve measures and the train_log.csv column each comes from (npair.probe.Probe; docs/paper.md §5.5).
MEASURES = {
    "nway_loss": "probe_nway_loss",
    "2way_loss": "probe_2way_loss",
    "nway_acc": "probe_nway_acc",
    "2way_acc": "probe_2way_acc",
}
# Without a probe (trainer.probe_classes=0) a run still shows its own training loss and batch accuracy.
FALLBACK_MEASURES = {"train_loss": "loss", "batch_acc": "batch_acc"}
ACCURACY_SCALE = 100.0  # accuracies are plotted (and stored in the JSON) in percent


def read_train_log(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The columns of a run's train_log.csv as float arrays (empty cells → NaN)."""
    path = Path(run_dir) / TRAIN_LOG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no {TRAIN_LOG_FILE}; is {run_dir} a run directory (outputs/runs/...)?"
        )
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
    mean, se = mean_se(values, axis=0)
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
        metrics = Path(run_dir) / METRICS_FILE
        if metrics.exists():
            exact.add(json.loads(metrics.read_text()).get("probe_classes"))
        path = Path(run_dir) / CONFIG_FILE
        if path.exists():
            from omegaconf import OmegaConf

            configured.add(OmegaConf.load(path).get("trainer", {}).get("probe_classes"))
    if len(exact) == 1 and None not in exact:
        return int(exact.pop()), True
    if len(configured) == 1 and None not in configured:
        return int(configured.pop()), False
    return None, False


def label_heights(levels: dict[str, float], gap: float = 4.5, top: float = 100.0) -> dict[str, float]:
    """Heights (data units of the 0-100 accuracy axis) for the labels of horizontal lines at ``levels``:
    each as close to its line as labels ``gap`` apart allow, none above ``top - gap``.

    >>> label_heights({"a": 40.0, "b": 41.0, "c": 90.0})
    {'a': 40.0, 'b': 44.5, 'c': 90.0}
    """
    order = sorted(levels, key=lambda lab: levels[lab])
    heights: dict[str, float] = {}
    below = -gap
    for lab in order:  # upwards: at least ``gap`` above the label below
        heights[lab] = below = max(levels[lab], below + gap)
    ceiling = top - gap
    for lab in reversed(order):  # downwards: under the ceiling, at least ``gap`` below the label above
        heights[lab] = min(heights[lab], ceiling)
        ceiling = heights[lab] - gap
    return heights


def training_curves(
    runs: dict[str, list[Path]],
    out: Path,
    title: str = "",
    lead: str | None = None,
    band: bool = True,
    smooth: int = 1,
) -> Path:
    """The paper's training-curve figure (docs/paper.md §5.5) from the runs' train_log.csv files.

    ``runs`` maps a legend label ("triplet", "60-pair-ovo", "60-pair-mc") to run directories (seeds of one
    config: runs of different configs under one label are an error naming them, npair.identity; the mean is
    plotted, with a band of ± s.e. across training seeds when ``band``). Panel (a): N-way and 2-way loss of
    the fixed probe batch; panel (b): N-way and 2-way accuracy (%). Dotted horizontal lines mark the final
    N-way accuracy of every model but ``lead`` (default: the first label containing "mc", else the last), and
    a circle marks the first step at which ``lead``'s N-way accuracy reaches each line. ``smooth`` > 1 draws
    (and takes the lines and crossings from) a trailing mean over that many log points; the raw mean stays in
    the JSON. Returns ``out``; ``out.with_suffix(".json")`` holds the plotted series (``mean``, ``se`` and,
    when smoothing, ``smoothed``), the reference levels and the crossing steps.
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
        group = require_one_setting(f"training_curves: label {label!r}", dirs)  # seeds of one config only
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
            curve["group_hash"] = group
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
        heights = label_heights({lab: cross["reference"] for lab, cross in crossings.items()})
        for lab, cross in crossings.items():
            ax_acc.axhline(cross["reference"], color=colours[lab], ls=":", lw=1.2, alpha=0.9)
            text = f"{lab} final {nway}: {cross['reference']:.1f}%"
            if cross["step"] is not None:
                text += f"; {lead} reaches it at step {steps_formatter(cross['step'], 0)}"
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
                xytext=(0.99, heights[lab] + 0.6),
                textcoords=("axes fraction", "data"),
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
            ax.xaxis.set_major_formatter(FuncFormatter(steps_formatter))
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
            handles,
            names,
            loc="lower center",
            bbox_to_anchor=(0.5, 0.045),
            ncol=min(len(names), 6),
            frameon=False,
        )
        note = (
            f"{nway}: each anchor against the positives of all classes of a fixed training batch{n_note};\n"
            "2-way: its positive against one negative. Mean over training seeds"
            + (f" ± {SPREAD_SHORT['training_seeds']} (band)" if band else "")
            + (f", trailing mean over {smooth} log points." if smooth > 1 else ".")
        )
        fig.text(0.5, -0.02, note, ha="center", va="bottom", fontsize=8.5, color="0.35", linespacing=1.4)
    return save_figure(
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
            path = run_dir / METRICS_FILE
            if not path.exists():
                raise FileNotFoundError(f"{path}: no {METRICS_FILE}; is {run_dir} a run directory?")
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
            ax.xaxis.set_major_formatter(FuncFormatter(steps_formatter))
        axes[0].legend(frameon=False)
        fig.suptitle("Evaluation during training (test split; one line per seed)", fontsize=11)
        fig.tight_layout()
    return save_figure(fig, out, data)
