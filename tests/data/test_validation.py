"""Validation classes carved from the training classes (npair.data.validation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from npair.data.base import DatasetSplits
from npair.data.embedded import build_glyphs
from npair.data.face_protocol import build_glyphs_faces
from npair.data.validation import ClassSubset, carve_validation, validation_classes


class ImagesTouched(RuntimeError):
    """Raised by a guarded test split when any of its images is read."""


class GuardedImages(torch.utils.data.Dataset):
    """A test split whose labels can be listed but whose images raise when touched."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        raise ImagesTouched(f"the test split was read (item {index})")

    def __getitems__(self, indices: list[int]):
        raise ImagesTouched(f"the test split was read (items {indices[:5]}...)")


def build_glyphs_guarded(**glyphs) -> DatasetSplits:
    """`glyphs_faces` (face-protocol extras included) with a test split whose images raise when read."""
    splits = build_glyphs_faces(**glyphs)
    return DatasetSplits(
        name=splits.name,
        train=splits.train,
        test=GuardedImages(splits.test.labels),
        protocol=splits.protocol,
        extras=splits.extras,
    )


def test_validation_classes_are_a_seeded_fifth_of_the_training_classes() -> None:
    labels = np.repeat(np.arange(200), 3)
    held = validation_classes(labels, 0.2, seed=0)
    assert len(held) == 40 and len(set(held.tolist())) == 40 and np.all(np.diff(held) > 0)
    assert np.array_equal(held, validation_classes(labels, 0.2, seed=0))
    assert not np.array_equal(held, validation_classes(labels, 0.2, seed=1))
    assert len(validation_classes(np.arange(5), 0.1, seed=0)) == 2  # at least 2 classes


@pytest.mark.parametrize(
    "fraction,message", [(1.0, "must be in \\(0, 1\\)"), (-0.2, "must be in"), (0.7, "leave 1 to train on")]
)
def test_bad_fractions_name_the_key(fraction: float, message: str) -> None:
    with pytest.raises(ValueError, match=f"dataset.validation.fraction.*{message}"):
        validation_classes(np.repeat(np.arange(4), 2), fraction, 0)


def test_carving_gives_class_disjoint_relabelled_splits_of_the_training_images(tmp_path: Path) -> None:
    splits = build_glyphs_faces(root=tmp_path, n_classes=40, images_per_class=4)
    carved = carve_validation(splits, {"fraction": 0.2, "seed": 3})
    assert isinstance(carved.train, ClassSubset) and isinstance(carved.test, ClassSubset)
    assert carved.test.dataset is splits.train and carved.train.dataset is splits.train
    assert carved.protocol == "unseen" and carved.extras == {}  # the test split's face protocol is gone
    held = validation_classes(splits.train.labels, 0.2, 3)
    assert np.array_equal(carved.test.classes, held)
    assert not set(carved.train.classes.tolist()) & set(held.tolist())
    assert sorted([*carved.train.indices, *carved.test.indices]) == list(range(len(splits.train)))
    for part in (carved.train, carved.test):
        assert np.array_equal(np.unique(part.labels), np.arange(len(part.classes)))  # contiguous ids
        for i in (0, len(part) - 1):
            image, label = part[i]
            original_image, original_label = splits.train[int(part.indices[i])]
            assert torch.equal(image, original_image)
            assert label == part.labels[i] and part.classes[label] == original_label
        batch = part.__getitems__([0, 2, 1])
        assert [lab for _, lab in batch] == [part[i][1] for i in (0, 2, 1)]
        assert all(torch.equal(b[0], part[i][0]) for b, i in zip(batch, (0, 2, 1)))


def test_fraction_zero_or_no_node_leaves_the_splits_alone(tmp_path: Path) -> None:
    splits = build_glyphs(tmp_path, n_classes=8, images_per_class=3)
    assert carve_validation(splits, None) is splits
    assert carve_validation(splits, {"fraction": 0.0, "seed": 0}) is splits
    with pytest.raises(ValueError, match="unknown key"):
        carve_validation(splits, {"fraction": 0.2, "sed": 1})


def test_the_guarded_test_split_raises_when_read(tmp_path: Path) -> None:
    splits = build_glyphs_guarded(root=tmp_path, n_classes=40, images_per_class=3)
    with pytest.raises(ImagesTouched):
        splits.test[0]
    carved = carve_validation(splits, {"fraction": 0.25, "seed": 0})
    assert all(carved.test[i] is not None for i in range(len(carved.test)))
