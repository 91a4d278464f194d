"""Pure metric functions: hand-computed fixtures and independent references (scikit-learn)."""

from __future__ import annotations

import doctest
import itertools
from math import comb

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import pair_confusion_matrix

from npair.evaluation import clustering, embedding_set, exact, faces, keys, knn, metrics, retrieval
from npair.evaluation.metrics import (
    average_precision_at_r_per_query,
    contingency,
    first_hit_rank,
    knn_accuracy,
    logits_accuracy,
    majority_vote,
    map_at_r,
    mean_and_standard_error,
    neighbour_matches,
    nmi,
    pair_f1,
    positives_per_query,
    r_precision,
    recall_at_k,
)


@pytest.mark.parametrize("module", [metrics, knn, clustering, exact, faces, keys, retrieval, embedding_set])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0


# ---------------------------------------------------------------- retrieval, by hand


def test_recall_at_k_hand_fixture():
    # neighbour labels of 4 queries (labels 0, 1, 2, 0), 4 neighbours each
    neighbour_labels = np.array(
        [
            [0, 1, 1, 2],  # hit at rank 1
            [2, 2, 1, 1],  # first hit at rank 3
            [0, 1, 0, 1],  # never
            [1, 0, 0, 0],  # first hit at rank 2
        ]
    )
    m = neighbour_matches(np.array([0, 1, 2, 0]), neighbour_labels)
    assert first_hit_rank(m).tolist() == [0, 2, 4, 1]
    assert recall_at_k(m, [1, 2, 3, 4]) == {1: 0.25, 2: 0.5, 3: 0.75, 4: 0.75}


def test_recall_k_beyond_neighbours_is_an_error():
    with pytest.raises(ValueError, match="K=3"):
        recall_at_k(np.ones((2, 2), bool), [3])


def test_map_at_r_and_r_precision_hand_fixture():
    m = np.array(
        [
            [True, False, True, True],  # R=3: AP = (1/1 + 2/3)/3 = 5/9; R-prec = 2/3
            [False, True, False, False],  # R=2: AP = (1/2)/2 = 1/4;      R-prec = 1/2
            [False, False, False, True],  # R=1: AP = 0;                  R-prec = 0
        ]
    )
    r = np.array([3, 2, 1])
    np.testing.assert_allclose(average_precision_at_r_per_query(m, r), [5 / 9, 1 / 4, 0])
    assert map_at_r(m, r) == pytest.approx((5 / 9 + 1 / 4 + 0) / 3)
    assert r_precision(m, r) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_map_at_r_rejects_r_beyond_search():
    with pytest.raises(ValueError, match="R=3"):
        map_at_r(np.ones((1, 2), bool), np.array([3]))
    with pytest.raises(ValueError, match="R must be >= 1"):
        map_at_r(np.ones((1, 2), bool), np.array([0]))


def test_positives_per_query():
    assert positives_per_query(np.array([0, 1, 1, 2]), np.array([0, 1, 1, 2]), True).tolist() == [0, 1, 1, 0]
    assert positives_per_query(np.array([5, 1]), np.array([1, 1, 3]), False).tolist() == [0, 2]


# ---------------------------------------------------------------- classification, by hand


def test_majority_vote_tie_break_prefers_nearest_tied_class():
    labels = np.array(
        [
            [4, 7, 7, 4, 9],  # 4 and 7 tie at 2 votes; 4 appears first -> 4
            [9, 7, 7, 4, 4],  # 7 and 4 tie; 7 appears first -> 7
            [1, 2, 3, 4, 5],  # all tie -> nearest, 1
            [2, 3, 3, 3, 2],  # 3 wins 3:2
        ]
    )
    assert majority_vote(labels, 5).tolist() == [4, 7, 1, 3]
    assert majority_vote(labels, 1).tolist() == [4, 9, 1, 2]
    assert majority_vote(labels, 3).tolist() == [7, 7, 1, 3]


def test_knn_accuracy_and_logits_accuracy():
    assert knn_accuracy(np.array([[1, 2, 2], [1, 1, 2], [3, 3, 3]]), np.array([2, 2, 3]), 3) == pytest.approx(
        2 / 3
    )
    assert logits_accuracy(
        np.array([[0.0, 1.0], [1.0, 1.0], [3.0, -1.0]]), np.array([1, 1, 0])
    ) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- clustering, by hand and vs scikit-learn


def test_contingency_and_f1_by_hand():
    classes = np.array([0, 0, 0, 1, 1, 2])
    clusters = np.array([5, 5, 6, 6, 6, 6])
    assert contingency(classes, clusters).tolist() == [[2, 1], [0, 2], [0, 1]]
    # TP = C(2,2)+C(2,2) = 2; class pairs = C(3,2)+C(2,2) = 4; cluster pairs = C(2,2)+C(4,2) = 7
    assert pair_f1(classes, clusters) == pytest.approx(2 * 2 / (4 + 7))


def test_nmi_by_hand():
    # classes {0,0,1,1}, clusters {0,0,0,1}: H(C)=ln2, H(K)=-(3/4 ln 3/4 + 1/4 ln 1/4),
    # I = 1/2 ln(1/2 / (1/2·3/4)) + 1/4 ln(1/4 / (1/2·3/4)) + 1/4 ln(1/4 / (1/2·1/4))
    h_c = np.log(2)
    h_k = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    i = 0.5 * np.log(0.5 / 0.375) + 0.25 * np.log(0.25 / 0.375) + 0.25 * np.log(0.25 / 0.125)
    assert nmi(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == pytest.approx(i / ((h_c + h_k) / 2))
    assert nmi(np.array([3, 3]), np.array([1, 1])) == 1.0


def _sklearn_pair_f1(a, b):
    (_, m01), (m10, m11) = pair_confusion_matrix(a, b)
    return 2 * m11 / (2 * m11 + m01 + m10)


def _song_f1(classes, clusters):
    """Song et al.'s P/R formulation from raw loops (independent of the contingency code)."""
    tp = sum(
        comb(int(np.sum((classes == c) & (clusters == k))), 2) for c in set(classes) for k in set(clusters)
    )
    pairs_clusters = sum(comb(int(np.sum(clusters == k)), 2) for k in set(clusters))
    pairs_classes = sum(comb(int(np.sum(classes == c)), 2) for c in set(classes))
    p, r = tp / pairs_clusters, tp / pairs_classes
    return 2 * p * r / (p + r)


@pytest.mark.parametrize("seed", range(5))
def test_nmi_and_f1_match_references_on_random_assignments(seed):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 12, 300)
    clusters = np.where(rng.random(300) < 0.6, classes, rng.integers(0, 15, 300))
    assert nmi(classes, clusters) == pytest.approx(normalized_mutual_info_score(classes, clusters), abs=1e-12)
    f1 = pair_f1(classes, clusters)
    assert f1 == pytest.approx(_sklearn_pair_f1(classes, clusters), abs=1e-12)
    assert f1 == pytest.approx(_song_f1(classes, clusters), abs=1e-12)
    # symmetric, and invariant to any relabelling of either side
    assert pair_f1(clusters, classes) == pytest.approx(f1, abs=1e-12)
    perm_classes = rng.permutation(100)[classes]
    perm_clusters = rng.permutation(100)[clusters] + 1000
    assert pair_f1(perm_classes, perm_clusters) == pytest.approx(f1, abs=1e-12)
    assert nmi(perm_classes, perm_clusters) == pytest.approx(nmi(classes, clusters), abs=1e-12)


def test_f1_is_one_only_for_identical_partitions():
    classes = np.array([0, 0, 1, 1, 2, 2])
    assert pair_f1(classes, classes + 7) == 1.0
    for clusters in itertools.islice(itertools.product(range(3), repeat=6), 0, 729, 37):
        clusters = np.array(clusters)
        same_partition = (
            len(set(zip(classes, clusters, strict=True))) == len(set(classes)) == len(set(clusters))
        )
        assert (pair_f1(classes, clusters) == pytest.approx(1.0)) == same_partition


def test_mean_and_standard_error():
    mean, se = mean_and_standard_error([0.5, 0.7, 0.9, 0.3])
    assert mean == pytest.approx(0.6)
    assert se == pytest.approx(np.std([0.5, 0.7, 0.9, 0.3], ddof=1) / 2)
    assert np.isnan(mean_and_standard_error([1.0])[1])


def test_clustering_metrics_never_build_a_dense_contingency_table():
    """SOP has 11,316 classes and clusters: a dense table would be 1 GB (int64)."""
    import tracemalloc

    classes = np.arange(20_000) // 2
    clusters = np.arange(20_000) % 7_000  # dense: 10,000 × 7,000 × 8 bytes = 560 MB
    tracemalloc.start()
    f1, score = pair_f1(classes, clusters), nmi(classes, clusters)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20
    assert f1 == pytest.approx(_sklearn_pair_f1(classes, clusters))
    assert score == pytest.approx(normalized_mutual_info_score(classes, clusters))
