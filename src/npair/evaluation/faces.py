"""Face protocols on LFW (Sohn 2016 LFW table: VRF, closed-set Rank-1, open-set DIR@FAR=1 %).

Inputs arrive through the evaluator's ``extras`` dict (the dataset builder puts them in
``DatasetSplits.extras``). **Format** — all indices are 0-based positions in the *test*
split (the order of ``EmbeddingSet.embeddings``):

``extras["pairs"]``
    int array ``(P, 4)``, one row per pair: ``(i, j, same, fold)``; ``same`` is 1 for a
    matched pair and 0 for a mismatched one, ``fold`` in ``0..F-1``. LFW View 2
    (``pairs.txt``): F = 10 folds of 300 matched + 300 mismatched pairs. ``same`` must
    agree with the test labels (checked).
``extras["gallery"]``, ``extras["probes"]``
    either one 1-D int array each (a single trial) or equally long lists of 1-D int
    arrays (one per trial; BLUFR has 10). Gallery and probes of a trial must be disjoint
    (checked). A probe whose label occurs in the trial's gallery is *genuine* (mated),
    otherwise an *impostor* (non-mated).

Protocols (registered in :data:`FACE_PROTOCOLS`; add one with :func:`register`):

``lfw_pairs`` → ``lfw_acc``, ``lfw_acc_se_folds``, ``lfw_threshold``
    10-fold pair verification: for each fold, the threshold maximising accuracy on the
    **other** folds' pairs (never the scored fold), then accuracy on the fold; mean ±
    standard error over folds. Among equally good thresholds the lowest is taken;
    candidate thresholds are midpoints between consecutive distinct training scores (and
    ±inf); a pair is "same" when its similarity is > the threshold. ``lfw_threshold`` is
    the mean of the finite per-fold thresholds; folds whose best threshold is ±inf (every
    pair called "same", or every pair "different") are counted in
    ``lfw_threshold_infinite_folds`` (and logged), never averaged in.
``closed_set_rank1`` → ``rank1``
    closed-set identification: fraction of genuine probes whose most similar gallery
    image has their identity (impostor probes are not used).
``open_set_dir`` → ``dir@far=1%`` (for ``far=0.01``)
    open-set detection and identification rate at rank 1, exactly BLUFR's
    ``OpenSetROC`` (Liao et al. 2014, ``docs/datasets.md`` §5): with ``N_imp`` impostor
    probes, ``m = round(far · N_imp)`` false alarms are allowed; the threshold is the
    ``m``-th highest impostor top-1 score, and a genuine probe counts when its best
    same-identity gallery image is ranked first **and** scores ``>=`` the threshold
    (:func:`dir_at_far`, with BLUFR's rules at ``m = 0`` and ``m = N_imp``).

Scores are the float64 similarities of the prepared embeddings, gallery ties in gallery
order (:mod:`npair.evaluation.exact`), so both search backends give the same values.
With several trials, each metric is the mean over trials and ``<key>_se_trials`` its
standard error. Which identification protocol the paper used (Best-Rowden et al. 2014 or
BLUFR) is not confirmed (``docs/datasets.md`` §5): any gallery/probe lists in this format
work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .exact import pair_scores
from .keys import spread_key
from .knn import iter_knn
from .metrics import mean_and_standard_error

log = logging.getLogger(__name__)

FaceProtocol = Callable[..., dict[str, float]]
FACE_PROTOCOLS: dict[str, FaceProtocol] = {}


def register(name: str) -> Callable[[FaceProtocol], FaceProtocol]:
    """Register ``fn(x, labels, extras, *, similarity, far, backend, device) -> dict`` as a protocol."""

    def wrap(fn: FaceProtocol) -> FaceProtocol:
        FACE_PROTOCOLS[name] = fn
        return fn

    return wrap


# --------------------------------------------------------------------------------------
# pure functions


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold ``t`` maximising the accuracy of "same iff score > t" on these pairs.

    Candidates: midpoints between consecutive distinct scores, and ±inf; ties in accuracy
    go to the lowest threshold.

    >>> best_threshold(np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 0, 1, 1]))
    0.5
    >>> best_threshold(np.array([0.2, 0.8]), np.array([1, 1]))
    -inf
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same).astype(bool)
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    # cut c: pairs [0, c) predicted "different", [c, n) predicted "same"; valid c: 0, n, and
    # positions where the score changes
    correct_below = np.concatenate([[0], np.cumsum(~y)])  # different pairs among the first c
    correct_above = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])  # same pairs among c..n-1
    accuracy = correct_below + correct_above
    n = s.size
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] != s[:-1]
    accuracy = np.where(valid, accuracy, -1)
    c = int(np.argmax(accuracy))
    if c == 0:
        return -np.inf
    if c == n:
        return np.inf
    return float((s[c - 1] + s[c]) / 2)


def kfold_verification(
    scores: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold accuracy and threshold: each fold is scored at the threshold chosen on
    all *other* folds (LFW View 2 protocol).

    >>> s = np.array([0.1, 0.9, 0.2, 0.8]); y = np.array([0, 1, 0, 1]); f = np.array([0, 0, 1, 1])
    >>> acc, t = kfold_verification(s, y, f)
    >>> acc.tolist(), t.tolist()
    ([1.0, 1.0], [0.5, 0.5])
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same).astype(bool)
    folds = np.asarray(folds)
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise ValueError(f"k-fold verification needs >= 2 folds, got {fold_ids.size}")
    accuracies, thresholds = [], []
    for f in fold_ids:
        test = folds == f
        t = best_threshold(scores[~test], same[~test])
        accuracies.append(float(((scores[test] > t) == same[test]).mean()))
        thresholds.append(t)
    return np.array(accuracies), np.array(thresholds)


def rank1_identification(top1_labels: np.ndarray, probe_labels: np.ndarray, genuine: np.ndarray) -> float:
    """Closed-set rank-1: fraction of genuine probes whose top-1 gallery label is theirs.

    >>> rank1_identification(np.array([1, 2, 3]), np.array([1, 5, 3]), np.array([True, True, False]))
    0.5
    """
    genuine = np.asarray(genuine, dtype=bool)
    if not genuine.any():
        raise ValueError("closed-set rank-1: no probe has its identity in the gallery")
    return float((np.asarray(top1_labels)[genuine] == np.asarray(probe_labels)[genuine]).mean())


def _matlab_round(v: float) -> int:
    """MATLAB's ``round``: halves away from zero (numpy rounds them to even)."""
    return int(np.floor(abs(v) + 0.5) * np.sign(v))


def blufr_threshold(impostor_scores: np.ndarray, genuine_scores: np.ndarray, far: float) -> float:
    """BLUFR ``OpenSetROC``'s decision threshold at one false-accept rate.

    ``impostor_scores``: top-1 score of every impostor probe; ``genuine_scores``: the
    best same-identity gallery score of every genuine probe. With ``m = round(far·N_imp)``:
    the ``m``-th highest impostor score when ``0 < m < N_imp``; for ``m = 0`` the midpoint
    between the highest impostor score and the lowest genuine score above it (or that
    impostor score ``+ sqrt(eps)`` when none is above); for ``m = N_imp`` the lowest of
    all scores ``- sqrt(eps)``. A probe is accepted when its score is ``>=`` the threshold.

    >>> blufr_threshold(np.array([0.9, 0.5, 0.4, 0.3]), np.array([0.95, 0.6]), 0.25)  # m = 1
    0.9
    """
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64))[::-1]
    gen = np.asarray(genuine_scores, dtype=np.float64)
    if imp.size == 0:
        raise ValueError("open-set DIR@FAR needs impostor probes (identities absent from the gallery)")
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far={far} must lie in [0, 1]")
    m = _matlab_round(far * imp.size)
    root_eps = float(np.sqrt(np.finfo(np.float64).eps))
    if m == imp.size:
        return float(min(imp[-1], gen.min(initial=np.inf)) - root_eps)
    if m == 0:
        high = gen[gen > imp[0]]
        return float(imp[0] + root_eps if high.size == 0 else (imp[0] + high.min()) / 2)
    return float(imp[m - 1])


def dir_at_far(
    top1_scores: np.ndarray,
    top1_labels: np.ndarray,
    probe_labels: np.ndarray,
    genuine: np.ndarray,
    far: float,
    mate_scores: np.ndarray | None = None,
) -> float:
    """Open-set detection-and-identification rate at rank 1 (BLUFR ``OpenSetROC``).

    Per probe: its top-1 gallery score and label, its own label, whether it is genuine
    (its identity is in the gallery). ``mate_scores``: each probe's best same-identity
    gallery score (used by BLUFR's thresholds at ``m = 0`` and ``m = N_imp``; by default
    the top-1 score where the top-1 is a mate). The threshold is
    :func:`blufr_threshold`; DIR = fraction of genuine probes whose top-1 is a mate
    scoring ``>=`` it.

    >>> s = np.array([0.95, 0.7, 0.6, 0.3, 0.9] + np.linspace(0.5, 0, 99).tolist())
    >>> g = np.arange(104) < 4  # 4 genuine probes (top-1 correct), 100 impostors
    >>> dir_at_far(s, np.zeros(104), np.where(g, 0, 1), g, far=0.01)  # m = 1: threshold 0.9
    0.25
    """
    genuine = np.asarray(genuine, dtype=bool)
    scores = np.asarray(top1_scores, dtype=np.float64)
    if not genuine.any():
        raise ValueError("open-set DIR@FAR: no probe has its identity in the gallery")
    correct = np.asarray(top1_labels) == np.asarray(probe_labels)
    if mate_scores is None:
        mate = np.where(correct, scores, -np.inf)
    else:
        mate = np.asarray(mate_scores, dtype=np.float64)
    threshold = blufr_threshold(scores[~genuine], mate[genuine & np.isfinite(mate)], far)
    hit = correct & (scores >= threshold)
    return float(hit[genuine].mean())


# --------------------------------------------------------------------------------------
# protocols over the evaluator's inputs


def _require(extras: dict[str, Any], key: str, protocol: str) -> Any:
    if key not in extras or extras[key] is None:
        raise ValueError(
            f"face protocol {protocol!r} needs extras[{key!r}] (see npair.evaluation.faces for the format); "
            f"got extras keys {sorted(extras)}"
        )
    return extras[key]


def _check_indices(idx: Any, n: int, what: str) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of test-split indices, got shape {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        example = idx.flat[0]
        raise ValueError(
            f"{what}: indices must be an integer array, got dtype {idx.dtype} (e.g. {example!r}); "
            "convert them with .astype(np.int64) (indices are 0-based positions in the test split)"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(
            f"{what}: indices must be integers in [0, {n}) (positions in the test split), "
            f"got range [{idx.min()}, {idx.max()}]"
        )
    return idx.astype(np.int64)


@register("lfw_pairs")
def lfw_pairs(
    x: np.ndarray, labels: np.ndarray, extras: dict[str, Any], *, similarity: str, **_: Any
) -> dict[str, float]:
    pairs = np.asarray(_require(extras, "pairs", "lfw_pairs"))
    if pairs.ndim != 2 or pairs.shape[1] != 4:
        raise ValueError(
            f"extras['pairs'] must be an int array (P, 4) of (i, j, same, fold), got shape {pairs.shape}"
        )
    i = _check_indices(pairs[:, 0], len(x), "extras['pairs'][:, 0]")
    j = _check_indices(pairs[:, 1], len(x), "extras['pairs'][:, 1]")
    same = pairs[:, 2].astype(bool)
    disagree = int((same != (labels[i] == labels[j])).sum())
    if disagree:
        raise ValueError(
            f"extras['pairs']: {disagree} pairs have a 'same' flag that contradicts the test labels; "
            "the pairs list and the test split do not match"
        )
    acc, thresholds = kfold_verification(pair_scores(x, i, j, similarity), same, pairs[:, 3])
    mean, se = mean_and_standard_error(acc)
    out = {"lfw_acc": mean, spread_key("lfw_acc", "folds"): se}
    finite = np.isfinite(thresholds)
    if not finite.all():
        log.warning(
            "lfw_pairs: in %d of %d folds the best threshold is ±inf (every pair of the other folds "
            "is best called 'same' or 'different'); lfw_threshold averages the other folds",
            int((~finite).sum()),
            finite.size,
        )
    if finite.any():
        out["lfw_threshold"] = float(thresholds[finite].mean())
    out["lfw_threshold_infinite_folds"] = float((~finite).sum())
    return out


def _trials(extras: dict[str, Any], protocol: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    gallery = _as_trials(_require(extras, "gallery", protocol))
    probes = _as_trials(_require(extras, "probes", protocol))
    if len(gallery) != len(probes):
        raise ValueError(
            f"extras: {len(gallery)} gallery lists but {len(probes)} probe lists (one each per trial)"
        )
    trials = []
    for t, (g, p) in enumerate(zip(gallery, probes, strict=True)):
        g = _check_indices(g, n, f"extras['gallery'][{t}]")
        p = _check_indices(p, n, f"extras['probes'][{t}]")
        shared = np.intersect1d(g, p)
        if shared.size:
            raise ValueError(
                f"extras trial {t}: {shared.size} images are both gallery and probe "
                f"(e.g. index {shared[0]}); "
                "a probe would find itself"
            )
        if g.size == 0 or p.size == 0:
            raise ValueError(f"extras trial {t}: the gallery or the probe list is empty")
        trials.append((g, p))
    return trials


def _as_trials(value: Any) -> list[Any]:
    """One trial (a 1-D array or a list of numbers) or several (a list of arrays, or a
    2-D array with one trial per row)."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        return [value] if value.ndim == 1 else list(value)
    if isinstance(value, Sequence) and len(value) and np.isscalar(value[0]):
        return [value]
    return list(value)


def _top1(x: np.ndarray, gallery: np.ndarray, probes: np.ndarray, similarity: str, backend: str, device: str):
    """Each probe's most similar gallery item (exact order: float64 score, then gallery
    order) and its float64 score."""
    nearest = np.empty(len(probes), dtype=np.int64)
    for start, _, idx in iter_knn(
        x[probes], x[gallery], 1, similarity=similarity, backend=backend, device=device, prepared=True
    ):
        nearest[start : start + len(idx)] = gallery[idx[:, 0]]
    return pair_scores(x, probes, nearest, similarity), nearest


def _mate_scores(x: np.ndarray, labels: np.ndarray, gallery: np.ndarray, probes: np.ndarray, similarity: str):
    """Each probe's best float64 score over the gallery images of its own identity
    (-inf for impostors)."""
    order = np.argsort(labels[gallery], kind="stable")
    g_sorted, g_labels = gallery[order], labels[gallery][order]
    start = np.searchsorted(g_labels, labels[probes], side="left")
    count = np.searchsorted(g_labels, labels[probes], side="right") - start
    out = np.full(len(probes), -np.inf)
    rows = np.flatnonzero(count > 0)
    if rows.size:
        reps = count[rows]
        offsets = np.repeat(start[rows] - np.cumsum(np.r_[0, reps[:-1]]), reps) + np.arange(reps.sum())
        scores = pair_scores(x, np.repeat(probes[rows], reps), g_sorted[offsets], similarity)
        out[rows] = np.maximum.reduceat(scores, np.r_[0, np.cumsum(reps)[:-1]])
    return out


def _identification(
    x: np.ndarray,
    labels: np.ndarray,
    extras: dict[str, Any],
    protocol: str,
    *,
    similarity: str,
    far: float,
    backend: str = "auto",
    device: str = "cpu",
    **_: Any,
) -> dict[str, float]:
    values = []
    for gallery, probes in _trials(extras, protocol, len(x)):
        scores, nearest = _top1(x, gallery, probes, similarity, backend, device)
        genuine = np.isin(labels[probes], labels[gallery])
        if protocol == "closed_set_rank1":
            values.append(rank1_identification(labels[nearest], labels[probes], genuine))
        else:
            mates = _mate_scores(x, labels, gallery, probes, similarity)
            values.append(
                dir_at_far(scores, labels[nearest], labels[probes], genuine, far, mate_scores=mates)
            )
    key = "rank1" if protocol == "closed_set_rank1" else f"dir@far={far * 100:g}%"
    mean, se = mean_and_standard_error(values)
    out = {key: mean}
    if len(values) > 1:
        out[spread_key(key, "trials")] = se
    return out


@register("closed_set_rank1")
def closed_set_rank1(x, labels, extras, **kw) -> dict[str, float]:
    return _identification(x, labels, extras, "closed_set_rank1", **kw)


@register("open_set_dir")
def open_set_dir(x, labels, extras, **kw) -> dict[str, float]:
    return _identification(x, labels, extras, "open_set_dir", **kw)


def face_scores(
    x: np.ndarray, labels: np.ndarray, extras: dict[str, Any], protocols: Sequence[str], **kw: Any
) -> dict[str, float]:
    """Run the named protocols and merge their results."""
    out: dict[str, float] = {}
    for name in protocols:
        if name not in FACE_PROTOCOLS:
            raise ValueError(f"unknown face protocol {name!r}; registered: {sorted(FACE_PROTOCOLS)}")
        out.update(FACE_PROTOCOLS[name](x, labels, extras, **kw))
    return out
