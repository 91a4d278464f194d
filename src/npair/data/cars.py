"""Stanford Cars / Cars196 (Krause et al. 2013) in the "all images" format, with the DML split.

Files (docs/datasets.md §2, format 1): ``car_ims/000001.jpg ... 016185.jpg`` and ``cars_annos.mat``
whose ``annotations`` struct has fields ``relative_im_path, bbox_x1, bbox_y1, bbox_x2, bbox_y2,
class, test``. Split: class ids 1-98 train (8,054 images), 99-196 test (8,131), by the numeric
``class`` field (not folder or name order). The ``test`` flag and the boxes are ignored.
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

NAME = "cars196"
LAYOUT = """\
  cars196/                 <- dataset.root (the CARS196/ folder of CARS196.zip has the same layout)
    cars_annos.mat         MATLAB struct `annotations` (relative_im_path, bbox_*, class 1..196, test)
    car_ims/000001.jpg ... car_ims/016185.jpg"""
PUBLISHED_COUNTS = {"train_images": 8054, "test_images": 8131, "train_classes": 98, "test_classes": 98}


def read_cars_annotations(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """``relative_im_path`` and ``class`` of every record of a ``cars_annos.mat`` file."""
    from scipy.io import loadmat

    mat = loadmat(os.fspath(path), squeeze_me=True)
    if "annotations" not in mat:
        raise ValueError(f"{path}: no 'annotations' variable (is this cars_annos.mat?)")
    ann = np.atleast_1d(mat["annotations"])
    names = ann.dtype.names or ()
    for field in ("relative_im_path", "class"):
        if field not in names:
            raise ValueError(f"{path}: annotations lack the field {field!r} (fields: {names})")
    paths = [str(p) for p in ann["relative_im_path"]]
    classes = np.array([int(c) for c in ann["class"]], dtype=np.int64)
    return paths, classes


def build_cars196(
    root: str | os.PathLike[str],
    transform: Any = None,
    verify_counts: bool | Mapping[str, int] = True,
    skip_corrupt: bool = False,
    num_train_classes: int | None = None,
) -> DatasetSplits:
    """Cars196 with class ids 1..``num_train_classes`` (default: half, i.e. 1-98) for training."""
    root_path: Path = require_root(root, NAME, LAYOUT)
    paths, class_ids = read_cars_annotations(
        require_file(root_path / "cars_annos.mat", NAME, LAYOUT, root_path)
    )
    train, test = split_by_class_order(paths, class_ids, num_train_classes)
    return image_splits(
        NAME,
        train,
        test,
        root=root_path,
        transform=transform,
        skip_corrupt=skip_corrupt,
        expected=expected_counts(verify_counts, PUBLISHED_COUNTS),
    )
