"""VRF(neg = k): draws and known answers on small constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from npair.evaluation import EmbeddingSet, Evaluator
from npair.evaluation.verification import draw_vrf_trials, vrf_accuracy, vrf_scores

# 1-D points, Euclidean. Class A = {0, 3}, B = {1, 1}, C = {9, 9}.
# B and C queries: positive at distance 0 -> always correct.
# A queries: positive at distance 3; a B negative is closer (1 or 2) -> wrong;
#            a C negative (6 or 9) -> correct.
X = np.array([[0.0], [3.0], [1.0], [1.0], [9.0], [9.0]], dtype=np.float32)
LABELS = np.array([0, 0, 1, 1, 2, 2])


def test_vrf_all_other_classes_known_answer():
    # neg = 2 = every other class: both A queries see B -> 4 of 6 correct, whatever the seed
    for seed in range(5):
        acc, excluded = vrf_accuracy(X, LABELS, 2, seed=seed, similarity="euclidean")
        assert acc == pytest.approx(4 / 6) and excluded == 0


def test_vrf_one_negative_known_answer():
    # neg = 1: an A query is correct exactly when its negative class is C (probability 1/2)
    values = [vrf_accuracy(X, LABELS, 1, seed=s, similarity="euclidean")[0] for s in range(400)]
    assert set(np.round(values, 6)) <= {round(4 / 6, 6), round(5 / 6, 6), 1.0}
    assert np.mean(values) == pytest.approx(5 / 6, abs=0.02)
    out = vrf_scores(X, LABELS, [1, 2], seeds=range(400), similarity="euclidean")
    assert out["vrf_neg1"] == pytest.approx(np.mean(values))
    assert out["vrf_neg1_se_negative_draws"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(400))
    assert out["vrf_neg2"] == pytest.approx(4 / 6) and out["vrf_neg2_se_negative_draws"] == pytest.approx(
        0.0, abs=1e-12
    )


def test_ties_with_a_negative_count_as_wrong():
    # query 0: its positive (1.0) ties with both class-1 items
    x = np.array([[0.0], [1.0], [1.0], [1.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    acc, _ = vrf_accuracy(x, labels, 1, seed=0, similarity="euclidean")
    # query 0 ties (wrong); query 1 (positive 1 away, negatives at 0) wrong;
    # queries 2, 3 (positive at 0, negatives 1 away) correct
    assert acc == pytest.approx(2 / 4)


def test_draws_respect_the_protocol():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, 500)
    labels[:3] = [100, 101, 102]  # singletons: no positive
    q, p, n = draw_vrf_trials(labels, 5, np.random.default_rng(1))
    assert len(q) == 497 and not np.isin(q, [0, 1, 2]).any()
    assert (labels[p] == labels[q]).all() and (p != q).all()
    neg_classes = labels[n]
    assert (neg_classes != labels[q][:, None]).all()
    assert all(len(set(row)) == 5 for row in neg_classes.tolist())  # 5 distinct classes
    # positives uniform over the OTHER members of the class: class {0, 1, 2, 3} queried from item 0
    small = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    drawn = [draw_vrf_trials(small, 1, np.random.default_rng(s))[1][0] for s in range(900)]
    assert set(drawn) == {1, 2, 3}
    assert np.bincount(drawn, minlength=4)[1:] == pytest.approx([300, 300, 300], abs=60)


def test_evaluator_vrf_counts_singletons_and_rejects_large_k():
    x = np.concatenate([X, [[50.0]]]).astype(np.float32)
    labels = np.concatenate([LABELS, [7]])
    out = Evaluator(metrics=["vrf"], vrf_negatives=[2], vrf_seeds=3, similarity="euclidean")(
        EmbeddingSet(x, labels)
    )
    assert out["vrf_excluded_singletons"] == 1.0
    # the singleton class is a possible negative class now: 3 other classes for A, the 50 never beats anything
    assert 4 / 6 <= out["vrf_neg2"] <= 1.0
    with pytest.raises(ValueError, match="VRF\\(neg=4\\).*only 4 classes"):
        Evaluator(metrics=["vrf"], vrf_negatives=[4], similarity="euclidean")(EmbeddingSet(x, labels))
