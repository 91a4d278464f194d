"""Figures built from run directories and table CSVs (never from anything else).

- :func:`training_curves` — the paper's training-curve figure (docs/paper.md §5.5): (a) loss and (b) accuracy
  measured N-way and 2-way against the optimiser step, mean over seeds ± standard error, horizontal lines at
  the other models' final N-way accuracy and a marker where the N-pair-mc curve first reaches each.
- :func:`recall_at_k` — Recall@K per method, error bars ± s.e. across training seeds, and the paper's values
  (dashed lines, hollow squares, one legend entry per method); bars when the table has one K.
- :func:`metric_bars` — every metric of a table, under the table's labels, as grouped bars (± s.e. across
  training seeds) and the paper's values
  (:func:`table_figures` writes both for one table CSV: the call the table builder makes).
- :func:`eval_histories` — evaluation metrics against the step from the runs' metrics.json histories.
- :func:`embedding_projection` — a trained model's test-split embeddings projected to 2-D (PCA / t-SNE).

Every figure is a PNG plus a JSON next to it (same stem) holding the plotted numbers, so a reader (or a test)
can check a figure against its sources. Figures are drawn on matplotlib's Agg canvas without pyplot, so they
neither need a display nor change the caller's backend (the notebook keeps its inline backend).

    python -m npair.plots curves --run triplet=outputs/runs/a/seed0 --run 60-pair-mc='outputs/runs/b/seed*'
    python -m npair.plots table outputs/tables/mini_table2.csv --out-dir outputs/figures
    python -m npair.plots embedding outputs/runs/mini_table2/npair_mc/seed0 --method tsne --out f.png

One module per subject: :mod:`.style` (look, colours, saving), :mod:`.curves` (training curves, evaluation
histories), :mod:`.table_figures` (figures of a table CSV), :mod:`.embeddings` (2-D projections of a run's
embeddings) and :mod:`.cli` (the command line).
"""

from __future__ import annotations

from npair.plots.curves import (
    ACCURACY_SCALE,
    FALLBACK_MEASURES,
    MEASURES,
    eval_histories,
    first_crossing,
    mean_curve,
    read_train_log,
    trailing_mean,
    training_curves,
)
from npair.plots.embeddings import embedding_projection, project_2d
from npair.plots.style import LABEL_COLOURS, PALETTE, STYLE, label_colours
from npair.plots.table_figures import metric_bars, read_table_csv, recall_at_k, table_figures
from npair.runio import locate_data_dir

__all__ = [
    "ACCURACY_SCALE",
    "FALLBACK_MEASURES",
    "LABEL_COLOURS",
    "MEASURES",
    "PALETTE",
    "STYLE",
    "embedding_projection",
    "eval_histories",
    "first_crossing",
    "label_colours",
    "locate_data_dir",
    "mean_curve",
    "metric_bars",
    "project_2d",
    "read_table_csv",
    "read_train_log",
    "recall_at_k",
    "table_figures",
    "trailing_mean",
    "training_curves",
]
