"""What each ``±`` of a table means, written under it (``docs/metrics.md`` §4).

A table's ``±`` is the standard error across training seeds (one run per seed). A run's own value can
itself be a mean, over k-means seeds (NMI, F1), draws of the negatives (VRF), the 10 LFW folds or the
identification trials, with a spread of its own in ``metrics.json``; and the paper prints its own ``±``.
The wording comes from :data:`npair.evaluation.keys.SPREADS`, so the tables, the CSV and the figures
name each spread the same way.
"""

from __future__ import annotations

from typing import Any

from npair.evaluation.keys import AVERAGED_OVER, SPREADS, spread_key, spread_of, within_run_spread


def seeds_note(seeds: list[int]) -> str:
    """The first footer sentence: what the table's ``±`` is across."""
    if len(seeds) < 2:
        return f"One run per row (seed {seeds[0] if seeds else '—'}): no ± across training seeds"
    return f"Mean ± {SPREADS['training_seeds']}, seeds {list(seeds)}"


def spread_notes(metrics: list[dict[str, Any]], has_paper_se: bool = False) -> list[str]:
    """One sentence per kind of within-run spread among the table's columns, then the paper's ``±``.

    ``metrics`` are the table spec's columns (``{key, label}``). A column that is itself a within-run
    standard error (``lfw_acc_se_folds``) is named as such; a column whose runs are means over repeats
    (``nmi``) gets the name of the spread that is *not* the ``±`` shown.
    """
    notes: list[str] = []
    averaged: dict[str, list[tuple[str, str]]] = {}
    for metric in metrics:
        key, label = metric["key"], metric.get("label", metric["key"])
        spread = spread_of(key)
        if spread is not None:
            notes.append(f"{label}: each run's {SPREADS[spread[1]]} (`{key}`), averaged over runs")
            continue
        over = within_run_spread(key)
        if over is not None:
            averaged.setdefault(over, []).append((label, spread_key(key, over)))
    for over, columns in averaged.items():
        labels = ", ".join(label for label, _ in columns)
        names = ", ".join(f"`{name}`" for _, name in columns)
        notes.append(
            f"{labels}: each run's value is the mean over {AVERAGED_OVER[over]}; that spread "
            f"({names} in metrics.json, {SPREADS[over]}) is not the ± shown"
        )
    if has_paper_se:
        notes.append("↳ paper ±: the paper's own ± (it does not say over how many repeats)")
    return notes
