"""EmbeddingSet: label types (integers, integral floats, class names), shared numbering, readable refusals."""

from __future__ import annotations

import numpy as np
import pytest

from npair.evaluation import EmbeddingSet, Evaluator
from npair.evaluation.embedding_set import integer_labels


def clustered(n=120, classes=6, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.arange(classes), np.arange(classes), rng.integers(0, classes, n - 2 * classes)]
    return (rng.normal(size=(classes, dim))[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_integer_like_labels_pass_through():
    assert integer_labels(np.array([3, 1]))[0].tolist() == [3, 1]
    assert integer_labels(np.array([2.0, 5.0]))[0].tolist() == [2, 5]
    assert integer_labels(np.array([True, False]))[0].tolist() == [1, 0]
    assert integer_labels(np.array([3, 1]))[1] is None


def test_string_labels_are_mapped_to_integers():
    x, labels = clustered()
    names = np.array([f"class-{c}" for c in labels])
    as_int = Evaluator(metrics=["recall", "map_at_r"], ks=[1, 4])(EmbeddingSet(x, labels))
    as_str = Evaluator(metrics=["recall", "map_at_r"], ks=[1, 4])(EmbeddingSet(x, names))
    assert dict(as_int) == dict(as_str)
    test = EmbeddingSet(x, names.astype(object))
    assert test.labels.dtype == np.int64 and test.label_names[test.labels[0]] == names[0]


def test_string_labels_of_test_and_reference_share_one_numbering():
    # the reference has a class the test set lacks, so the two sorted name lists differ
    ref = EmbeddingSet(np.array([[1, 0], [0, 1], [-1, 0]], np.float32), np.array(["ant", "bee", "cat"]))
    test = EmbeddingSet(np.array([[0.9, 0.1], [-1, 0.1]], np.float32), np.array(["ant", "cat"]))
    assert Evaluator(metrics=["knn_acc"])(test, reference=ref)["knn_acc"] == 1.0
    with pytest.raises(ValueError, match="string labels .* and the other integer labels"):
        Evaluator(metrics=["knn_acc"])(test, reference=EmbeddingSet(ref.embeddings, np.array([0, 1, 2])))


def test_unusable_labels_are_refused_readably():
    with pytest.raises(ValueError, match="mix types"):
        EmbeddingSet(np.zeros((3, 2)), np.array([1, "a", 2.5], dtype=object))
    with pytest.raises(ValueError, match="non-integral values .*first: np.float64\\(nan\\) at index 1"):
        EmbeddingSet(np.zeros((2, 2)), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="embeddings must be numbers"):
        EmbeddingSet(np.array([["a", "b"]]), np.array([0]))
