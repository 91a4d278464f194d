"""Mean ± standard error: against scipy.stats.sem on random inputs, and its undefined cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from npair.evaluation.metrics import mean_and_standard_error
from npair.stats import mean_se


@pytest.mark.parametrize("n", [2, 3, 10, 57])
def test_mean_and_standard_error_match_scipy(n: int) -> None:
    values = np.random.default_rng(n).normal(0.6, 0.2, size=n)
    mean, se = mean_se(values.tolist())
    assert isinstance(mean, float) and isinstance(se, float)
    assert mean == pytest.approx(float(np.mean(values)), rel=1e-15)
    assert se == pytest.approx(float(stats.sem(values, ddof=1)), rel=1e-12)


def test_along_an_axis_each_column_is_its_own_sample() -> None:
    values = np.random.default_rng(0).uniform(size=(4, 7))  # 4 runs × 7 logged steps
    mean, se = mean_se(values, axis=0)
    assert mean.shape == se.shape == (7,)
    np.testing.assert_allclose(mean, values.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(se, stats.sem(values, axis=0, ddof=1), rtol=1e-12)
    one_mean, one_se = mean_se(values[:1], axis=0)
    np.testing.assert_array_equal(one_mean, values[0])
    assert one_se is None


def test_what_is_undefined_is_none() -> None:
    assert mean_se([0.4]) == (0.4, None)  # one seed: no standard error
    assert mean_se([]) == (None, None)  # no seed: no mean either
    mean, se = mean_se([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and se == pytest.approx(0.1 / np.sqrt(3))  # sample std 0.1 over √3


def test_the_evaluator_form_is_the_same_numbers_as_floats() -> None:
    values = [0.5, 0.7, 0.9, 0.3]
    assert mean_and_standard_error(values) == mean_se(values)
    assert np.isnan(mean_and_standard_error([1.0])[1])  # a flat float dict: NaN, not None
    with pytest.raises(ValueError, match="no values to average"):
        mean_and_standard_error([])
