"""CASIA-WebFace (Yi et al. 2014): one folder per identity, the training set for faces.

Layout (docs/datasets.md §6): ``CASIA-WebFace/<7-digit identity id>/<3-digit>.jpg``, 494,414 images
of 10,575 identities, 250x250 JPEG; the label is the folder. The dataset needs a signed request
to CASIA (``python -m npair.data.download casia_webface`` prints the steps). Cleaned copies
(e.g. happynear's "washed" list) have fewer images: set ``dataset.verify_counts=false`` for those.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from npair.data.images import DatasetNotFoundError, is_image_file, require_root

NAME = "casia_webface"
LAYOUT = """\
  CASIA-WebFace/                 <- dataset.casia_root
    0000045/001.jpg 002.jpg ...  (one folder per identity; the folder name is the identity)
    0000099/001.jpg ...
    ... (10,575 identity folders, 494,414 images)"""
PUBLISHED_COUNTS = {"train_images": 494414, "train_classes": 10575}


def scan_identity_folders(
    root: str | os.PathLike[str], name: str = NAME, layout: str = LAYOUT, min_images: int = 1
) -> tuple[list[str], np.ndarray, list[str]]:
    """Relative image paths, integer labels (sorted identity order) and identity names of a
    one-folder-per-identity tree; identities with fewer than ``min_images`` images are dropped."""
    root_path: Path = require_root(root, name, layout)
    identities = sorted(e.name for e in os.scandir(root_path) if e.is_dir() and not e.name.startswith("."))
    paths: list[str] = []
    labels: list[int] = []
    kept: list[str] = []
    for ident in identities:
        files = sorted(f.name for f in os.scandir(root_path / ident) if f.is_file() and is_image_file(f.name))
        if len(files) < min_images or not files:
            continue
        label = len(kept)
        kept.append(ident)
        paths.extend(f"{ident}/{f}" for f in files)
        labels.extend([label] * len(files))
    if not paths:
        raise DatasetNotFoundError(
            f"{name}: no identity folders with images under {str(root_path)!r}.\nExpected layout:\n{layout}"
        )
    return paths, np.asarray(labels, dtype=np.int64), kept
