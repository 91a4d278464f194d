"""VRF (neg = k): verification against k negatives (Sohn 2016 Table 1, "VRF (neg=1)", "VRF (neg=71)").

The paper evaluates verification "at different numbers of negative examples" without a
formal definition (``docs/paper.md`` §8 #14, (c)). Our definition, the likely reading:

* for each test query ``q`` draw **one positive** — another test item of ``q``'s class,
  uniformly — and **k negatives** — k *distinct* other classes drawn uniformly without
  replacement, one uniformly drawn item from each;
* ``q`` is correct when the positive is strictly more similar than every negative
  (a tie with a negative counts as wrong);
* VRF = fraction of correct queries; the draw is repeated for every seed, and the
  result is the mean over seeds ± the standard error of that mean
  (``vrf_neg{k}_se_negative_draws``: across draws for one embedding, not across training runs).

Queries whose class has a single test item have no positive: they are excluded and
counted (``vrf_excluded_singletons``). ``k`` larger than the number of other classes is
an error. k = 71 matches the 72-way training batches of Table 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .exact import pair_scores
from .keys import spread_key
from .metrics import mean_and_standard_error

_BLOCK = 2**22  # elements per temporary block (bounds memory for large C or k·D)

__all__ = ["draw_vrf_trials", "pair_scores", "vrf_accuracy", "vrf_scores"]


def draw_vrf_trials(
    labels: np.ndarray, n_negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``(queries (m,), positives (m,), negatives (m, k))`` test indices.

    Queries are all items whose class has >= 2 items, in index order.
    """
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_classes = classes.size
    if n_negatives > n_classes - 1:
        raise ValueError(
            f"VRF(neg={n_negatives}) needs {n_negatives} distinct negative classes but the test set has only "
            f"{n_classes} classes ({n_classes - 1} negative classes per query)"
        )
    members = np.argsort(inverse, kind="stable")  # items grouped by class, index order within a class
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    rank_in_class[members] = np.arange(len(labels)) - offsets[inverse[members]]

    queries = np.flatnonzero(counts[inverse] >= 2)
    qc = inverse[queries]
    # positive: uniform over the other members of the class (skip the query's own slot)
    r = (rng.random(queries.size) * (counts[qc] - 1)).astype(np.int64)
    r += r >= rank_in_class[queries]
    positives = members[offsets[qc] + r]
    # negatives: k distinct classes among the C-1 others, then one uniform member each
    negative_classes = np.empty((queries.size, n_negatives), dtype=np.int64)
    step = max(1, _BLOCK // max(1, n_classes - 1))
    for s in range(0, queries.size, step):
        keys = rng.random((min(step, queries.size - s), n_classes - 1))
        if n_negatives < n_classes - 1:
            pick = np.argpartition(keys, n_negatives - 1, axis=1)[:, :n_negatives]
        else:
            pick = np.argsort(keys, axis=1)
        pick += pick >= qc[s : s + step, None]  # skip the query's own class
        negative_classes[s : s + step] = pick
    within = (rng.random(negative_classes.shape) * counts[negative_classes]).astype(np.int64)
    negatives = members[offsets[negative_classes] + within]
    return queries, positives, negatives


def vrf_accuracy(
    x: np.ndarray, labels: np.ndarray, n_negatives: int, *, seed: int, similarity: str
) -> tuple[float, int]:
    """VRF(neg = ``n_negatives``) for one draw: ``(accuracy, excluded singleton queries)``."""
    rng = np.random.default_rng([int(seed), int(n_negatives)])
    queries, positives, negatives = draw_vrf_trials(labels, n_negatives, rng)
    if queries.size == 0:
        raise ValueError("VRF: no test class has two or more items, so no query has a positive")
    correct = np.empty(queries.size, dtype=bool)
    step = max(1, _BLOCK // (max(1, x.shape[1]) * (n_negatives + 1)))
    for s in range(0, queries.size, step):
        q = queries[s : s + step]
        s_pos = pair_scores(x, q, positives[s : s + step], similarity)
        s_neg = pair_scores(x, q[:, None], negatives[s : s + step], similarity)
        correct[s : s + step] = s_pos > s_neg.max(axis=1)
    return float(correct.mean()), int(len(labels) - queries.size)


def vrf_scores(
    x: np.ndarray, labels: np.ndarray, negatives: Sequence[int], *, seeds: Sequence[int], similarity: str
) -> dict[str, float]:
    """``vrf_neg{k}`` (mean over seeds), ``vrf_neg{k}_se_negative_draws`` (standard error
    across the draws of negatives, when >= 2 seeds) and ``vrf_excluded_singletons`` for
    every k in ``negatives``."""
    out: dict[str, float] = {}
    excluded = 0
    for k in negatives:
        values = []
        for seed in seeds:
            acc, excluded = vrf_accuracy(x, labels, k, seed=seed, similarity=similarity)
            values.append(acc)
        mean, se = mean_and_standard_error(values)
        out[f"vrf_neg{k}"] = mean
        if len(values) > 1:
            out[spread_key(f"vrf_neg{k}", "negative_draws")] = se
    out["vrf_excluded_singletons"] = float(excluded)
    return out
