"""List-file datasets (Car-333, Flower-610) and Oxford Flowers-102 as the public stand-in.

Car-333 (Xie et al. CVPR15) and Flower-610 have no public release (docs/datasets.md §7-8); users
who hold a copy describe it with a **list file**, one image per line::

    # comment lines and blank lines are ignored
    <path relative to the root> <label> <split>
    images/0001.jpg 17 train
    images/0002.jpg 17 test

* ``path`` may contain spaces (the last two fields are split off from the right);
* ``label`` is an integer class id or a class-name token (names are sorted to ids);
* ``split`` is ``train`` or ``test`` (``val`` lines are ignored unless ``val_as: train|test``).

Table 1 of the paper is a closed-set (seen-class) protocol: test classes are the training
classes (``protocol: seen``, shared label ids, kNN against the training split). The counts
attributed to the paper (Car-333: 157,023 / 7,840 images, 333 classes; Flower-610: 58,721 /
3,050, 610 classes) are **not confirmed** (docs/paper.md §4.1), so the configs leave
``verify_counts`` off and record those numbers under ``published_counts``.

Oxford Flowers-102 (Nilsback & Zisserman 2008) is read in torchvision's ``Flowers102`` on-disk
format: ``jpg/image_%05d.jpg``, ``imagelabels.mat`` (``labels``, 1..102) and ``setid.mat``
(``trnid``/``valid``/``tstid``, 1-based image ids). Seen-class split: train = trnid + valid
(2,040 images), test = tstid (6,149 images), 102 classes each.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from npair.data.base import DatasetSplits
from npair.data.images import expected_counts, image_splits, require_file, require_root

LIST_LAYOUT = """\
  <root>/                        <- dataset.root
    list.txt                     "<relative path> <label> <split: train|test>" per line
    <the images, at the paths the list gives>"""
FLOWERS_LAYOUT = """\
  flowers-102/                   <- dataset.root (torchvision's root/flowers-102)
    jpg/image_00001.jpg ... jpg/image_08189.jpg
    imagelabels.mat              `labels`: 1x8189, class ids 1..102
    setid.mat                    `trnid`, `valid`, `tstid`: 1-based image ids"""
FLOWERS_COUNTS = {"train_images": 2040, "test_images": 6149, "train_classes": 102, "test_classes": 102}
PAPER_COUNTS = {
    "car333": {"train_images": 157023, "test_images": 7840, "train_classes": 333, "test_classes": 333},
    "flower610": {"train_images": 58721, "test_images": 3050, "train_classes": 610, "test_classes": 610},
}


def read_list_file(path: Path, val_as: str | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """``{"train": (paths, labels), "test": (paths, labels)}`` from a ``path label split`` list."""
    out: dict[str, tuple[list[str], list[str]]] = {"train": ([], []), "test": ([], [])}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(maxsplit=2)
            if len(parts) != 3:
                raise ValueError(f"{path}:{line_no}: expected '<path> <label> <split>', got {text!r}")
            rel, label, split = parts
            split = split.lower()
            if split in ("val", "valid", "validation"):
                if val_as is None:
                    continue
                split = val_as
            if split not in out:
                raise ValueError(f"{path}:{line_no}: split must be train, test or val, got {split!r}")
            out[split][0].append(rel)
            out[split][1].append(label)
    return out


def _label_ids(labels: Sequence[str]) -> tuple[np.ndarray, dict[int, str]]:
    """Integer labels stay as they are; otherwise names are sorted to ids 0..C-1."""
    try:
        ids = np.array([int(x) for x in labels], dtype=np.int64)
        return ids, {int(i): str(i) for i in np.unique(ids)}
    except ValueError:
        names = sorted(set(labels))
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[x] for x in labels], dtype=np.int64), dict(enumerate(names))


def build_listfile(
    root: str | os.PathLike[str],
    list_file: str | os.PathLike[str] = "list.txt",
    name: str = "listfile",
    transform: Any = None,
    protocol: str = "seen",
    val_as: str | None = None,
    verify_counts: bool | Mapping[str, int] = False,
    published_counts: Mapping[str, int] | None = None,
    skip_corrupt: bool = False,
) -> DatasetSplits:
    """A dataset described by a list file (relative paths are relative to ``root``).

    ``verify_counts: true`` checks ``published_counts`` (or, for ``name`` car333/flower610,
    the paper-attributed counts); a mapping is checked directly.
    """
    root_path = require_root(root, name, LIST_LAYOUT)
    list_path = Path(list_file)
    if not list_path.is_absolute():
        list_path = root_path / list_path
    entries = read_list_file(require_file(list_path, name, LIST_LAYOUT, root_path), val_as=val_as)
    ids, names = _label_ids(entries["train"][1] + entries["test"][1])
    n_train = len(entries["train"][0])
    published = published_counts if published_counts is not None else PAPER_COUNTS.get(name)
    return image_splits(
        name,
        (entries["train"][0], ids[:n_train]),
        (entries["test"][0], ids[n_train:]),
        root=root_path,
        transform=transform,
        skip_corrupt=skip_corrupt,
        protocol=protocol,
        expected=expected_counts(verify_counts, published),
        class_names=names,
    )


def read_flowers102(root: Path) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Image paths, class ids (1..102) and the ``setid.mat`` id arrays of a Flowers-102 root."""
    from scipy.io import loadmat

    labels = loadmat(os.fspath(require_file(root / "imagelabels.mat", "flowers102", FLOWERS_LAYOUT, root)))
    setid = loadmat(os.fspath(require_file(root / "setid.mat", "flowers102", FLOWERS_LAYOUT, root)))
    class_ids = np.asarray(labels["labels"], dtype=np.int64).reshape(-1)
    paths = [os.path.join("jpg", f"image_{i:05d}.jpg") for i in range(1, len(class_ids) + 1)]
    sets = {key: np.asarray(setid[key], dtype=np.int64).reshape(-1) for key in ("trnid", "valid", "tstid")}
    return paths, class_ids, sets


def build_flowers102(
    root: str | os.PathLike[str],
    transform: Any = None,
    train_sets: Sequence[str] = ("trnid", "valid"),
    test_sets: Sequence[str] = ("tstid",),
    verify_counts: bool | Mapping[str, int] = True,
    skip_corrupt: bool = False,
) -> DatasetSplits:
    """Oxford Flowers-102, seen-class protocol (stand-in for Flower-610)."""
    root_path = require_root(root, "flowers102", FLOWERS_LAYOUT)
    paths, class_ids, sets = read_flowers102(root_path)

    def take(keys: Sequence[str]) -> tuple[list[str], np.ndarray]:
        ids = np.concatenate([sets[k] for k in keys]) - 1  # 1-based image ids
        if ids.size and (ids.min() < 0 or ids.max() >= len(paths)):
            raise ValueError(f"flowers102: setid.mat ids out of range 1..{len(paths)}")
        return [paths[i] for i in ids], class_ids[ids]

    return image_splits(
        "flowers102",
        take(train_sets),
        take(test_sets),
        root=root_path,
        transform=transform,
        skip_corrupt=skip_corrupt,
        protocol="seen",
        expected=expected_counts(verify_counts, FLOWERS_COUNTS),
    )
