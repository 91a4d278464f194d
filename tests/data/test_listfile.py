"""Car-333 / Flower-610 list-file format and the Oxford Flowers-102 stand-in."""

from __future__ import annotations

import numpy as np
import pytest

from npair.data.images import SplitCountError
from npair.data.listfile import build_flowers102, build_listfile, read_list_file


def _list_tree(tmp_path, fake_data):
    root = tmp_path / "car333"
    rows = ["# Car-333 style list", ""]
    for k, (label, split) in enumerate(
        [(17, "train"), (17, "train"), (17, "test"), (5, "train"), (5, "test"), (5, "val")]
    ):
        rel = f"images/my car {k}.jpg"  # a path with spaces
        fake_data["image"](root / rel, seed=k)
        rows.append(f"{rel} {label} {split}")
    (root / "list.txt").write_text("\n".join(rows) + "\n")
    return root


def test_read_list_file(tmp_path, fake_data):
    root = _list_tree(tmp_path, fake_data)
    entries = read_list_file(root / "list.txt")
    assert entries["train"] == (
        ["images/my car 0.jpg", "images/my car 1.jpg", "images/my car 3.jpg"],
        ["17", "17", "5"],
    )
    assert len(entries["test"][0]) == 2  # the val line is ignored by default
    assert len(read_list_file(root / "list.txt", val_as="train")["train"][0]) == 4


def test_seen_protocol_shares_labels(tmp_path, fake_data):
    root = _list_tree(tmp_path, fake_data)
    splits = build_listfile(root, name="car333")
    assert splits.protocol == "seen" and splits.name == "car333"
    assert splits.train.labels.tolist() == [1, 1, 0]  # ids 5 -> 0, 17 -> 1
    assert splits.test.labels.tolist() == [1, 0]
    assert splits.train[0][0].shape == (3, 224, 224)


def test_counts_guard_uses_paper_counts_for_car333(tmp_path, fake_data):
    root = _list_tree(tmp_path, fake_data)
    with pytest.raises(SplitCountError, match="train_images: found 3, expected 157023"):
        build_listfile(root, name="car333", verify_counts=True)
    build_listfile(root, name="car333", verify_counts={"train_images": 3, "test_images": 2})


def test_string_labels_and_bad_lines(tmp_path, fake_data):
    root = tmp_path / "flowers"
    for k, _name in enumerate(["rose", "tulip", "rose", "tulip"]):
        fake_data["image"](root / f"{k}.jpg", seed=k)
    (root / "list.txt").write_text("0.jpg rose train\n1.jpg tulip train\n2.jpg rose test\n3.jpg tulip test\n")
    splits = build_listfile(root, name="flower610")
    assert splits.train.class_names == ["rose", "tulip"] and splits.test.labels.tolist() == [0, 1]
    (root / "list.txt").write_text("0.jpg rose holdout\n")
    with pytest.raises(ValueError, match="list.txt:1: split must be"):
        build_listfile(root)
    (root / "list.txt").write_text("0.jpg rose train\n2.jpg lily test\n")
    with pytest.raises(ValueError, match="seen-class protocol"):
        build_listfile(root)


def test_flowers102_official_format(tmp_path, fake_data):
    flowers = fake_data["flowers102"](tmp_path)
    splits = build_flowers102(flowers, verify_counts=False, transform={"kind": "paper", "image_size": 16})
    assert splits.protocol == "seen"
    # train = trnid [1, 4, 7] + valid [2, 5, 8]; test = tstid [3, 6, 9]; labels 1,1,1,2,2,2,3,3,3
    assert [p.rsplit("/", 1)[1] for p in splits.train.paths] == [
        "image_00001.jpg",
        "image_00004.jpg",
        "image_00007.jpg",
        "image_00002.jpg",
        "image_00005.jpg",
        "image_00008.jpg",
    ]
    assert splits.train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert splits.test.labels.tolist() == [0, 1, 2]
    assert splits.test[0][0].shape == (3, 16, 16)
    with pytest.raises(SplitCountError, match="expected 2040"):
        build_flowers102(flowers)
    only_train = build_flowers102(flowers, train_sets=["trnid"], verify_counts=False)
    assert np.array_equal(only_train.train.labels, [0, 1, 2])
