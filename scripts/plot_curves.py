"""The paper's training-curve figure (Sohn 2016, WebFace figure; docs/paper.md §5.5) from run directories.

    python scripts/plot_curves.py \
        --run triplet=outputs/runs/mini_table2/triplet/seed* \
        --run 60-pair-mc=outputs/runs/mini_table2/npair_mc/seed0,outputs/runs/mini_table2/npair_mc/seed1 \
        --out outputs/figures/training_curves.png [--title ...] [--lead 60-pair-mc] [--no-band]

Reads each run's train_log.csv (probe_nway/2way accuracy and loss); writes the PNG and a JSON of the
plotted series next to it. A thin wrapper of ``python -m npair.plots curves`` (src/npair/plots/cli.py).
"""

from __future__ import annotations

import sys

from npair.plots.cli import main

if __name__ == "__main__":
    main(["curves", *sys.argv[1:]])
