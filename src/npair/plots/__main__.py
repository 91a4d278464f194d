"""``python -m npair.plots``: see npair.plots.cli."""

import sys

from npair.errors import run_cli
from npair.plots.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
