#!/usr/bin/env python
"""Run the missing runs of a table and write it: the same as `python -m npair.tables TABLE=<name>`."""

from npair.tables import main

if __name__ == "__main__":
    main()
