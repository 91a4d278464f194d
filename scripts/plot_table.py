"""Figures of table CSVs: Recall@K per method (± SE, paper values hollow) and all metrics as bars.

    python scripts/plot_table.py outputs/tables/mini_table2.csv [more.csv ...] [--out-dir outputs/figures]

Writes ``<table>_recall.png`` (tables with Recall@K) and ``<table>_metrics.png``, each with a JSON of the
plotted numbers. A thin wrapper of ``python -m npair.plots table`` (src/npair/plots/cli.py); the embedding
projection of one run is ``python -m npair.plots embedding <run_dir> [--method tsne]``.
"""

from __future__ import annotations

import sys

from npair.plots.cli import main

if __name__ == "__main__":
    main(["table", *sys.argv[1:]])
