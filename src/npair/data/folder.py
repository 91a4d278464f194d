"""Any image tree as a dataset: the class of an image is its parent directory relative to the root.

Nested folders are allowed (``birds/gull/a.jpg`` has class ``birds/gull``; an image directly
under the root has class ``.``). Split rules (``split``):

* ``classes`` (default): class-disjoint, unseen-class protocol. The sorted class names are cut
  at ``floor(C * train_fraction)`` (at least 1 class each side): with ``train_fraction: 0.5``
  the first half trains and the second half tests, as for CUB-200 and Cars196.
* ``lists``: class-disjoint with explicit ``train_classes`` / ``test_classes`` (names relative to
  the root); if only one list is given the other is every remaining class.
* ``images``: per-class image split, seen-class protocol: in every class, a seeded random
  ``train_fraction`` of the images (at least one each side; classes need >= 2 images) trains and
  the rest tests, with shared labels.

Links (``follow_symlinks``): symlinked folders are not entered by default (each one skipped is
logged). With ``follow_symlinks: true`` they are, but every real folder is walked once, found by
its device and inode: a link back to a folder already walked (a cycle such as ``a/loop -> ..``, or
a second name for a folder) is skipped and logged. Links to files are read in both modes. A real
file (device and inode, so hard links too) counts once: several paths to it in one class keep the
first in sorted order; paths in two classes are an error, naming both, since the image's label is
ambiguous, and it would land in both splits when the two classes are on different sides.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npair.data.base import DatasetSplits
from npair.data.images import expected_counts, image_splits, is_image_file, require_root

log = logging.getLogger(__name__)

NAME = "folder"
LAYOUT = """\
  <root>/                        <- dataset.root
    <class_a>/img1.jpg img2.png ...
    <group>/<class_b>/img.jpg ...  (nested folders: the class is the parent path relative to root)"""


FileId = tuple[int, int]  # (st_dev, st_ino): one real file, whatever path reaches it


@dataclass
class ImageTree:
    """The images under a root: sorted relative ``paths``, each one's ``classes`` entry and real
    file id (``None`` for a link that leads nowhere), and the symlinked folders not walked."""

    paths: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    file_ids: list[FileId | None] = field(default_factory=list)
    skipped_links: list[str] = field(default_factory=list)


def _file_id(path: str) -> FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # a dangling link: reading it fails later, naming it
    return (st.st_dev, st.st_ino)


def scan_images(root: str | os.PathLike[str], follow_symlinks: bool = False) -> ImageTree:
    """Every image under ``root`` (see the module docstring for links); hidden names are skipped.

    Raises :class:`ValueError` when one real file is reached under two class folders.
    """
    root = Path(root)
    found: list[tuple[str, FileId | None]] = []
    skipped: list[str] = []
    walked: dict[FileId, str] = {}
    pending = [""]  # real folders to walk, relative to root
    links: list[str] = []  # symlinked folders, walked (in sorted order) once no real folder is left
    while pending or links:
        if pending:
            rel_dir = pending.pop()
        else:
            links.sort(reverse=True)
            rel_dir = links.pop()
        folder = os.path.join(root, rel_dir) if rel_dir else os.fspath(root)
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in walked:
            skipped.append(f"{rel_dir} (the folder {walked[st.st_dev, st.st_ino] or '.'!r} again)")
            continue
        walked[st.st_dev, st.st_ino] = rel_dir
        with os.scandir(folder) as entries:
            listing = sorted(entries, key=lambda e: e.name)
        for entry in listing:
            if entry.name.startswith("."):
                continue
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            if entry.is_dir():  # follows links
                if not entry.is_symlink():
                    pending.append(rel)
                elif follow_symlinks:
                    links.append(rel)
                else:
                    skipped.append(rel)
            elif is_image_file(entry.name):
                found.append((rel, _file_id(entry.path)))
    found.sort()

    tree = ImageTree(skipped_links=skipped)
    first_path: dict[FileId, str] = {}
    duplicates = 0
    for rel, fid in found:
        cls = Path(rel).parent.as_posix()
        if fid is not None and fid in first_path:
            other = first_path[fid]
            if Path(other).parent.as_posix() != cls:
                raise ValueError(
                    f"{NAME}: {str(root / rel)!r} and {str(root / other)!r} are the same file (links or hard "
                    f"links) in two classes, {Path(other).parent.as_posix()!r} and {cls!r}: its label is "
                    "ambiguous and it could land in both splits. Remove one of them."
                )
            duplicates += 1
            continue
        if fid is not None:
            first_path[fid] = rel
        tree.paths.append(rel)
        tree.classes.append(cls)
        tree.file_ids.append(fid)
    if duplicates:
        log.warning(
            "%s: %d path(s) lead to a file already counted in the same class; counted once", NAME, duplicates
        )
    if skipped:
        hint = "" if follow_symlinks else "; set dataset.build.follow_symlinks=true to walk symlinked folders"
        log.warning(
            "%s: %d linked folder(s) under %s not walked%s: %s", NAME, len(skipped), root, hint, skipped[:5]
        )
    return tree


def scan_image_tree(
    root: str | os.PathLike[str], follow_symlinks: bool = False
) -> tuple[list[str], list[str]]:
    """Relative paths of every image under ``root`` (sorted) and each one's class name (see
    :func:`scan_images`)."""
    tree = scan_images(root, follow_symlinks)
    return tree.paths, tree.classes


def _select(paths: list[str], names: np.ndarray, wanted: Sequence[str]) -> tuple[list[str], np.ndarray]:
    mask = np.isin(names, list(wanted))
    return [p for p, m in zip(paths, mask) if m], names[mask]


def build_folder(
    root: str | os.PathLike[str],
    transform: Any = None,
    split: str = "classes",
    train_fraction: float = 0.5,
    train_classes: Sequence[str] | None = None,
    test_classes: Sequence[str] | None = None,
    seed: int = 0,
    min_images_per_class: int = 1,
    skip_corrupt: bool = False,
    verify_counts: bool | Mapping[str, int] | None = None,
    follow_symlinks: bool = False,
) -> DatasetSplits:
    """Build train/test splits of an image tree (see the module docstring for ``split`` and links).

    ``min_images_per_class`` drops smaller classes first (N-pair batches need two images per class).
    ``verify_counts`` may be a mapping of expected counts; ``true`` alone checks nothing (no
    published counts exist for a user's tree).
    """
    root_path = require_root(root, NAME, LAYOUT)
    tree = scan_images(root_path, follow_symlinks=follow_symlinks)
    paths, class_list = tree.paths, tree.classes
    if not paths:
        raise ValueError(
            f"{NAME}: no images found under {str(root_path)!r} (extensions: .jpg .jpeg .png .bmp .gif .tif "
            f".webp ...).\nExpected layout:\n{LAYOUT}"
        )
    names = np.array(class_list, dtype=object)
    uniq, counts = np.unique(names, return_counts=True)
    keep = uniq[counts >= int(min_images_per_class)]
    if len(keep) < len(uniq):
        paths, names = _select(paths, names, keep)
    classes = sorted(keep.tolist())
    if len(classes) < 2 and split != "images":
        raise ValueError(
            f"{NAME}: a class-disjoint split needs >= 2 classes; {str(root_path)!r} has {classes}"
        )

    protocol = "unseen"
    if split == "classes":
        if not 0.0 < float(train_fraction) < 1.0:
            raise ValueError(f"{NAME}: train_fraction must be in (0, 1), got {train_fraction}")
        cut = min(max(int(len(classes) * float(train_fraction)), 1), len(classes) - 1)
        train, test = _select(paths, names, classes[:cut]), _select(paths, names, classes[cut:])
    elif split == "lists":
        if not train_classes and not test_classes:
            raise ValueError(f"{NAME}: split=lists needs train_classes and/or test_classes")
        train_set = [str(c) for c in (train_classes or [])]
        test_set = [str(c) for c in (test_classes or [])]
        unknown = sorted(set(train_set + test_set) - set(classes))
        if unknown:
            raise ValueError(f"{NAME}: classes {unknown[:10]} are not folders under {str(root_path)!r}")
        overlap = sorted(set(train_set) & set(test_set))
        if overlap:
            raise ValueError(f"{NAME}: classes {overlap[:10]} are in both train_classes and test_classes")
        train_set = train_set or [c for c in classes if c not in test_set]
        test_set = test_set or [c for c in classes if c not in train_set]
        train, test = _select(paths, names, train_set), _select(paths, names, test_set)
    elif split == "images":
        protocol = "seen"
        rng = np.random.default_rng(seed)
        is_train = np.zeros(len(paths), dtype=bool)
        for cls in classes:
            idx = np.flatnonzero(names == cls)
            if len(idx) < 2:
                raise ValueError(
                    f"{NAME}: split=images needs >= 2 images per class; {cls!r} has {len(idx)} "
                    "(set dataset.build.min_images_per_class=2 to drop such classes)"
                )
            n_train = min(max(round(len(idx) * float(train_fraction)), 1), len(idx) - 1)
            is_train[rng.permutation(idx)[:n_train]] = True
        train = ([p for p, m in zip(paths, is_train) if m], names[is_train])
        test = ([p for p, m in zip(paths, is_train) if not m], names[~is_train])
    else:
        raise ValueError(f"{NAME}: split must be 'classes', 'lists' or 'images', not {split!r}")

    # Class names -> integer ids in sorted-name order, then the usual label mapping.
    index = {c: i for i, c in enumerate(classes)}

    def to_ids(part: tuple[list[str], np.ndarray]) -> tuple[list[str], np.ndarray]:
        return part[0], np.array([index[c] for c in part[1]], dtype=np.int64)

    return image_splits(
        NAME,
        to_ids(train),
        to_ids(test),
        root=root_path,
        transform=transform,
        skip_corrupt=skip_corrupt,
        protocol=protocol,
        expected=expected_counts(verify_counts, None),
        class_names=dict(enumerate(classes)),
    )
