"""Result keys name what each ± is across; legacy ``<metric>_se`` names still read."""

from __future__ import annotations

import numpy as np
import pytest

from npair.evaluation import EmbeddingSet, Evaluator
from npair.evaluation.keys import (
    AVERAGED_OVER,
    SPREAD_SHORT,
    SPREADS,
    canonical_key,
    read_metric,
    spread_key,
    spread_of,
    within_run_spread,
)


def test_every_standard_error_the_evaluator_emits_names_its_spread():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 10)
    x = (rng.normal(size=(12, 8))[labels] + rng.normal(size=(120, 8))).astype(np.float32)
    i, j = rng.integers(0, 120, (2, 100))
    galleries = [np.arange(0, 60, 10), np.arange(1, 60, 10)]  # one image each of classes 0-5
    extras = {
        "pairs": np.stack([i, j, labels[i] == labels[j], np.arange(100) % 10], 1).astype(np.int64),
        "gallery": galleries,
        "probes": [np.setdiff1d(np.arange(120), g) for g in galleries],
    }
    out = Evaluator(
        metrics=["nmi", "f1", "vrf", "lfw_pairs", "closed_set_rank1", "open_set_dir"],
        kmeans_seeds=2, vrf_seeds=2, vrf_negatives=[1, 3],
    )(EmbeddingSet(x, labels), extras=extras)  # fmt: skip
    se_keys = {k for k in out if "_se" in k}
    assert se_keys == {
        "nmi_se_kmeans_seeds", "f1_se_kmeans_seeds", "vrf_neg1_se_negative_draws",
        "vrf_neg3_se_negative_draws", "lfw_acc_se_folds", "rank1_se_trials", "dir@far=1%_se_trials",
    }  # fmt: skip
    assert all(spread_of(k) is not None and spread_of(k)[1] in SPREADS for k in se_keys)
    assert not any(k.endswith("_se") for k in out)
    averaged = {spread_key(m, over) for m in out if (over := within_run_spread(m)) is not None}
    assert averaged == se_keys  # the table footers name exactly the spreads the runs record
    assert set(SPREAD_SHORT) == set(SPREADS) and set(AVERAGED_OVER) == set(SPREADS) - {"training_seeds"}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("nmi_se", "nmi_se_kmeans_seeds"),
        ("f1_se", "f1_se_kmeans_seeds"),
        ("vrf_neg71_se", "vrf_neg71_se_negative_draws"),
        ("lfw_acc_se", "lfw_acc_se_folds"),
        ("rank1_se", "rank1_se_trials"),
        ("dir@far=1%_se", "dir@far=1%_se_trials"),
    ],
)
def test_legacy_names_still_read(old, new):
    assert canonical_key(old) == new
    assert read_metric({old: 0.5}, new) == 0.5
    assert read_metric({new: 0.25}, old) == 0.25
    assert read_metric({"nmi": 0.9}, "recall@1") is None


def test_spread_key_refuses_unknown_spreads():
    assert spread_key("recall@1", "training_seeds") == "recall@1_se_training_seeds"
    with pytest.raises(ValueError, match="unknown spread 'runs'"):
        spread_key("nmi", "runs")
