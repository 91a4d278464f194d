"""LFW pairs/people/BLUFR parsing and the CASIA-WebFace -> LFW splits."""

from __future__ import annotations

import numpy as np
import pytest

from npair.data.images import DatasetNotFoundError, SplitCountError
from npair.data.lfw import build_webface_lfw, read_blufr_set, read_pairs, read_people


def _build(tmp_path, fake_data, **kwargs):
    lfw = fake_data["lfw"](tmp_path)
    casia = fake_data["casia"](tmp_path)
    kwargs.setdefault("verify_counts", False)
    return build_webface_lfw(casia, lfw, **kwargs), lfw, casia


def test_read_pairs_folds_and_flags(tmp_path, fake_data):
    lfw = fake_data["lfw"](tmp_path)
    pairs = read_pairs(lfw / "pairs.txt")
    assert len(pairs) == 8
    assert pairs[0] == ("Ai_Sugiyama", 1, "Ai_Sugiyama", 3, 1, 0)
    assert pairs[2] == ("Aaron_Eckhart", 1, "Zico", 2, 0, 0)
    assert [p[4] for p in pairs] == [1, 1, 0, 0] * 2
    assert [p[5] for p in pairs] == [0] * 4 + [1] * 4


def test_read_pairs_rejects_wrong_line_count_and_kind(tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("1\t1\nA\t1\t2\n")
    with pytest.raises(ValueError, match="2 lines"):
        read_pairs(bad)
    bad.write_text("1\t1\nA\t1\tB\t2\nA\t1\t2\n")  # mismatched pair where a matched one belongs
    with pytest.raises(ValueError, match="matched"):
        read_pairs(bad)


def test_view1_pairs_file_is_one_fold(tmp_path):
    dev = tmp_path / "pairsDevTest.txt"
    dev.write_text("2\nA\t1\t2\nB\t1\t2\nA\t1\tB\t1\nB\t2\tA\t2\n")
    assert {p[5] for p in read_pairs(dev)} == {0}


def test_read_people_both_formats(tmp_path, fake_data):
    lfw = fake_data["lfw"](tmp_path)
    folds = read_people(lfw / "people.txt")
    assert [len(f) for f in folds] == [3, 2] and folds[1][1] == ("Zico", 2)
    dev = tmp_path / "peopleDevTrain.txt"
    dev.write_text("2\nA\t1\nB\t3\n")
    assert read_people(dev) == [[("A", 1), ("B", 3)]]


def test_pairs_extras_index_the_test_split(tmp_path, fake_data):
    splits, lfw, _ = _build(tmp_path, fake_data)
    pairs = splits.extras["pairs"]
    assert pairs.dtype == np.int64 and pairs.shape == (8, 4)
    test = splits.test
    for (i, j, same, fold), raw in zip(pairs, read_pairs(lfw / "pairs.txt")):
        assert test.paths[i].endswith(f"{raw[0]}/{raw[0]}_{raw[1]:04d}.jpg")
        assert test.paths[j].endswith(f"{raw[2]}/{raw[2]}_{raw[3]:04d}.jpg")
        assert same == raw[4] and fold == raw[5]
        assert (test.labels[i] == test.labels[j]) == bool(same)


def test_splits_train_on_casia_test_on_lfw(tmp_path, fake_data):
    splits, _, casia = _build(tmp_path, fake_data)
    assert splits.protocol == "unseen"
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert all(p.startswith(str(casia)) for p in splits.train.paths)
    assert len(splits.test) == 10 and splits.num_test_classes == 5
    image, _ = splits.test[0]
    assert image.shape == (1, 100, 100)  # the face pipeline is the default for this builder
    image, _ = splits.train[0]
    assert image.shape == (1, 100, 100)


def test_blufr_lists_matched_by_file_name_not_position(tmp_path, fake_data):
    splits, lfw, _ = _build(tmp_path, fake_data, blufr_dir="blufr")
    extras = splits.extras
    assert len(extras["gallery"]) == len(extras["probes"]) == 2
    names = [p.rsplit("/", 1)[1] for p in splits.test.paths]
    for g_idx, p_idx, gallery, probe in zip(
        extras["gallery"],
        extras["probes"],
        read_blufr_set(lfw / "blufr" / "gallery_set.txt"),
        read_blufr_set(lfw / "blufr" / "probe_set.txt"),
    ):
        assert g_idx.dtype == np.int64 and p_idx.dtype == np.int64
        assert [names[i] for i in g_idx] == gallery
        assert [names[i] for i in p_idx] == probe
    # BLUFR's image_list order differs from Python's sorted order in the fixture, as in the real lists
    blufr_order = (lfw / "blufr" / "image_list.txt").read_text().split()
    assert blufr_order != sorted(blufr_order)


def test_missing_blufr_folder_is_skipped(tmp_path, fake_data):
    splits, _, _ = _build(tmp_path, fake_data, blufr_dir="no_such_dir")
    assert "gallery" not in splits.extras and "probes" not in splits.extras and "pairs" in splits.extras


def test_pair_referring_to_missing_image_names_it(tmp_path, fake_data):
    lfw = fake_data["lfw"](tmp_path)
    casia = fake_data["casia"](tmp_path)
    (lfw / "lfw" / "Zico" / "Zico_0002.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="Zico/Zico_0002.jpg"):
        build_webface_lfw(casia, lfw, verify_counts=False)


def test_people_file_checks_per_person_counts(tmp_path, fake_data):
    lfw = fake_data["lfw"](tmp_path)
    casia = fake_data["casia"](tmp_path)
    build_webface_lfw(casia, lfw, verify_counts=False, people_file="people.txt")
    (lfw / "people.txt").write_text(
        (lfw / "people.txt").read_text().replace("Ai_Sugiyama\t3", "Ai_Sugiyama\t4")
    )
    with pytest.raises(SplitCountError, match="Ai_Sugiyama: listed 4, found 3"):
        build_webface_lfw(casia, lfw, verify_counts=False, people_file="people.txt")


def test_counts_guard_names_casia_and_lfw_counts(tmp_path, fake_data):
    with pytest.raises(SplitCountError) as err:
        _build(tmp_path, fake_data, verify_counts=True)
    msg = str(err.value)
    assert "train_images: found 7, expected 494414" in msg and "test_images: found 10, expected 13233" in msg


def test_missing_casia_root_explains_request(tmp_path, fake_data):
    lfw = fake_data["lfw"](tmp_path)
    with pytest.raises(DatasetNotFoundError) as err:
        build_webface_lfw(tmp_path / "CASIA-WebFace", lfw, verify_counts=False)
    assert "casia_webface" in str(err.value) and "0000045/001.jpg" in str(err.value)


def test_extras_feed_the_face_evaluator(tmp_path, fake_data):
    """The extras are in the format of npair.evaluation.faces: its protocols accept them."""
    faces = pytest.importorskip("npair.evaluation.faces")
    splits, _, _ = _build(tmp_path, fake_data, blufr_dir="blufr")
    labels = splits.test.labels
    x = np.eye(labels.max() + 1, dtype=np.float32)[labels]  # perfect embeddings: one axis per person
    x += 0.01 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    out = faces.face_scores(
        x,
        labels,
        splits.extras,
        ["lfw_pairs", "closed_set_rank1", "open_set_dir"],
        similarity="cosine",
        far=0.5,
    )
    assert out["lfw_acc"] == 1.0 and out["rank1"] == 1.0
