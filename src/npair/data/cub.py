"""CUB-200-2011 (Wah et al. 2011) in its official on-disk format, with the DML split.

Split (Song et al. CVPR16 unseen-class protocol; docs/datasets.md §1): class ids 1-100 train
(5,864 images), 101-200 test (5,924 images). Classes come from ``image_class_labels.txt``,
never from folder order; ``train_test_split.txt`` (the classification split) is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from npair.data.base import DatasetSplits
from npair.data.images import (
    expected_counts,
    image_splits,
    require_file,
    require_root,
    split_by_class_order,
)

NAME = "cub200"
LAYOUT = """\
  CUB_200_2011/                  <- dataset.root
    images.txt                   "<image_id> <relative path>", e.g. "1 001.Black_footed_Albatross/\
Black_Footed_Albatross_0046_18.jpg"
    image_class_labels.txt       "<image_id> <class_id 1..200>"
    images/001.Black_footed_Albatross/*.jpg ... images/200.Common_Yellowthroat/*.jpg"""
PUBLISHED_COUNTS = {"train_images": 5864, "test_images": 5924, "train_classes": 100, "test_classes": 100}


def _read_id_table(path: Path) -> dict[int, str]:
    table: dict[int, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{line_no}: expected '<image_id> <value>', got {line.rstrip()!r}")
            table[int(parts[0])] = parts[1].strip()
    return table


def read_cub_metadata(root: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """Image paths (relative to ``root``) and class ids (1-based) in image-id order."""
    root = require_root(root, NAME, LAYOUT)
    images = _read_id_table(require_file(root / "images.txt", NAME, LAYOUT, root))
    classes = _read_id_table(require_file(root / "image_class_labels.txt", NAME, LAYOUT, root))
    if images.keys() != classes.keys():
        missing = sorted(images.keys() ^ classes.keys())[:5]
        raise ValueError(
            f"{NAME}: images.txt and image_class_labels.txt list different image ids, e.g. {missing}"
        )
    ids = sorted(images)
    paths = [os.path.join("images", images[i]) for i in ids]
    return paths, np.array([int(classes[i]) for i in ids], dtype=np.int64)


def build_cub200(
    root: str | os.PathLike[str],
    transform: Any = None,
    verify_counts: bool | Mapping[str, int] = True,
    skip_corrupt: bool = False,
    num_train_classes: int | None = None,
) -> DatasetSplits:
    """CUB-200-2011 with the first ``num_train_classes`` class ids (default: half, i.e. 1-100) for
    training and the rest for testing (unseen-class protocol)."""
    paths, class_ids = read_cub_metadata(root)
    train, test = split_by_class_order(paths, class_ids, num_train_classes)
    return image_splits(
        NAME,
        train,
        test,
        root=root,
        transform=transform,
        skip_corrupt=skip_corrupt,
        expected=expected_counts(verify_counts, PUBLISHED_COUNTS),
    )
