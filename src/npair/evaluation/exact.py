"""Exact decisions for float32 searches: float64 scores of chosen pairs, and where a
float32 comparison can be trusted.

Neighbour search multiplies float32 matrices, whose rounding depends on the BLAS kernel,
the tile shape and the position of an item in it: the same pair, or two copies of one
item, can score differently by a few units in the last place in two products
(``docs/metrics.md`` §4.8 item 1 on duplicates). Every search in this package therefore
ranks by the **float64 similarity of the prepared float32 embeddings** (products exact,
sums in double), exact ties in increasing index, and uses float32 only where that
decides the same:

* :func:`error_bound`: a per-query bound ``e`` on ``|s32 - s|`` for any float32 inner
  product of that query (the classical ``γ_D = D·u / (1 - D·u)`` bound of recursive
  summation, valid for any summation order and for FMA, doubled for safety);
* two float32 scores farther apart than ``2e`` are in the exact order; closer ones are
  re-scored with :func:`pair_scores` (:func:`order_exactly`);
* :func:`cut_is_complete`: a top-k list can be cut at k only when no item outside it
  is within ``2e`` of the k-th score.

The bound assumes IEEE float32 products (not TF32 or bfloat16):
:func:`full_precision_matmul` switches the reduced-precision modes off during a search.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

_BLOCK = 2**16  # elements per temporary block (a block that stays in cache is ~4x faster)
UNIT_ROUNDOFF = 2.0**-24  # float32
SAFETY = 2.0  # margin on the rounding-error bound


def pair_scores(
    x: np.ndarray, i: np.ndarray, j: np.ndarray, similarity: str, y: np.ndarray | None = None
) -> np.ndarray:
    """Similarity of rows ``x[i]`` and ``y[j]`` (``y`` defaults to ``x``) in float64
    (inputs already prepared, so cosine is a dot product); ``i``/``j`` broadcast, e.g.
    ``(n,)`` with ``(n, k)``. Deterministic: equal rows give equal scores.

    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    >>> pair_scores(x, np.array([0]), np.array([1]), "euclidean").tolist()
    [-5.0]
    """
    y = x if y is None else y
    i, j = np.broadcast_arrays(np.asarray(i), np.asarray(j))
    out = np.empty(i.shape, dtype=np.float64)
    flat_i, flat_j, flat_out = i.reshape(-1), j.reshape(-1), out.reshape(-1)
    step = max(1, _BLOCK // max(1, x.shape[1]))
    for s in range(0, flat_i.size, step):
        a = x[flat_i[s : s + step]].astype(np.float64)
        b = y[flat_j[s : s + step]]  # float32, widened exactly by the operations below
        if similarity == "euclidean":
            a -= b
            a *= a
            flat_out[s : s + step] = -a.sum(axis=1)
        else:
            a *= b
            flat_out[s : s + step] = a.sum(axis=1)
    return out


def error_bound(query: np.ndarray, reference_max_norm: float, similarity: str) -> np.ndarray:
    """Per query, a bound on the error of any float32 score of it against a reference
    item of norm at most ``reference_max_norm`` (float64, ``(n,)``).

    Inner product: ``|fl(q·r) - q·r| <= γ_D Σ|q_k r_k| <= γ_D ‖q‖‖r‖``. Euclidean
    (``2 q·r - ‖q‖² - ‖r‖²`` in float32): ``γ_{D+2} (‖q‖ + ‖r‖)²``.

    >>> float(error_bound(np.ones((1, 4), np.float32) / 2, 1.0, "cosine")[0]) < 1e-6
    True
    """
    d = query.shape[1] + (2 if similarity == "euclidean" else 0)
    gamma = d * UNIT_ROUNDOFF / (1 - d * UNIT_ROUNDOFF)
    norms = _norms(query)
    if similarity == "euclidean":
        return SAFETY * gamma * (norms + reference_max_norm) ** 2
    return SAFETY * gamma * norms * reference_max_norm


def _norms(x: np.ndarray) -> np.ndarray:
    """Row norms, computed in float32 and rounded up by far more than their own error
    (float64)."""
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32).astype(np.float64)) * (1 + 1e-3)


def max_norm(x: np.ndarray) -> float:
    """An upper bound on the largest row norm of ``x`` (0 for an empty array)."""
    return float(_norms(x).max(initial=0.0))


def cut_is_complete(values: np.ndarray, k: int, err: np.ndarray, exhausted: bool = False) -> np.ndarray:
    """Rows whose candidate list (``values`` float32, decreasing) may be cut at ``k``:
    a gap wider than ``2·err`` follows the k-th score somewhere inside the list, so no
    item left out can rank above it exactly. ``exhausted``: the lists hold every item.

    >>> values = np.array([[3.0, 2.0, 1.9, 1.0], [3.0, 2.0, 1.9, 1.85]])
    >>> cut_is_complete(values, 2, np.array([0.1, 0.1])).tolist()
    [True, False]
    """
    if exhausted:
        return np.ones(len(values), dtype=bool)
    v = values.astype(np.float64)
    gaps = (v[:, k - 1 : -1] - v[:, k:]) > 2 * err[:, None]
    return gaps.any(axis=1) | np.isneginf(v[:, -1])


def order_exactly(
    values: np.ndarray,
    index: np.ndarray,
    queries: np.ndarray,
    k: int,
    err: np.ndarray,
    x_query: np.ndarray,
    x_reference: np.ndarray,
    similarity: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of each candidate list in the exact order (-float64 score, index).

    ``values`` (float32, decreasing) and ``index`` are ``(b, m)`` candidate lists of the
    query rows ``queries`` of ``x_query`` against ``x_reference``, whose cut at ``k`` is
    complete (:func:`cut_is_complete`). Scores closer than ``2·err`` form a cluster whose
    members are re-scored in float64 and sorted; the clusters themselves are already in
    the exact order. Returns ``(values, index)`` of shape ``(b, k)`` (values stay the
    float32 search scores).

    >>> x = np.array([[1.0, 0.0], [0.5, 0.0], [0.5, 0.0]], np.float32)
    >>> v, i = order_exactly(np.array([[0.5, 0.5]], np.float32), np.array([[2, 1]]), np.array([0]),
    ...                      1, np.array([1e-6]), x, x, "inner_product")
    >>> i.tolist()
    [[1]]
    """
    v64 = values.astype(np.float64)
    with np.errstate(invalid="ignore"):
        near = (v64[:, :-1] - v64[:, 1:]) <= 2 * err[:, None]
    cluster = np.concatenate([np.zeros((len(values), 1), np.int64), np.cumsum(~near, axis=1)], axis=1)
    in_cluster = np.zeros(values.shape, dtype=bool)
    in_cluster[:, :-1] |= near
    in_cluster[:, 1:] |= near
    in_cluster &= cluster <= cluster[:, k - 1 : k]  # clusters up to the one holding the k-th
    rows = np.flatnonzero(in_cluster.any(axis=1))
    if rows.size == 0:
        return values[:, :k], index[:, :k]
    values, index = values.copy(), index.copy()
    sub = in_cluster[rows]
    r, c = np.nonzero(sub)
    s64 = np.zeros(sub.shape, dtype=np.float64)
    s64[r, c] = pair_scores(x_query, queries[rows][r], index[rows][r, c], similarity, y=x_reference)
    order = np.lexsort((index[rows], -s64, cluster[rows]), axis=-1)
    values[rows] = np.take_along_axis(values[rows], order, axis=1)
    index[rows] = np.take_along_axis(index[rows], order, axis=1)
    return values[:, :k], index[:, :k]


@contextlib.contextmanager
def full_precision_matmul() -> Iterator[None]:
    """Float32 matrix products in full IEEE precision (no TF32 / bfloat16) inside the block."""
    previous = torch.get_float32_matmul_precision()
    cuda_tf32 = torch.backends.cuda.matmul.allow_tf32
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
        torch.backends.cuda.matmul.allow_tf32 = cuda_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
