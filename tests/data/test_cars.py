"""Cars196: cars_annos.mat (official MATLAB struct) -> split by the numeric class field."""

from __future__ import annotations

import numpy as np
import pytest

from npair.data.cars import build_cars196, read_cars_annotations
from npair.data.images import DatasetNotFoundError, SplitCountError


def test_annotations_read_from_official_struct(tmp_path, fake_data):
    cars = fake_data["cars"](tmp_path, classes=[1, 1, 2, 3, 3, 3], shuffle=False)
    paths, classes = read_cars_annotations(cars / "cars_annos.mat")
    assert paths == [f"car_ims/{i:06d}.jpg" for i in range(1, 7)]
    assert classes.tolist() == [1, 1, 2, 3, 3, 3]


def test_split_by_class_field_not_record_order(tmp_path, fake_data):
    # records are shuffled in the .mat: a split by position would mix classes
    cars = fake_data["cars"](tmp_path, classes=[1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 4], shuffle=True)
    splits = build_cars196(cars, verify_counts=False)
    _, classes = read_cars_annotations(cars / "cars_annos.mat")
    assert len(splits.train) == 5 and len(splits.test) == 6  # classes 1-2 | 3-4
    id_of = {f"car_ims/{i + 1:06d}.jpg": c for i, c in enumerate([1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 4])}
    train_ids = [id_of[p.split("cars196/")[1]] for p in splits.train.paths]
    test_ids = [id_of[p.split("cars196/")[1]] for p in splits.test.paths]
    assert set(train_ids) == {1, 2} and set(test_ids) == {3, 4}
    # labels follow class ids: id 1 -> 0, 2 -> 1 (train); 3 -> 0, 4 -> 1 (test)
    assert np.array_equal(splits.train.labels, np.array(train_ids) - 1)
    assert np.array_equal(splits.test.labels, np.array(test_ids) - 3)
    assert not np.array_equal(classes, np.sort(classes))  # the fixture really is shuffled


def test_counts_guard_and_missing_mat(tmp_path, fake_data):
    cars = fake_data["cars"](tmp_path)
    with pytest.raises(SplitCountError, match="train_images: found 5, expected 8054"):
        build_cars196(cars)
    build_cars196(cars, verify_counts={"train_images": 5, "test_images": 6})
    (cars / "cars_annos.mat").unlink()
    with pytest.raises(DatasetNotFoundError, match="cars_annos.mat"):
        build_cars196(cars)


def test_images_load_as_rgb(tmp_path, fake_data):
    cars = fake_data["cars"](tmp_path)
    fake_data["image"](cars / "car_ims" / "000001.jpg", mode="L", seed=3)  # a grayscale car image
    splits = build_cars196(cars, verify_counts=False, transform={"kind": "paper", "image_size": 16})
    images = [splits.train[i][0] for i in range(len(splits.train))]
    assert all(im.shape == (3, 16, 16) for im in images)
