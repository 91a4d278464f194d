"""ImageListDataset: decoding, colour modes, unreadable images (fail naming the file, or skip and count)."""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
import torch

from npair.data.folder import build_folder
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


def _bomb_png(path, width: int, height: int) -> None:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: a few hundred KB that decode to
    ``width * height`` pixels (three bytes each once converted to RGB)."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own, before our error
@pytest.mark.parametrize(
    "side",
    [
        10_000,  # 100 M pixels: above PIL's limit, where PIL only warns and then decodes (300 MB as RGB)
        14_000,  # 196 M pixels: above twice the limit, where PIL raises its own error (no file name)
    ],
)
def test_decompression_bomb_png_fails_naming_the_file(tmp_path, fake_data, side):
    from npair.data.images import ImageTooLargeError

    paths, labels = _tree(tmp_path, fake_data)
    bomb = tmp_path / "c1" / "bomb.png"
    _bomb_png(bomb, side, side)
    assert bomb.stat().st_size < 1_000_000
    paths[4], labels[4] = bomb, 1
    with pytest.raises(ImageTooLargeError) as err:
        ImageListDataset(paths, labels)[4]
    assert str(bomb) in str(err.value) and "decompression bomb" in str(err.value)
    with pytest.raises(ImageTooLargeError, match="bomb.png"):  # not skipped as "unreadable"
        ImageListDataset(paths, labels, skip_corrupt=True)


def _truncate(path, fake_data) -> None:
    """Rewrite ``path`` as a JPEG whose header is intact but whose data stops halfway."""
    fake_data["image"](path, size=(240, 180), seed=99)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_is_logged_and_counted_once_per_file(tmp_path, fake_data, caplog):
    paths, labels = _tree(tmp_path, fake_data)
    _truncate(paths[4], fake_data)
    ds = ImageListDataset(paths, labels, skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="npair.data.images"):
        for _ in range(3):
            ds[4]
    assert ds.runtime_skipped == [str(paths[4])] and ds.num_skipped == 1 and ds.num_skipped_at_load == 1
    assert caplog.text.count("unreadable image") == 1


@pytest.mark.parametrize(
    "context",
    ["fork", pytest.param("spawn", marks=pytest.mark.slow)],  # spawn: ~10 s to start a worker
)
def test_truncated_jpeg_read_in_dataloader_workers_is_counted_in_the_main_process(
    tmp_path, fake_data, context
):
    """The training loop reads images in worker processes: their finds reach the dataset object the
    run holds, which is what ``DatasetSplits.skipped_images()`` reports for metrics.json."""
    root = fake_data["folder"](tmp_path / "tree", {"a": 3, "b": 3}, suffix=".jpg")
    _truncate(root / "a" / "img_1.jpg", fake_data)  # class a trains
    (root / "b" / "img_2.jpg").write_bytes(b"not an image")  # class b tests; dropped by the header scan
    splits = build_folder(root, skip_corrupt=True)
    assert splits.skipped_images() == {
        "train_at_scan": 0,
        "train_at_load": 0,
        "test_at_scan": 1,
        "test_at_load": 0,
        "total": 1,
    }
    loader = torch.utils.data.DataLoader(
        splits.train,
        batch_size=2,
        num_workers=2 if context == "fork" else 1,
        multiprocessing_context=context,
    )
    for _ in range(2):  # two epochs: the file is read twice, counted once
        assert sum(len(labels) for _, labels in loader) == 3
    assert splits.train.runtime_skipped == [str(root / "a" / "img_1.jpg")]
    assert splits.skipped_images() == {
        "train_at_scan": 0,
        "train_at_load": 1,
        "test_at_scan": 1,
        "test_at_load": 0,
        "total": 2,
    }
