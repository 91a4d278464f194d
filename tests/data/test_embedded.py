"""Embedded datasets: digits (seen classes) and glyphs (unseen classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from npair.data.embedded import build_digits, build_glyphs, generate_glyphs


def test_digits_is_a_per_class_split_of_all_1797_images() -> None:
    splits = build_digits(test_fraction=0.3, split_seed=0)
    assert splits.protocol == "seen"
    assert len(splits.train) + len(splits.test) == 1797
    assert set(np.unique(splits.train.labels)) == set(np.unique(splits.test.labels)) == set(range(10))
    image, label = splits.test[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0 and isinstance(label, int)
    again = build_digits(test_fraction=0.3, split_seed=0)
    assert np.array_equal(again.test.labels, splits.test.labels)
    assert torch.equal(again.test.images, splits.test.images)


def test_glyphs_generation_is_deterministic_and_seed_dependent() -> None:
    a, labels = generate_glyphs(n_classes=6, images_per_class=3, seed=1)
    b, _ = generate_glyphs(n_classes=6, images_per_class=3, seed=1)
    c, _ = generate_glyphs(n_classes=6, images_per_class=3, seed=2)
    assert a.shape == (18, 1, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert labels.tolist() == [c for c in range(6) for _ in range(3)]
    # Images of a class resemble each other more than images of other classes (the data is learnable).
    flat = a.float().view(6, 3, -1)
    flat = flat - flat.mean(-1, keepdim=True)
    flat = flat / flat.norm(dim=-1, keepdim=True)
    within = torch.stack([(flat[k, 0] * flat[k, 1]).sum() for k in range(6)]).mean()
    between = torch.stack([(flat[k, 0] * flat[(k + 1) % 6, 1]).sum() for k in range(6)]).mean()
    assert within > between


def test_glyphs_splits_are_class_disjoint_and_cached(tmp_path: Path) -> None:
    splits = build_glyphs(tmp_path, n_classes=8, images_per_class=4, seed=0)
    assert splits.protocol == "unseen"
    assert len(splits.train) == len(splits.test) == 16
    assert splits.num_train_classes == splits.num_test_classes == 4
    cached = list(tmp_path.glob("glyphs-*.pt"))
    assert len(cached) == 1
    again = build_glyphs(tmp_path, n_classes=8, images_per_class=4, seed=0)  # read from the cache
    assert torch.equal(again.test.images, splits.test.images)
    fresh = generate_glyphs(n_classes=8, images_per_class=4, seed=0)[0]
    assert torch.equal(fresh[16:], splits.test.images)  # test = the unseen second half of the classes


def test_glyphs_default_size_is_400_classes_20000_images(tmp_path: Path) -> None:
    splits = build_glyphs(tmp_path, cache=False)
    assert len(splits.train) + len(splits.test) == 20_000
    assert splits.num_train_classes + splits.num_test_classes == 400


def test_batched_fetch_matches_single_items(tmp_path: Path) -> None:
    ds = build_glyphs(tmp_path, n_classes=4, images_per_class=3).train
    batch = ds.__getitems__([0, 5, 2])
    for (img, label), i in zip(batch, [0, 5, 2]):
        single, single_label = ds[i]
        assert torch.equal(img, single) and label == single_label


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_classes": 7}, "n_classes must be an even number"),
        ({"images_per_class": 1}, "images_per_class must be >= 2"),
    ],
)
def test_glyphs_bad_parameters_name_the_key(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_glyphs(tmp_path, **kwargs)


def test_glyph_families_are_near_twins_and_default_generation_is_unchanged(tmp_path: Path) -> None:
    # family_size = 1 is the generator as it was: same images, same cache file name as before the option
    plain, _ = generate_glyphs(n_classes=8, images_per_class=3, seed=4)
    assert torch.equal(plain, generate_glyphs(n_classes=8, images_per_class=3, seed=4, family_size=1)[0])
    build_glyphs(tmp_path, n_classes=400, images_per_class=30)
    assert [p.name for p in tmp_path.glob("glyphs-*.pt")] == ["glyphs-ab596945dd96.pt"]  # mini tables' cache
    # families of 4: siblings look more alike than classes of other families
    images, labels = generate_glyphs(n_classes=40, images_per_class=4, family_size=4, family_jitter=0.1)
    assert labels.tolist() == [c for c in range(40) for _ in range(4)]
    flat = images.float().view(40, 4, -1).mean(1)
    flat = flat - flat.mean(-1, keepdim=True)
    flat = flat / flat.norm(dim=-1, keepdim=True)
    sim = flat @ flat.T
    family = torch.arange(40) // 4
    sibling = (family[:, None] == family[None, :]) & ~torch.eye(40, dtype=torch.bool)
    stranger = family[:, None] != family[None, :]
    assert sim[sibling].mean() > sim[stranger].mean() + 0.2
    families_a = build_glyphs(tmp_path, n_classes=40, images_per_class=4, family_size=4)
    assert families_a.num_train_classes == 20 and len(list(tmp_path.glob("glyphs-*.pt"))) == 2


def test_glyph_families_must_not_span_the_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="family_size=4 must be >= 1 and divide the 10 training"):
        build_glyphs(tmp_path, n_classes=20, images_per_class=2, family_size=4)
