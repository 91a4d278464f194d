"""Face protocols: LFW 10-fold pairs (no threshold peeking), closed-set rank-1, open-set DIR@FAR."""

from __future__ import annotations

import numpy as np
import pytest

from npair.evaluation import EmbeddingSet, Evaluator
from npair.evaluation.faces import best_threshold, dir_at_far, kfold_verification

# (score, same, fold). Fold 0 alone would be separated perfectly at 0.575; the other folds put the
# threshold at 0.725, which misclassifies fold 0's matched pairs (0.6, 0.7).
PAIRS = [
    (0.6, 1, 0),
    (0.7, 1, 0),
    (0.5, 0, 0),
    (0.55, 0, 0),
    (0.9, 1, 1),
    (0.8, 1, 1),
    (0.1, 0, 1),
    (0.65, 0, 1),
    (0.9, 1, 2),
    (0.8, 1, 2),
    (0.1, 0, 2),
    (0.65, 0, 2),
]


def test_best_threshold_by_hand():
    assert best_threshold(
        np.array([0.1, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9]), np.array([0, 0, 0, 1, 0, 1, 1, 1])
    ) == pytest.approx(0.575)  # 7/8, lowest of two optima
    # a cut between the two 0.3 scores would be perfect, but equal scores are never split: 3/4 at 0.2 or 0.6
    assert best_threshold(np.array([0.3, 0.3, 0.9, 0.1]), np.array([0, 1, 1, 0])) == pytest.approx(0.2)
    assert best_threshold(np.array([0.2, 0.4]), np.array([0, 0])) == np.inf


def test_kfold_never_picks_the_threshold_on_the_scored_fold():
    s, y, f = (np.array(c) for c in zip(*PAIRS, strict=True))
    acc, thresholds = kfold_verification(s, y, f)
    # fold 0 scored at the threshold of folds 1+2 (0.725): 2 of 4 right (peeking would give 4 of 4)
    # folds 1, 2 scored at the threshold of the other two folds (0.575): 3 of 4 right
    np.testing.assert_allclose(thresholds, [0.725, 0.575, 0.575])
    np.testing.assert_allclose(acc, [0.5, 0.75, 0.75])


def _pairs_as_embeddings():
    """1-D embeddings whose inner product with an anchor (x = 1) is each pair's score."""
    x = [[1.0]]
    labels = [0]
    rows = []
    for k, (score, same, fold) in enumerate(PAIRS):
        x.append([score])
        labels.append(0 if same else 100 + k)
        rows.append((k + 1, 0, same, fold))
    return np.array(x, np.float32), np.array(labels), np.array(rows, dtype=np.int64)


def test_lfw_pairs_through_the_evaluator():
    x, labels, pairs = _pairs_as_embeddings()
    out = Evaluator(metrics=["lfw_pairs"], similarity="inner_product")(
        EmbeddingSet(x, labels), extras={"pairs": pairs}
    )
    assert out["lfw_acc"] == pytest.approx(2 / 3)
    assert out["lfw_acc_se"] == pytest.approx(np.std([0.5, 0.75, 0.75], ddof=1) / np.sqrt(3))


def test_lfw_pairs_input_errors():
    x, labels, pairs = _pairs_as_embeddings()
    ev = Evaluator(metrics=["lfw_pairs"], similarity="inner_product")
    with pytest.raises(ValueError, match="needs extras\\['pairs'\\]"):
        ev(EmbeddingSet(x, labels))
    with pytest.raises(ValueError, match="\\(P, 4\\)"):
        ev(EmbeddingSet(x, labels), extras={"pairs": pairs[:, :3]})
    bad = pairs.copy()
    bad[0, 2] = 0  # claims a matched pair is mismatched
    with pytest.raises(ValueError, match="1 pairs have a 'same' flag that contradicts"):
        ev(EmbeddingSet(x, labels), extras={"pairs": bad})
    out_of_range = pairs.copy()
    out_of_range[0, 0] = 99
    with pytest.raises(ValueError, match="indices must be integers in \\[0, 13\\)"):
        ev(EmbeddingSet(x, labels), extras={"pairs": out_of_range})


# Identification, 1-D Euclidean. Gallery: id 0 at 0, id 1 at 10, id 2 at 20.
# Genuine probes: id 0 at 1 (top-1 id 0, score -1), id 1 at 14 (id 1, -16),
#                 id 2 at 14.5 (top-1 id 1: wrong, -20.25).
# Impostor probes: id 5 at 5 (-25), id 6 at 30 (-100), id 7 at 11 (-1).
IDS_X = np.array([[0.0], [10.0], [20.0], [1.0], [14.0], [14.5], [5.0], [30.0], [11.0]], dtype=np.float32)
IDS = np.array([0, 1, 2, 0, 1, 2, 5, 6, 7])
GALLERY = np.array([0, 1, 2])
PROBES = np.arange(3, 9)


def test_closed_and_open_set_identification_by_hand():
    test = EmbeddingSet(IDS_X, IDS)
    extras = {"gallery": GALLERY, "probes": PROBES}
    out = Evaluator(metrics=["closed_set_rank1", "open_set_dir"], similarity="euclidean", far=0.34)(
        test, extras=extras
    )
    assert out["rank1"] == pytest.approx(2 / 3)
    # impostor top-1 scores -1, -25, -100; FAR <= 0.34 -> threshold -25 (1 of 3 impostors above it)
    assert out["dir@far=34%"] == pytest.approx(2 / 3)
    strict = Evaluator(metrics=["open_set_dir"], similarity="euclidean", far=0.01)(test, extras=extras)
    assert strict["dir@far=1%"] == 0.0  # threshold -1: probe id 0 (score -1) is not above it


def test_dir_at_far_by_hand():
    scores = np.array([-1.0, -16.0, -20.25, -25.0, -100.0, -1.0])
    top1 = np.array([0, 1, 1, 0, 2, 1])
    labels = np.array([0, 1, 2, 5, 6, 7])
    genuine = np.array([True, True, True, False, False, False])
    assert dir_at_far(scores, top1, labels, genuine, 0.67) == pytest.approx(2 / 3)  # threshold -100
    with pytest.raises(ValueError, match="needs impostor probes"):
        dir_at_far(scores, top1, labels, np.ones(6, bool), 0.01)


def test_identification_over_trials():
    test = EmbeddingSet(IDS_X, IDS)
    extras = {"gallery": [GALLERY, GALLERY], "probes": [PROBES, np.array([3, 4, 6])]}  # trial 2: rank-1 = 1
    out = Evaluator(metrics=["closed_set_rank1"], similarity="euclidean")(test, extras=extras)
    assert out["rank1"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["rank1_se"] == pytest.approx(np.std([2 / 3, 1], ddof=1) / np.sqrt(2))
    with pytest.raises(ValueError, match="1 images are both gallery and probe"):
        Evaluator(metrics=["closed_set_rank1"], similarity="euclidean")(
            test, extras={"gallery": GALLERY, "probes": np.array([2, 3, 4])}
        )
    with pytest.raises(ValueError, match="2 gallery lists but 1 probe lists"):
        Evaluator(metrics=["closed_set_rank1"], similarity="euclidean")(
            test, extras={"gallery": [GALLERY, GALLERY], "probes": [PROBES]}
        )
