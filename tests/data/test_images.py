"""ImageListDataset: decoding, colour modes, unreadable images (fail naming the file, or skip and count)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from npair.data.images import (
    CorruptImageError,
    ImageListDataset,
    SplitCountError,
    contiguous_labels,
    verify_counts,
)


def _tree(tmp_path, fake_data, n_per_class=3):
    paths = []
    for c in range(2):
        for k in range(n_per_class):
            paths.append(fake_data["image"](tmp_path / f"c{c}" / f"{k}.jpg", seed=10 * c + k))
    return paths, [0] * n_per_class + [1] * n_per_class


def test_default_item_is_float_chw_in_unit_range(tmp_path, fake_data):
    paths, labels = _tree(tmp_path, fake_data)
    ds = ImageListDataset(paths, labels)
    image, label = ds[4]
    assert image.shape == (3, 18, 24) and image.dtype == torch.float32 and label == 1
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert ds.labels.dtype == np.int64 and len(ds) == 6


def test_grayscale_and_cmyk_files_become_rgb(tmp_path, fake_data):
    from PIL import Image

    gray = fake_data["image"](tmp_path / "g.png", mode="L")
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 6), (0, 0, 0, 0)).save(cmyk)
    ds = ImageListDataset([gray, cmyk], [0, 0])
    assert ds[0][0].shape == (3, 18, 24) and ds[1][0].shape == (3, 6, 8)
    assert ImageListDataset([cmyk], [0], mode="L")[0][0].shape == (1, 6, 8)


def test_unreadable_image_fails_naming_the_file(tmp_path, fake_data):
    paths, labels = _tree(tmp_path, fake_data)
    paths[2].write_bytes(b"this is not a jpeg")
    ds = ImageListDataset(paths, labels)
    with pytest.raises(CorruptImageError) as err:
        ds[2]
    assert str(paths[2]) in str(err.value) and "skip_corrupt=true" in str(err.value)
    paths[3].unlink()
    with pytest.raises(CorruptImageError, match="file not found"):
        ds[3]


def test_skip_corrupt_drops_unreadable_files_and_counts_them(tmp_path, fake_data, caplog):
    paths, labels = _tree(tmp_path, fake_data)
    paths[1].write_bytes(b"garbage")
    paths[4].unlink()
    with caplog.at_level(logging.WARNING, logger="npair.data.images"):
        ds = ImageListDataset(paths, labels, skip_corrupt=True, name="toy/train")
    assert len(ds) == 4 and ds.num_skipped == 2
    assert ds.skipped_files == [str(paths[1]), str(paths[4])]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert "skipped 2 unreadable image(s)" in caplog.text
    assert all(ds[i][0].shape == (3, 18, 24) for i in range(len(ds)))


def test_skip_corrupt_substitutes_same_class_image_for_truncated_file(tmp_path, fake_data, caplog):
    paths, labels = _tree(tmp_path, fake_data)
    fake_data["image"](paths[4], size=(240, 180), seed=99)  # big enough that the header is a small prefix
    data = paths[4].read_bytes()
    paths[4].write_bytes(data[: len(data) // 2])  # header intact, decoding fails
    ds = ImageListDataset(paths, labels, skip_corrupt=True)
    assert ds.num_skipped == 0  # passes the header scan
    with caplog.at_level(logging.WARNING, logger="npair.data.images"):
        image, label = ds[4]
    assert label == 1 and ds.runtime_skipped == [str(paths[4])] and ds.num_skipped == 1
    assert "unreadable image" in caplog.text
    expected, _ = ds[5]  # the next image of the same class
    assert torch.equal(image, expected)
    with pytest.raises(CorruptImageError):
        ImageListDataset(paths, labels)[4]


def test_class_with_only_unreadable_images_is_an_error(tmp_path, fake_data):
    paths, labels = _tree(tmp_path, fake_data, n_per_class=1)
    paths[1].write_bytes(b"junk")
    with pytest.raises(CorruptImageError, match=r"class\(es\) \[1\]"):
        ImageListDataset(paths, labels, skip_corrupt=True)


def test_helpers():
    assert contiguous_labels([7, 3, 7, 10]).tolist() == [1, 0, 1, 2]
    verify_counts("x", {"train_images": 3}, None, "/r")
    verify_counts("x", {"train_images": 3, "test_images": 9}, {"train_images": 3}, "/r")
    with pytest.raises(SplitCountError, match="train_images: found 3, expected 4"):
        verify_counts("x", {"train_images": 3}, {"train_images": 4}, "/r")
