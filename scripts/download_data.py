"""Thin wrapper: ``python scripts/download_data.py <name> [--root data]`` = ``python -m npair.data.download``.

Run with ``--list`` to see every dataset, its access status and the command to fetch it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from npair.data.download import main

if __name__ == "__main__":
    sys.exit(main())
