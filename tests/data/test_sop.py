"""Stanford Online Products: Ebay_train.txt / Ebay_test.txt define the split."""

from __future__ import annotations

import pytest

from npair.data.images import SplitCountError
from npair.data.sop import PUBLISHED_COUNTS, build_sop, read_ebay_list


def test_lists_parsed_by_position(tmp_path, fake_data):
    sop = fake_data["sop"](tmp_path)
    paths, classes = read_ebay_list(sop / "Ebay_train.txt")
    assert classes.tolist() == [1, 1, 2, 2, 2, 3, 3]
    assert paths[0] == "chair_final/110001_0.JPG"


def test_splits_labels_and_disjointness(tmp_path, fake_data):
    sop = fake_data["sop"](tmp_path)
    splits = build_sop(sop, verify_counts=False, transform={"kind": "paper", "image_size": 16})
    assert splits.train.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert splits.test.labels.tolist() == [0, 0, 1, 1, 1, 1]  # ids 4, 5 -> 0, 1
    assert splits.num_train_classes == 3 and splits.num_test_classes == 2
    assert splits.train[0][0].shape == (3, 16, 16)


def test_counts_guard(tmp_path, fake_data):
    sop = fake_data["sop"](tmp_path)
    with pytest.raises(SplitCountError) as err:
        build_sop(sop)
    assert "train_classes: found 3, expected 11318" in str(err.value)
    assert PUBLISHED_COUNTS["test_images"] == 60502


def test_overlapping_class_ids_rejected(tmp_path, fake_data):
    sop = fake_data["sop"](tmp_path)
    text = (sop / "Ebay_test.txt").read_text().replace(" 4 ", " 3 ")
    (sop / "Ebay_test.txt").write_text(text)
    with pytest.raises(ValueError, match="share class ids"):
        build_sop(sop, verify_counts=False)
