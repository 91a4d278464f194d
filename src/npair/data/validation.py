"""Validation classes carved from the training classes, for choosing hyperparameters without the test split.

``dataset.validation`` (every dataset config; default ``fraction: 0`` = off) turns a dataset's splits into

* train: the training images of the remaining ``1 − fraction`` of the training classes;
* test:  the training images of ``fraction`` of the training classes (at least 2), chosen at random with
  ``seed`` — class-disjoint from the new train split, i.e. the unseen-class protocol of docs/paper.md §4.2.

The dataset's own test split is dropped before anything reads an item of it, and its protocol extras
(LFW-style pairs, identification trials) go with it, so a run with validation on cannot see test images.
The held-out classes depend only on the training labels, ``fraction`` and ``seed``
(:func:`validation_classes`); :mod:`npair.selection` records them with every selection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from npair.data.base import DatasetSplits

__all__ = ["ClassSubset", "carve_validation", "validation_classes"]


class ClassSubset(torch.utils.data.Dataset):
    """The items ``indices`` of ``dataset`` with their labels mapped to contiguous ids 0..C−1."""

    def __init__(self, dataset: Any, indices: np.ndarray) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        original = np.asarray(dataset.labels, dtype=np.int64)[self.indices]
        self.classes, labels = np.unique(original, return_inverse=True)  # classes[new id] = original id
        self.labels = labels.astype(np.int64)
        self._new_id = {int(c): k for k, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.dataset[int(self.indices[index])]
        return image, self._new_id[int(label)]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        getitems = getattr(self.dataset, "__getitems__", None)
        originals = [int(self.indices[i]) for i in indices]
        items = getitems(originals) if getitems else [self.dataset[i] for i in originals]
        return [(image, self._new_id[int(label)]) for image, label in items]


def validation_classes(train_labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The sorted training class ids held out as validation classes: round(fraction · C), at least 2."""
    classes = np.unique(np.asarray(train_labels, dtype=np.int64))
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(
            f"dataset.validation.fraction={fraction!r} must be in (0, 1) (0 turns validation off)"
        )
    n_val = max(2, round(float(fraction) * len(classes)))
    if len(classes) - n_val < 2:
        raise ValueError(
            f"dataset.validation.fraction={fraction}: {len(classes)} training classes leave "
            f"{len(classes) - n_val} to train on after holding out {n_val}; need at least 2"
        )
    rng = np.random.default_rng(int(seed))
    return np.sort(rng.choice(classes, size=n_val, replace=False))


def carve_validation(splits: DatasetSplits, validation: Mapping[str, Any] | None) -> DatasetSplits:
    """``splits`` unchanged when ``validation`` is None or its ``fraction`` is 0; else the validation splits.

    ``validation``: ``{fraction: float in (0, 1), seed: int}`` (the ``dataset.validation`` config node).
    """
    if validation is None or float(validation.get("fraction", 0.0) or 0.0) == 0.0:
        return splits
    unknown = set(validation) - {"fraction", "seed"}
    if unknown:
        raise ValueError(f"dataset.validation: unknown key(s) {sorted(unknown)}; known: fraction, seed")
    labels = np.asarray(splits.train.labels, dtype=np.int64)
    held_out = np.isin(
        labels, validation_classes(labels, validation["fraction"], int(validation.get("seed", 0)))
    )
    return DatasetSplits(
        name=splits.name,
        train=ClassSubset(splits.train, np.flatnonzero(~held_out)),
        test=ClassSubset(splits.train, np.flatnonzero(held_out)),
        protocol="unseen",
    )
