"""CUB-200-2011: official metadata files -> class-disjoint DML split (classes 1..C/2 train)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npair.data.cub import PUBLISHED_COUNTS, build_cub200, read_cub_metadata
from npair.data.images import DatasetNotFoundError, SplitCountError


def test_metadata_parsed_in_image_id_order(tmp_path, fake_data):
    cub = fake_data["cub"](tmp_path)
    paths, class_ids = read_cub_metadata(cub)
    # class c has 3 + c - 1 images: 3, 4, 5, 6
    assert np.bincount(class_ids).tolist() == [0, 3, 4, 5, 6]
    assert paths[0] == "images/001.Bird_1/Bird_1_0001_1001.jpg"
    # every path lives in the folder of its class id
    assert all(p.split("/")[1].startswith(f"{c:03d}.") for p, c in zip(paths, class_ids))


def test_split_is_class_disjoint_first_half_trains(tmp_path, fake_data, tiny_paper_transform):
    cub = fake_data["cub"](tmp_path)
    splits = build_cub200(cub, transform=tiny_paper_transform, verify_counts=False)
    assert splits.protocol == "unseen" and splits.name == "cub200"
    # classes 1-2 (3 + 4 images) train, classes 3-4 (5 + 6 images) test, labels 0..C-1 per split
    assert splits.train.labels.tolist() == [0] * 3 + [1] * 4
    assert splits.test.labels.tolist() == [0] * 5 + [1] * 6
    assert all("/001.Bird_1/" in p or "/002.Bird_2/" in p for p in splits.train.paths)
    assert all("/003.Bird_3/" in p or "/004.Bird_4/" in p for p in splits.test.paths)
    assert not set(splits.train.paths) & set(splits.test.paths)
    image, label = splits.test[5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 1


def test_train_test_split_file_is_ignored(tmp_path, fake_data):
    """The official classification split (train_test_split.txt) must not leak into the DML split."""
    cub = fake_data["cub"](tmp_path)
    (cub / "train_test_split.txt").write_text("garbage that would not parse\n")
    splits = build_cub200(cub, verify_counts=False)
    assert len(splits.train) == 7 and len(splits.test) == 11


def test_expected_counts_pass_and_mismatch_names_counts(tmp_path, fake_data):
    cub = fake_data["cub"](tmp_path)
    ok = {"train_images": 7, "test_images": 11, "train_classes": 2, "test_classes": 2}
    assert len(build_cub200(cub, verify_counts=ok).train) == 7
    with pytest.raises(SplitCountError) as err:
        build_cub200(cub, verify_counts=True)  # the published 5,864 / 5,924
    msg = str(err.value)
    assert "train_images: found 7, expected 5864" in msg and "test_images: found 11, expected 5924" in msg
    assert "python -m npair.data.download cub200" in msg and "verify_counts=false" in msg
    assert PUBLISHED_COUNTS == {
        "train_images": 5864,
        "test_images": 5924,
        "train_classes": 100,
        "test_classes": 100,
    }


def test_missing_root_and_missing_file_name_layout_and_command(tmp_path, fake_data):
    with pytest.raises(DatasetNotFoundError) as err:
        build_cub200(tmp_path / "nowhere" / "CUB_200_2011")
    msg = str(err.value)
    assert "image_class_labels.txt" in msg and "python -m npair.data.download cub200 --root" in msg
    cub = fake_data["cub"](tmp_path)
    (cub / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing file .*image_class_labels.txt"):
        build_cub200(cub, verify_counts=False)


def test_num_train_classes_override(tmp_path, fake_data):
    cub = fake_data["cub"](tmp_path)
    splits = build_cub200(cub, verify_counts=False, num_train_classes=3)
    assert splits.num_train_classes == 3 and splits.num_test_classes == 1 and len(splits.test) == 6
