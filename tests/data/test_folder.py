"""`folder`: any image tree, class = parent directory relative to the root; split rules."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from npair.data.folder import build_folder, scan_image_tree
from npair.data.images import DatasetNotFoundError


def test_scan_nested_classes_skips_hidden_and_non_images(tmp_path, fake_data):
    root = fake_data["folder"](tmp_path / "tree", {"birds/gull": 2, "birds/owl": 3, "cars": 2})
    (root / "cars" / "notes.txt").write_text("not an image")
    (root / "cars" / "._img_0.png").write_bytes(b"AppleDouble")
    fake_data["image"](root / ".cache" / "img.png")
    paths, classes = scan_image_tree(root)
    assert classes == ["birds/gull"] * 2 + ["birds/owl"] * 3 + ["cars"] * 2
    assert paths[0] == "birds/gull/img_0.png"


def test_default_split_is_class_disjoint_first_half_of_sorted_classes(tmp_path, fake_data):
    root = fake_data["folder"](tmp_path, {"a": 2, "b": 3, "c/x": 4, "c/y": 2})
    splits = build_folder(root, transform={"kind": "paper", "image_size": 16})
    assert splits.protocol == "unseen"
    assert splits.train.class_names == ["a", "b"] and splits.test.class_names == ["c/x", "c/y"]
    assert splits.train.labels.tolist() == [0, 0, 1, 1, 1]
    assert splits.test.labels.tolist() == [0] * 4 + [1] * 2
    image, label = splits.test[4]
    assert image.shape == (3, 16, 16) and label == 1
    assert splits.skipped_images()["total"] == 0


def test_fraction_split(tmp_path, fake_data):
    root = fake_data["folder"](tmp_path, {f"k{i}": 2 for i in range(5)})
    splits = build_folder(root, train_fraction=0.8)
    assert splits.train.class_names == ["k0", "k1", "k2", "k3"] and splits.test.class_names == ["k4"]
    splits = build_folder(root, train_fraction=0.5)  # odd class count: floor(2.5) = 2 train classes
    assert splits.num_train_classes == 2 and splits.num_test_classes == 3


def test_explicit_class_lists(tmp_path, fake_data):
    root = fake_data["folder"](tmp_path, {"a": 2, "b": 2, "c": 2, "d": 2})
    splits = build_folder(root, split="lists", train_classes=["d", "a"], test_classes=["c"])
    assert splits.train.class_names == ["a", "d"] and splits.test.class_names == ["c"]
    splits = build_folder(root, split="lists", test_classes=["b"])  # the rest trains
    assert splits.train.class_names == ["a", "c", "d"]
    with pytest.raises(ValueError, match="not folders"):
        build_folder(root, split="lists", train_classes=["zebra"])
    with pytest.raises(ValueError, match="in both"):
        build_folder(root, split="lists", train_classes=["a"], test_classes=["a"])


def test_per_class_image_split_is_seen_protocol_with_shared_labels(tmp_path, fake_data):
    root = fake_data["folder"](tmp_path, {"a": 4, "b": 5, "c": 2})
    splits = build_folder(root, split="images", train_fraction=0.5, seed=3)
    assert splits.protocol == "seen"
    assert np.bincount(splits.train.labels).tolist() == [2, 2, 1]  # round(4/2), round(5/2)=2, 1
    assert np.bincount(splits.test.labels).tolist() == [2, 3, 1]
    assert splits.train.class_names == splits.test.class_names == ["a", "b", "c"]
    assert not set(splits.train.paths) & set(splits.test.paths)
    # the label of every image is its folder, in both splits
    for split in (splits.train, splits.test):
        for path, label in zip(split.paths, split.labels):
            assert f"/{split.class_names[label]}/" in path
    again = build_folder(root, split="images", train_fraction=0.5, seed=3)
    assert again.train.paths == splits.train.paths
    other = build_folder(root, split="images", train_fraction=0.5, seed=4)
    assert other.train.paths != splits.train.paths or other.test.paths != splits.test.paths


def test_min_images_per_class_and_errors(tmp_path, fake_data):
    root = fake_data["folder"](tmp_path / "t", {"a": 2, "b": 1, "c": 2, "d": 2})
    with pytest.raises(ValueError, match="needs >= 2 images per class"):
        build_folder(root, split="images")
    splits = build_folder(root, split="images", min_images_per_class=2)
    assert splits.train.class_names == ["a", "c", "d"]
    with pytest.raises(DatasetNotFoundError, match="dataset.root"):
        build_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        build_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="split must be"):
        build_folder(root, split="random")


def _loop_tree(tmp_path, fake_data):
    """Two classes plus a symlink loop (``a/loop -> ..``), a second name for a class folder
    (``z_alias -> b``), a link to a folder outside the tree, and a link to a file in its own class."""
    root = fake_data["folder"](tmp_path / "tree", {"a": 2, "b": 3})
    os.symlink("..", root / "a" / "loop")
    os.symlink("b", root / "z_alias")
    extra = fake_data["folder"](tmp_path / "extra", {"c": 2})
    os.symlink(extra / "c", root / "c")
    os.symlink("img_0.png", root / "b" / "img_0_again.png")
    return root


def test_symlinked_folders_are_not_followed_by_default(tmp_path, fake_data, caplog):
    root = _loop_tree(tmp_path, fake_data)
    with caplog.at_level(logging.WARNING, logger="npair.data.folder"):
        _, classes = scan_image_tree(root)
    assert classes == ["a"] * 2 + ["b"] * 3  # the file link in b counts once
    assert "3 linked folder(s)" in caplog.text and "follow_symlinks=true" in caplog.text
    splits = build_folder(root)
    assert len(splits.train) == 2 and len(splits.test) == 3


def test_follow_symlinks_walks_each_real_folder_once(tmp_path, fake_data, caplog):
    from npair.data.folder import scan_images

    root = _loop_tree(tmp_path, fake_data)
    with caplog.at_level(logging.WARNING, logger="npair.data.folder"):
        tree = scan_images(root, follow_symlinks=True)
    assert tree.classes == ["a"] * 2 + ["b"] * 3 + ["c"] * 2
    assert sorted(tree.skipped_links) == ["a/loop (the folder '.' again)", "z_alias (the folder 'b' again)"]
    assert len(set(tree.file_ids)) == len(tree.paths) == 7
    splits = build_folder(root, follow_symlinks=True, train_fraction=0.67)
    assert splits.train.class_names == ["a", "b"] and splits.test.class_names == ["c"]


def test_one_file_in_two_classes_is_an_error(tmp_path, fake_data):
    root = fake_data["folder"](tmp_path / "tree", {"a": 2, "b": 2, "c": 2, "d": 2})
    os.link(root / "a" / "img_0.png", root / "d" / "copy.png")  # a hard link: train class a, test class d
    with pytest.raises(ValueError, match=r"same file .* in two classes, 'a' and 'd'.*both splits"):
        build_folder(root)
    os.remove(root / "d" / "copy.png")
    os.symlink("../a/img_0.png", root / "b" / "copy.png")  # a symlink, both classes train
    with pytest.raises(ValueError, match="img_0.png"):
        build_folder(root, split="images")
