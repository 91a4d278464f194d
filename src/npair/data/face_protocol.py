"""A face-style evaluation protocol for any labelled test split (mini Table 3 on `glyphs`).

Builds, deterministically from a seed, the two inputs the LFW protocols read
(format: :mod:`npair.evaluation.faces`):

* ``pairs``: an LFW View-2-like list of ``(i, j, same, fold)``: ``n_folds`` folds whose identities are
  disjoint (as LFW's folds are), each with ``pairs_per_fold / 2`` matched and as many mismatched pairs;
* ``gallery`` / ``probes``: BLUFR-like open-set identification trials: per trial, a random half of
  the identities is enrolled with one gallery image each; the rest of their images are genuine probes
  and every image of the other identities is an impostor probe.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from npair.data.base import DatasetSplits


def make_pairs(labels: np.ndarray, n_folds: int = 10, pairs_per_fold: int = 600, seed: int = 0) -> np.ndarray:
    """(P, 4) int array of (i, j, same, fold) with identity-disjoint folds."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    if len(classes) < 2 * n_folds:
        raise ValueError(
            f"face protocol: {len(classes)} identities cannot make {n_folds} identity-disjoint folds "
            f"(need >= {2 * n_folds}); lower n_folds"
        )
    rows = []
    for fold, fold_classes in enumerate(np.array_split(classes, n_folds)):
        members = {c: np.flatnonzero(labels == c) for c in fold_classes}
        multi = [c for c, idx in members.items() if len(idx) >= 2]
        if not multi:
            raise ValueError(f"face protocol: fold {fold} has no identity with two images")
        for _ in range(pairs_per_fold // 2):
            c = multi[rng.integers(len(multi))]
            i, j = rng.choice(members[c], size=2, replace=False)
            rows.append((i, j, 1, fold))
        for _ in range(pairs_per_fold // 2):
            a, b = rng.choice(fold_classes, size=2, replace=False)
            rows.append((rng.choice(members[a]), rng.choice(members[b]), 0, fold))
    return np.asarray(rows, dtype=np.int64)


def make_identification(
    labels: np.ndarray, n_trials: int = 10, gallery_fraction: float = 0.5, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per trial: gallery (one image per enrolled identity) and probes (all other images)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed + 1)
    classes = np.unique(labels)
    galleries, probes = [], []
    for _ in range(n_trials):
        enrolled = rng.choice(
            classes, size=max(1, int(round(gallery_fraction * len(classes)))), replace=False
        )
        gallery = np.sort([rng.choice(np.flatnonzero(labels == c)) for c in enrolled]).astype(np.int64)
        galleries.append(gallery)
        probes.append(np.setdiff1d(np.arange(len(labels)), gallery).astype(np.int64))
    return galleries, probes


def face_protocol_extras(
    labels: np.ndarray,
    n_folds: int = 10,
    pairs_per_fold: int = 600,
    n_trials: int = 10,
    gallery_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    gallery, probes = make_identification(labels, n_trials, gallery_fraction, seed)
    return {"pairs": make_pairs(labels, n_folds, pairs_per_fold, seed), "gallery": gallery, "probes": probes}


def with_face_protocol(splits: DatasetSplits, **protocol: Any) -> DatasetSplits:
    """The same splits with a face-style protocol on the test split in ``extras``."""
    splits.extras = {**splits.extras, **face_protocol_extras(splits.test.labels, **protocol)}
    return splits


def build_glyphs_faces(protocol: dict[str, Any] | None = None, **glyphs: Any) -> DatasetSplits:
    """`glyphs` (see :func:`npair.data.embedded.build_glyphs`) with the face-style protocol."""
    from npair.data.embedded import build_glyphs

    return with_face_protocol(build_glyphs(**glyphs), **(protocol or {}))
