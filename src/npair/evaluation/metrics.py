"""Evaluation metrics as pure functions over arrays.

Retrieval metrics take a boolean ``matches`` matrix: ``matches[q, j]`` is True when the
``j``-th nearest neighbour of query ``q`` (most similar first, the query itself already
excluded by index, see :mod:`npair.evaluation.knn`) has the query's label. They return
either a per-query array (``*_per_query``, so the evaluator can accumulate over query
chunks) or its mean.

Clustering metrics take two label vectors (classes, clusters) and work from their
contingency counts.

Definitions follow ``docs/metrics.md`` §4.0: Recall@K as in Song et al.
(CVPR 2016) — at least one same-class item among the K nearest; MAP@R and R-precision as
in pytorch-metric-learning; NMI with the arithmetic normalisation ``2 I / (H_1 + H_2)``
(scikit-learn's default); F1 the pair-counting clustering F1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from npair.stats import mean_se

# --------------------------------------------------------------------------------------
# neighbour-list helpers


def neighbour_matches(query_labels: np.ndarray, neighbour_labels: np.ndarray) -> np.ndarray:
    """``(n, k)`` bool: does the ``j``-th neighbour of query ``q`` share its label?

    >>> neighbour_matches(np.array([0, 1]), np.array([[0, 1], [0, 0]])).tolist()
    [[True, False], [False, False]]
    """
    return np.asarray(neighbour_labels) == np.asarray(query_labels)[:, None]


def positives_per_query(
    query_labels: np.ndarray, reference_labels: np.ndarray, reference_includes_query: bool
) -> np.ndarray:
    """Number of *other* reference items with the query's label (R in MAP@R).

    ``reference_includes_query``: the query is itself in the reference set and does not
    count as its own positive.

    >>> positives_per_query(np.array([0, 0, 1]), np.array([0, 0, 1]), True).tolist()
    [1, 1, 0]
    """
    classes, counts = np.unique(np.asarray(reference_labels), return_counts=True)
    if classes.size == 0:
        raise ValueError("the reference set is empty")
    q = np.asarray(query_labels)
    pos = np.minimum(np.searchsorted(classes, q), classes.size - 1)
    found = classes[pos] == q
    n = np.where(found, counts[pos], 0)
    return (n - int(reference_includes_query) * found).astype(np.int64)


def first_hit_rank(matches: np.ndarray) -> np.ndarray:
    """0-based rank of the first same-label neighbour; ``k`` (= number of columns) if none.

    >>> first_hit_rank(np.array([[False, True, True], [False, False, False]])).tolist()
    [1, 3]
    """
    m = np.asarray(matches, dtype=bool)
    hit = m.any(axis=1)
    return np.where(hit, m.argmax(axis=1), m.shape[1]).astype(np.int64)


def recall_at_k_per_query(matches: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """``(n, len(ks))`` bool: at least one same-label item among the first K neighbours.

    >>> recall_at_k_per_query(np.array([[False, True], [False, False]]), [1, 2]).tolist()
    [[False, True], [False, False]]
    """
    m = np.asarray(matches, dtype=bool)
    _check_ks(ks, m.shape[1])
    rank = first_hit_rank(m)
    return rank[:, None] < np.asarray(ks)[None, :]


def recall_at_k(matches: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K (Song et al. 2016): fraction of queries with >= 1 same-label item in the top K.

    Not information-retrieval recall: it is CMC@K / "Rank-K" (PML #283). Queries without
    any positive in the reference set should be removed by the caller (the evaluator
    excludes and counts them).

    >>> m = np.array([[True, False, False],    # hit at rank 1
    ...               [False, False, True],    # hit at rank 3
    ...               [False, False, False]])  # no hit in the top 3
    >>> recall_at_k(m, [1, 2, 3])
    {1: 0.3333333333333333, 2: 0.3333333333333333, 3: 0.6666666666666666}
    """
    per_query = recall_at_k_per_query(matches, ks)
    return {int(k): float(v) for k, v in zip(ks, per_query.mean(axis=0), strict=True)}


def _check_ks(ks: Iterable[int], available: int) -> None:
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"K={k!r} must be a positive integer")
        if k > available:
            raise ValueError(f"K={k} exceeds the {available} neighbours available")


def average_precision_at_r_per_query(matches: np.ndarray, r: np.ndarray) -> np.ndarray:
    """AP@R for each query (PML ``mean_average_precision_at_r``).

    ``r[q]`` = number of relevant references for query ``q`` (>= 1), and ``matches`` must
    have at least ``max(r)`` columns. ``AP@R = (1/R) Σ_{i<=R} P(i)·rel(i)`` with P(i) the
    precision among the first i neighbours.

    >>> m = np.array([[True, False, True], [False, True, False]])
    >>> average_precision_at_r_per_query(m, np.array([3, 2])).round(4).tolist()
    [0.5556, 0.25]

    (Row 1: (1/1 + 2/3) / 3; row 2: (1/2) / 2.)
    """
    m, r = _check_r(matches, r)
    cols = np.arange(1, m.shape[1] + 1)
    relevant = m & (cols[None, :] <= r[:, None])
    precision = np.cumsum(relevant, axis=1) / cols[None, :]
    return (precision * relevant).sum(axis=1) / r


def r_precision_per_query(matches: np.ndarray, r: np.ndarray) -> np.ndarray:
    """R-precision for each query: same-label items among the first R neighbours, / R.

    >>> m = np.array([[True, False, True], [False, True, False]])
    >>> r_precision_per_query(m, np.array([3, 2])).tolist()
    [0.6666666666666666, 0.5]
    """
    m, r = _check_r(matches, r)
    cols = np.arange(1, m.shape[1] + 1)
    return (m & (cols[None, :] <= r[:, None])).sum(axis=1) / r


def map_at_r(matches: np.ndarray, r: np.ndarray) -> float:
    """Mean of :func:`average_precision_at_r_per_query` over queries.

    >>> map_at_r(np.array([[True, False], [False, True]]), np.array([1, 1]))
    0.5
    """
    return float(average_precision_at_r_per_query(matches, r).mean())


def r_precision(matches: np.ndarray, r: np.ndarray) -> float:
    """Mean of :func:`r_precision_per_query` over queries.

    >>> r_precision(np.array([[True, True], [False, True]]), np.array([2, 2]))
    0.75
    """
    return float(r_precision_per_query(matches, r).mean())


def _check_r(matches: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(matches, dtype=bool)
    r = np.asarray(r, dtype=np.int64)
    if r.shape != (m.shape[0],):
        raise ValueError(f"r has shape {r.shape}, expected ({m.shape[0]},) (one R per query)")
    if len(r) and r.min() < 1:
        raise ValueError(
            f"R must be >= 1 for every query (got {r.min()}): remove queries without positives first"
        )
    if len(r) and r.max() > m.shape[1]:
        raise ValueError(f"R={r.max()} exceeds the {m.shape[1]} neighbours searched; search at least max(R)")
    return m, r


# --------------------------------------------------------------------------------------
# classification


def majority_vote(neighbour_labels: np.ndarray, k: int) -> np.ndarray:
    """kNN prediction: the most frequent label among the first ``k`` neighbours.

    Tie-break (deterministic): among the labels with the most votes, the one whose
    nearest occurrence ranks highest (i.e. the tied class that contains the closest
    neighbour). For ``k = 1`` this is the 1-NN label.

    >>> majority_vote(np.array([[3, 5, 5], [3, 5, 7], [3, 5, 3]]), 3).tolist()
    [5, 3, 3]
    """
    labels = np.asarray(neighbour_labels)
    if labels.ndim != 2 or labels.shape[1] < k:
        raise ValueError(f"majority_vote needs >= k={k} neighbour labels per row, got shape {labels.shape}")
    labels = labels[:, :k]
    out = np.empty(len(labels), dtype=labels.dtype)
    step = max(1, 2**24 // (k * k))  # bound the (rows, k, k) comparison tensor
    position = np.arange(k)
    for s in range(0, len(labels), step):
        block = labels[s : s + step]
        votes = (block[:, :, None] == block[:, None, :]).sum(axis=2)  # votes for the label at each position
        score = votes * (k + 1) - position[None, :]  # more votes first, then earlier position
        out[s : s + step] = block[np.arange(len(block)), score.argmax(axis=1)]
    return out


def knn_accuracy(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Fraction of queries whose :func:`majority_vote` over ``k`` neighbours is correct.

    >>> knn_accuracy(np.array([[1, 2, 2], [1, 1, 2]]), np.array([2, 2]), 3)
    0.5
    """
    return float((majority_vote(neighbour_labels, k) == np.asarray(query_labels)).mean())


def logits_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Classifier accuracy from logits (softmax model's own prediction, † in Sohn 2016 Table 1).

    ``argmax`` ties resolve to the lowest class index.

    >>> logits_accuracy(np.array([[0.1, 0.9], [2.0, 1.0]]), np.array([1, 1]))
    0.5
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits shape {logits.shape} does not match {len(labels)} labels")
    return float((logits.argmax(axis=1) == np.asarray(labels)).mean())


# --------------------------------------------------------------------------------------
# clustering


def contingency_cells(classes: np.ndarray, clusters: np.ndarray):
    """Sparse contingency: ``(row, col, n_cj)`` of the non-zero cells, plus the class sizes
    (row sums) and cluster sizes (column sums). Memory O(n), never classes × clusters.

    >>> r, c, n, rows, cols = contingency_cells(np.array([0, 0, 1]), np.array([5, 7, 7]))
    >>> r.tolist(), c.tolist(), n.tolist(), rows.tolist(), cols.tolist()
    ([0, 0, 1], [0, 1, 1], [1, 1, 1], [2, 1], [1, 2])
    """
    a = np.asarray(classes)
    b = np.asarray(clusters)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"label vectors must be 1-D and equally long, got {a.shape} and {b.shape}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    n_cols = int(ib.max(initial=-1)) + 1
    cells, counts = np.unique(ia.astype(np.int64) * n_cols + ib, return_counts=True)
    return cells // max(n_cols, 1), cells % max(n_cols, 1), counts, np.bincount(ia), np.bincount(ib)


def contingency(classes: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Dense ``(n_classes, n_clusters)`` count matrix ``n_cj`` (labels are re-indexed).

    >>> contingency(np.array([0, 0, 1]), np.array([5, 7, 7])).tolist()
    [[1, 1], [0, 1]]
    """
    r, c, n, rows, cols = contingency_cells(classes, clusters)
    table = np.zeros((rows.size, cols.size), dtype=np.int64)
    table[r, c] = n
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(classes: np.ndarray, clusters: np.ndarray) -> float:
    """Normalised mutual information, arithmetic normalisation: ``I / ((H(C) + H(Ω)) / 2)``.

    Same value as ``sklearn.metrics.normalized_mutual_info_score`` (default
    ``average_method="arithmetic"``) and Song et al.'s ``2 I / (H1 + H2)``. Two single-label
    vectors score 1 (sklearn's convention). Symmetric and invariant to relabelling.
    Computed from the non-zero contingency cells only (SOP: 11,316 × 11,316 would be 1 GB dense).

    >>> nmi(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
    1.0
    >>> round(nmi(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])), 6)
    0.0
    >>> round(nmi(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])), 4)  # I=0.2158, H=(0.6931+0.5623)/2
    0.3437
    """
    r, c, cell, rows, cols = contingency_cells(classes, clusters)
    if (rows.size == cols.size == 1) or rows.size == 0:
        return 1.0
    n = float(rows.sum())
    mi = float((cell / n * np.log(cell * n / (rows[r].astype(np.float64) * cols[c]))).sum())
    mi = max(mi, 0.0)
    normaliser = (_entropy(rows) + _entropy(cols)) / 2
    return float(mi / max(normaliser, np.finfo(np.float64).eps))


def _pairs(counts: np.ndarray) -> float:
    c = counts.astype(np.float64)
    return float((c * (c - 1) / 2).sum())


def pair_f1(classes: np.ndarray, clusters: np.ndarray) -> float:
    """Pair-counting clustering F1 (Song et al. 2016; ``docs/metrics.md`` §4.0).

    ``TP = Σ C(n_cj, 2)``, ``F1 = 2·TP / (Σ_c C(n_c, 2) + Σ_j C(n_j, 2))`` — the harmonic
    mean of pair precision and recall; equal to sklearn's ``pair_confusion_matrix``
    formula ``2·M11 / (2·M11 + M01 + M10)``. Symmetric in (classes, clusters),
    invariant to relabelling. Defined as 1 when there are no same-class and no
    same-cluster pairs (all singletons on both sides).

    >>> pair_f1(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]))  # TP=1, class pairs 2, cluster pairs 3
    0.4
    >>> pair_f1(np.array([0, 0, 1]), np.array([4, 4, 9]))
    1.0
    """
    _, _, cell, rows, cols = contingency_cells(classes, clusters)
    tp = _pairs(cell)
    denominator = _pairs(rows) + _pairs(cols)
    if denominator == 0:
        return 1.0
    return 2.0 * tp / denominator


# --------------------------------------------------------------------------------------
# repeats


def mean_and_standard_error(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (:func:`npair.stats.mean_se`) as floats: NaN error for n = 1,
    so every evaluator result stays a float.

    >>> mean_and_standard_error([1.0, 2.0, 3.0])
    (2.0, 0.5773502691896258)
    """
    mean, se = mean_se(values)
    if mean is None:
        raise ValueError("no values to average")
    return mean, float("nan") if se is None else se
