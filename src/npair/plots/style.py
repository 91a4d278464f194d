"""The figures' common look: matplotlib style, colours per method label, step formatting, and saving a PNG
with the JSON of its plotted numbers next to it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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


def label_colours(labels: Sequence[str]) -> dict[str, str]:
    """A colour per legend label: the paper's colours by loss name, then the palette in order."""
    colours: dict[str, str] = {}
    for label in labels:
        low = label.lower()
        colour = next((c for key, c in LABEL_COLOURS if key in low and c not in colours.values()), None)
        colours[label] = colour or next((c for c in PALETTE if c not in colours.values()), PALETTE[0])
    return colours


def steps_formatter(value: float, _pos: int) -> str:
    if abs(value) >= 1000:
        text = f"{value / 1000:.1f}".rstrip("0").rstrip(".")
        return f"{text}k"
    return f"{value:.0f}"


def save_figure(fig: Figure, out: Path, data: dict[str, Any]) -> Path:
    """Write the PNG and the JSON of its plotted numbers (``<out stem>.json``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, bbox_inches="tight", facecolor="white")
    atomic_write_json(out.with_suffix(".json"), {"figure": out.name, **data})
    return out
