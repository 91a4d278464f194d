"""LFW (Huang et al. 2007) as the face test set, CASIA-WebFace as the training set (``webface_lfw``).

Test split = every LFW image (``<image_dir>/<Name>/<Name>_<NNNN>.jpg``), in sorted (name, file)
order, labelled by person in sorted name order. ``extras`` carries the face protocols, as
indices into the test split:

* ``pairs``: int64 array ``(P, 4)`` of ``(i, j, same, fold)`` from ``pairs.txt`` (View 2: first
  line ``10\\t300``, then per fold 300 matched ``name n1 n2`` and 300 mismatched
  ``name1 n1 name2 n2`` lines; ``same`` is 1/0, ``fold`` is 0-based). The View-1 files
  (``pairsDevTrain.txt``, first line ``1100``) parse as one fold.
* ``gallery`` and ``probes`` (only with BLUFR lists, Liao et al. IJCB14): equally long lists,
  one int64 index array per trial (``gallery_set.txt`` / ``probe_set.txt``: first line the
  number of trials, then per trial a count line and ``index, filename`` lines). Probes whose
  person has no gallery image are the open-set impostors. This is the format of
  ``npair.evaluation.faces`` (protocols ``closed_set_rank1`` and ``open_set_dir``). BLUFR indices refer to
  ``image_list.txt``, which is not in Python sort order (docs/datasets.md §5), so lists are matched
  **by file name**, never by position.

``people.txt`` (View 2: first line the number of folds, then per fold a count line and
``name\\tcount`` lines) is optional; when given, every listed person's image count is checked
against the image tree (a partial extraction fails naming the person).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from npair.data import casia
from npair.data.base import DatasetSplits
from npair.data.images import (
    DatasetNotFoundError,
    SplitCountError,
    download_hint,
    expected_counts,
    image_splits,
    require_file,
    require_root,
)

NAME = "lfw"
LAYOUT = """\
  LFW/                           <- dataset.lfw_root
    lfw/Aaron_Eckhart/Aaron_Eckhart_0001.jpg ...   (image_dir: lfw, or lfw_funneled / lfw-deepfunneled)
    pairs.txt                    View 2: "10\\t300", then per fold 300 matched + 300 mismatched lines
    people.txt                   (optional) View 2 people per fold
    blufr/gallery_set.txt probe_set.txt image_list.txt   (optional) BLUFR identification lists"""
PUBLISHED_COUNTS = {"test_images": 13233, "test_classes": 5749}
FACE_TRANSFORM = {"kind": "face", "image_size": 100, "channels": 1}


def lfw_image_name(person: str, number: int) -> str:
    """Relative path of LFW image ``number`` (1-based) of ``person``."""
    return f"{person}/{person}_{int(number):04d}.jpg"


def read_pairs(path: str | os.PathLike[str]) -> list[tuple[str, int, str, int, int, int]]:
    """``(name1, n1, name2, n2, same, fold)`` for every line of an LFW pairs file."""
    with open(path, encoding="utf-8") as handle:
        lines = [ln.split() for ln in handle.read().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: empty pairs file")
    header = [int(x) for x in lines[0]]
    folds, per_class = (1, header[0]) if len(header) == 1 else (header[0], header[1])
    body = lines[1:]
    if len(body) != folds * 2 * per_class:
        raise ValueError(
            f"{path}: header says {folds} fold(s) x 2 x {per_class} pairs = {folds * 2 * per_class} lines, "
            f"found {len(body)}"
        )
    out: list[tuple[str, int, str, int, int, int]] = []
    for k, parts in enumerate(body):
        fold, pos = divmod(k, 2 * per_class)
        matched = pos < per_class
        if matched and len(parts) == 3:
            out.append((parts[0], int(parts[1]), parts[0], int(parts[2]), 1, fold))
        elif not matched and len(parts) == 4:
            out.append((parts[0], int(parts[1]), parts[2], int(parts[3]), 0, fold))
        else:
            kind = "matched 'name n1 n2'" if matched else "mismatched 'name1 n1 name2 n2'"
            raise ValueError(f"{path}: line {k + 2} should be a {kind} pair, got {' '.join(parts)!r}")
    return out


def read_people(path: str | os.PathLike[str]) -> list[list[tuple[str, int]]]:
    """Folds of ``(name, image count)`` from ``people.txt`` (or one fold for peopleDev*.txt)."""
    with open(path, encoding="utf-8") as handle:
        lines = [ln.split() for ln in handle.read().splitlines() if ln.strip()]
    # people.txt: "<folds>" then per fold "<count>" + rows; peopleDev*.txt: "<count>" + rows.
    if len(lines) > 1 and len(lines[1]) == 1:
        blocks, pos = int(lines[0][0]), 1
    else:
        blocks, pos = 1, 0
    folds: list[list[tuple[str, int]]] = []
    for _ in range(blocks):
        count = int(lines[pos][0])
        rows = lines[pos + 1 : pos + 1 + count]
        if len(rows) != count or any(len(r) != 2 for r in rows):
            raise ValueError(f"{path}: a block announces {count} 'name count' rows but the rows do not match")
        folds.append([(r[0], int(r[1])) for r in rows])
        pos += 1 + count
    return folds


def read_blufr_set(path: str | os.PathLike[str]) -> list[list[str]]:
    """Per-trial file names of a BLUFR ``*_set.txt`` list (``index, filename`` rows)."""
    with open(path, encoding="utf-8") as handle:
        lines = [ln.strip() for ln in handle.read().splitlines() if ln.strip()]
    trials = int(lines[0])
    pos = 1
    out: list[list[str]] = []
    for trial in range(trials):
        count = int(lines[pos])
        rows = lines[pos + 1 : pos + 1 + count]
        if len(rows) != count:
            raise ValueError(f"{path}: trial {trial + 1} announces {count} rows, found {len(rows)}")
        out.append([row.split(",", 1)[-1].strip() for row in rows])
        pos += 1 + count
    return out


def scan_lfw(image_root: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Relative paths, person labels (sorted name order) and names of an LFW image tree."""
    return casia.scan_identity_folders(image_root, name=NAME, layout=LAYOUT)


def _index_of(paths: list[str]) -> dict[str, int]:
    return {p: i for i, p in enumerate(paths)}


def pairs_to_indices(
    pairs: list[tuple[str, int, str, int, int, int]], index: Mapping[str, int], source: Path
) -> np.ndarray:
    """``(i, j, same, fold)`` rows, raising naming the first image the tree lacks."""
    rows = np.empty((len(pairs), 4), dtype=np.int64)
    for k, (name1, n1, name2, n2, same, fold) in enumerate(pairs):
        a, b = lfw_image_name(name1, n1), lfw_image_name(name2, n2)
        for rel in (a, b):
            if rel not in index:
                raise DatasetNotFoundError(
                    f"{source}: pair {k + 1} refers to {rel!r}, which is not in the LFW image tree "
                    "(wrong image_dir, or a partial extraction? "
                    f"Re-fetch: {download_hint(NAME, source.parent)})"
                )
        rows[k] = (index[a], index[b], same, fold)
    return rows


def blufr_identification(blufr_dir: Path, index: Mapping[str, int]) -> dict[str, list[np.ndarray]]:
    """BLUFR gallery/probe lists as ``{"gallery": [...], "probes": [...]}``, one index array per trial."""
    sets = {}
    for key in ("gallery", "probe"):
        path = blufr_dir / f"{key}_set.txt"
        if not path.is_file():
            raise DatasetNotFoundError(
                f"BLUFR: missing {path} (expected gallery_set.txt and probe_set.txt from list/lfw/)"
            )
        sets[key] = read_blufr_set(path)
    if len(sets["gallery"]) != len(sets["probe"]):
        raise ValueError(
            f"BLUFR: {len(sets['gallery'])} gallery trials but {len(sets['probe'])} probe trials"
        )

    def to_index(fname: str) -> int:
        base = os.path.basename(fname)
        rel = f"{base.rsplit('_', 1)[0]}/{base}"
        if rel not in index:
            raise DatasetNotFoundError(f"BLUFR list {blufr_dir}: {fname!r} is not in the LFW image tree")
        return index[rel]

    return {
        out_key: [np.array([to_index(f) for f in trial], dtype=np.int64) for trial in sets[key]]
        for key, out_key in (("gallery", "gallery"), ("probe", "probes"))
    }


def build_webface_lfw(
    casia_root: str | os.PathLike[str],
    lfw_root: str | os.PathLike[str],
    image_dir: str = "lfw",
    pairs_file: str | None = "pairs.txt",
    people_file: str | None = None,
    blufr_dir: str | None = None,
    transform: Any = None,
    verify_counts: bool | Mapping[str, int] = True,
    skip_corrupt: bool = False,
    min_images_per_identity: int = 1,
) -> DatasetSplits:
    """Train on CASIA-WebFace identities, test on LFW (unseen identities) with pairs/BLUFR extras.

    Relative ``pairs_file`` / ``people_file`` / ``blufr_dir`` are resolved against ``lfw_root``;
    ``null`` skips them (``blufr_dir`` is skipped too when the folder does not exist).
    """
    lfw_path = require_root(lfw_root, NAME, LAYOUT)
    image_root = require_root(lfw_path / image_dir, NAME, LAYOUT)
    test_paths, test_labels, people = scan_lfw(image_root)
    index = _index_of(test_paths)
    extras: dict[str, Any] = {}

    def resolve(path: str) -> Path:
        return Path(path) if os.path.isabs(path) else lfw_path / path

    if pairs_file:
        path = require_file(resolve(pairs_file), NAME, LAYOUT, lfw_path)
        extras["pairs"] = pairs_to_indices(read_pairs(path), index, path)
    if people_file:
        path = require_file(resolve(people_file), NAME, LAYOUT, lfw_path)
        have = dict(zip(people, np.bincount(test_labels, minlength=len(people)).tolist()))
        wrong = [(n, c, have.get(n, 0)) for fold in read_people(path) for n, c in fold if have.get(n, 0) != c]
        if wrong:
            raise SplitCountError(
                f"{NAME}: {len(wrong)} people in {path} have another number of images in {image_root}, e.g. "
                + ", ".join(f"{n}: listed {c}, found {h}" for n, c, h in wrong[:3])
                + f". Re-fetch: {download_hint(NAME, lfw_path)}."
            )
    if blufr_dir and resolve(blufr_dir).is_dir():
        extras.update(blufr_identification(resolve(blufr_dir), index))

    train_paths, train_labels, _ = casia.scan_identity_folders(casia_root, min_images=min_images_per_identity)
    published = {**casia.PUBLISHED_COUNTS, **PUBLISHED_COUNTS}
    return image_splits(
        "webface_lfw",
        (train_paths, train_labels),
        (test_paths, test_labels),
        root=image_root,
        train_root=casia_root,
        transform=transform,
        transform_defaults=FACE_TRANSFORM,
        skip_corrupt=skip_corrupt,
        extras=extras,
        expected=expected_counts(verify_counts, published),
    )
