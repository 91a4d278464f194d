"""``python -m npair.plots``: see npair.plots.cli."""

from npair.plots.cli import main

if __name__ == "__main__":
    main()
