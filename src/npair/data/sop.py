"""Stanford Online Products (Song et al. CVPR16) in its official on-disk format.

``Ebay_train.txt`` / ``Ebay_test.txt``: a header line, then ``image_id class_id super_class_id
path`` rows (parsed by position; docs/datasets.md §3). The split is fixed by the files: train 59,551
images of 11,318 classes, test 60,502 images of 11,316 classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from npair.data.base import DatasetSplits
from npair.data.images import expected_counts, image_splits, require_file, require_root

NAME = "sop"
LAYOUT = """\
  Stanford_Online_Products/      <- dataset.root
    Ebay_train.txt  Ebay_test.txt   header "image_id class_id super_class_id path", rows like \
"1 1 1 bicycle_final/111085122871_0.JPG"
    bicycle_final/ cabinet_final/ chair_final/ ... toaster_final/   (images "<product_id>_<k>.JPG")"""
PUBLISHED_COUNTS = {
    "train_images": 59551,
    "test_images": 60502,
    "train_classes": 11318,
    "test_classes": 11316,
}


def read_ebay_list(path: Path) -> tuple[list[str], np.ndarray]:
    """Paths and class ids of one ``Ebay_*.txt`` file (header skipped, 4 columns by position)."""
    paths: list[str] = []
    classes: list[int] = []
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    for line_no, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise ValueError(
                f"{path}:{line_no}: expected 4 columns (image_id class_id super_class_id path), got {line!r}"
            )
        classes.append(int(parts[1]))
        paths.append(parts[3])
    return paths, np.array(classes, dtype=np.int64)


def build_sop(
    root: str | os.PathLike[str],
    transform: Any = None,
    verify_counts: bool | Mapping[str, int] = True,
    skip_corrupt: bool = False,
) -> DatasetSplits:
    """Stanford Online Products with the split given by ``Ebay_train.txt`` / ``Ebay_test.txt``."""
    root_path = require_root(root, NAME, LAYOUT)
    train = read_ebay_list(require_file(root_path / "Ebay_train.txt", NAME, LAYOUT, root_path))
    test = read_ebay_list(require_file(root_path / "Ebay_test.txt", NAME, LAYOUT, root_path))
    overlap = np.intersect1d(train[1], test[1])
    if overlap.size:
        raise ValueError(
            f"{NAME}: Ebay_train.txt and Ebay_test.txt share class ids, e.g. {overlap[:5].tolist()}"
        )
    return image_splits(
        NAME,
        train,
        test,
        root=root_path,
        transform=transform,
        skip_corrupt=skip_corrupt,
        expected=expected_counts(verify_counts, PUBLISHED_COUNTS),
    )
