"""Float64 similarity of chosen pairs of (prepared, float32) embeddings."""

from __future__ import annotations

import numpy as np

_BLOCK = 2**22  # elements per temporary block


def pair_scores(x: np.ndarray, i: np.ndarray, j: np.ndarray, similarity: str) -> np.ndarray:
    """Similarity of rows ``x[i]`` and ``x[j]`` in float64 (``x`` already prepared, so
    cosine is a dot product); ``i``/``j`` broadcast, e.g. ``(n,)`` with ``(n, k)``.

    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    >>> pair_scores(x, np.array([0]), np.array([1]), "euclidean").tolist()
    [-5.0]
    """
    i, j = np.broadcast_arrays(np.asarray(i), np.asarray(j))
    out = np.empty(i.shape, dtype=np.float64)
    flat_i, flat_j, flat_out = i.reshape(-1), j.reshape(-1), out.reshape(-1)
    step = max(1, _BLOCK // max(1, x.shape[1]))
    for s in range(0, flat_i.size, step):
        a = x[flat_i[s : s + step]].astype(np.float64)
        b = x[flat_j[s : s + step]].astype(np.float64)
        if similarity == "euclidean":
            flat_out[s : s + step] = -((a - b) ** 2).sum(axis=1)
        else:
            flat_out[s : s + step] = (a * b).sum(axis=1)
    return out
