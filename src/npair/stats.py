"""Mean ± standard error over repeats (seeds, folds, k-means restarts, draws): the one definition that the
tables, the training-curve figures and the evaluator's ``*_se`` metrics use."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def mean_se(values: ArrayLike, axis: int | None = None) -> tuple[Any, Any]:
    """Mean and standard error of the mean, ``s / √n`` with ``s`` the sample standard deviation (ddof = 1).

    Over all ``values`` (``axis=None``: floats) or along ``axis`` of an array (arrays). What is undefined
    is None: the mean of no values, the standard error of fewer than two.

    >>> mean_se([1.0, 2.0, 3.0])
    (2.0, 0.5773502691896258)
    >>> mean_se([0.4]), mean_se([])
    ((0.4, None), (None, None))
    """
    arr = np.asarray(values, dtype=np.float64)
    n = arr.size if axis is None else arr.shape[axis]
    if n == 0:
        return None, None
    mean = arr.mean(axis=axis)
    se = arr.std(axis=axis, ddof=1) / math.sqrt(n) if n > 1 else None
    if axis is None:
        return float(mean), None if se is None else float(se)
    return mean, se
