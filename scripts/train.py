#!/usr/bin/env python
"""Train one configuration: the same entry point as `python -m npair.train` (see its docstring)."""

from npair.train import main

if __name__ == "__main__":
    main()
