#!/usr/bin/env python
"""Evaluate a run or saved embeddings: the same as `python -m npair.evaluate`."""

from npair.evaluate import main

if __name__ == "__main__":
    main()
