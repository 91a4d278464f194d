"""Result keys: what each ``±`` is spread across.

Three kinds of ``±`` appear in this project, and the names keep them apart
(``docs/metrics.md`` §4):

* across **training seeds** — the tables' ``mean ± standard error`` over runs;
* across **k-means seeds** of one embedding — ``nmi_se_kmeans_seeds``, ``f1_se_kmeans_seeds``;
* across **negative draws** of one embedding — ``vrf_neg{k}_se_negative_draws``;

and two protocol repeats of one embedding: LFW's 10 **folds** (``lfw_acc_se_folds``) and
the identification **trials** (``rank1_se_trials``, ``dir@far=1%_se_trials``).

Earlier results named all of them ``<metric>_se``; :func:`canonical_key` and
:func:`read_metric` accept those names, so old ``metrics.json`` files and table specs
still read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SPREADS: dict[str, str] = {
    "training_seeds": "standard error over training seeds (one run per seed)",
    "kmeans_seeds": "standard error over k-means seeds of one embedding",
    "negative_draws": "standard error over draws of the negatives, one embedding",
    "folds": "standard error over the 10 LFW folds, one embedding",
    "trials": "standard error over identification trials (gallery/probe lists), one embedding",
}

SPREAD_SHORT: dict[str, str] = {  # the same, as figure labels and legends say it
    "training_seeds": "s.e. across training seeds",
    "kmeans_seeds": "s.e. across k-means seeds",
    "negative_draws": "s.e. across draws of the negatives",
    "folds": "s.e. across the 10 LFW folds",
    "trials": "s.e. across identification trials",
}

AVERAGED_OVER: dict[str, str] = {  # what one run's value is the mean over, for each within-run spread
    "kmeans_seeds": "k-means seeds (eval.kmeans_seeds)",
    "negative_draws": "draws of the negatives (eval.vrf_seeds)",
    "folds": "the 10 LFW folds",
    "trials": "the identification trials (gallery/probe lists)",
}

_OLD_SPREAD = [  # legacy "<metric>_se" -> what it was across
    (re.compile(r"^(nmi|f1)_se$"), "kmeans_seeds"),
    (re.compile(r"^(vrf_neg\d+)_se$"), "negative_draws"),
    (re.compile(r"^(lfw_acc)_se$"), "folds"),
    (re.compile(r"^(rank1|dir@far=[^_]+)_se$"), "trials"),
]


def spread_key(metric: str, over: str) -> str:
    """The result key of ``metric``'s standard error across ``over`` (a key of :data:`SPREADS`).

    >>> spread_key("nmi", "kmeans_seeds")
    'nmi_se_kmeans_seeds'
    """
    if over not in SPREADS:
        raise ValueError(f"unknown spread {over!r}; one of {sorted(SPREADS)}")
    return f"{metric}_se_{over}"


def spread_of(key: str) -> tuple[str, str] | None:
    """``(metric, over)`` for a standard-error key (new or legacy name), else None.

    >>> spread_of("vrf_neg71_se_negative_draws"), spread_of("f1_se"), spread_of("recall@1")
    (('vrf_neg71', 'negative_draws'), ('f1', 'kmeans_seeds'), None)
    """
    for over in SPREADS:
        suffix = f"_se_{over}"
        if key.endswith(suffix):
            return key[: -len(suffix)], over
    for pattern, over in _OLD_SPREAD:
        match = pattern.match(key)
        if match:
            return match.group(1), over
    return None


def within_run_spread(metric: str) -> str | None:
    """What one run's ``metric`` is the mean over (a key of :data:`SPREADS`), None when it is one measurement.

    >>> within_run_spread("nmi"), within_run_spread("vrf_neg9"), within_run_spread("recall@1")
    ('kmeans_seeds', 'negative_draws', None)
    """
    spread = spread_of(f"{metric}_se")  # the legacy names are exactly the metrics that have one
    return None if spread is None or spread[0] != metric else spread[1]


def canonical_key(key: str) -> str:
    """The current name of a result key (legacy ``<metric>_se`` names are renamed).

    >>> canonical_key("lfw_acc_se"), canonical_key("dir@far=1%_se"), canonical_key("nmi")
    ('lfw_acc_se_folds', 'dir@far=1%_se_trials', 'nmi')
    """
    spread = spread_of(key)
    return key if spread is None else spread_key(*spread)


def read_metric(metrics: Mapping[str, float], key: str) -> float | None:
    """``metrics[key]`` under its current or its legacy name (None when absent).

    >>> read_metric({"nmi_se": 0.01}, "nmi_se_kmeans_seeds")
    0.01
    >>> read_metric({"nmi_se_kmeans_seeds": 0.02}, "nmi_se")
    0.02
    """
    wanted = canonical_key(key)
    for name, value in metrics.items():
        if canonical_key(name) == wanted:
            return value
    return None
