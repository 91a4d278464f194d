"""Face protocols: LFW 10-fold pairs (no threshold peeking), closed-set rank-1, open-set DIR@FAR."""

from __future__ import annotations

import numpy as np
import pytest

from npair.evaluation import EmbeddingSet, Evaluator
from npair.evaluation.exact import pair_scores
from npair.evaluation.faces import best_threshold, blufr_threshold, dir_at_far, kfold_verification
from npair.evaluation.knn import faiss_available, prepare_embeddings

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
    assert out["lfw_acc_se_folds"] == pytest.approx(np.std([0.5, 0.75, 0.75], ddof=1) / np.sqrt(3))


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
    # impostor top-1 scores -1, -25, -100; m = round(0.34 * 3) = 1 false alarm: threshold -1 (the highest);
    # genuine probe id 0 scores -1 >= -1 and is right; id 1 (-16) is below; id 2's top-1 is wrong
    assert out["dir@far=34%"] == pytest.approx(1 / 3)
    strict = Evaluator(metrics=["open_set_dir"], similarity="euclidean", far=0.01)(test, extras=extras)
    # m = round(0.03) = 0: no genuine score is above -1, so the threshold is -1 + sqrt(eps)
    assert strict["dir@far=1%"] == 0.0


def test_dir_at_far_by_hand():
    scores = np.array([-1.0, -16.0, -20.25, -25.0, -100.0, -1.0])
    top1 = np.array([0, 1, 1, 0, 2, 1])
    labels = np.array([0, 1, 2, 5, 6, 7])
    genuine = np.array([True, True, True, False, False, False])
    # m = round(0.67 * 3) = 2: threshold -25, the 2nd highest impostor score; probes 0 and 1 pass
    assert dir_at_far(scores, top1, labels, genuine, 0.67) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="needs impostor probes"):
        dir_at_far(scores, top1, labels, np.ones(6, bool), 0.01)


def test_dir_at_far_is_blufr_not_more_lenient():
    """The case where the floor / (m+1)-th / '>' rule gave 0.75: BLUFR allows m = round(0.01 · 100) = 1
    false alarm, thresholds at the highest impostor score 0.9 and accepts scores >= it: 0.25."""
    impostors = np.r_[0.9, np.linspace(0.5, 0, 99)]
    genuine_scores = np.array([0.95, 0.7, 0.6, 0.3])
    scores = np.r_[genuine_scores, impostors]
    genuine = np.arange(104) < 4
    probe_labels = np.where(genuine, 0, 1 + np.arange(104))
    assert dir_at_far(scores, np.zeros(104), probe_labels, genuine, 0.01) == 0.25
    assert blufr_threshold(impostors, genuine_scores, 0.01) == 0.9


def test_blufr_threshold_at_zero_and_all_false_alarms():
    imp, gen = np.array([0.5, 0.4, 0.1]), np.array([0.8, 0.6, 0.2])
    assert blufr_threshold(imp, gen, 0.0) == pytest.approx(
        (0.5 + 0.6) / 2
    )  # midway to the lowest genuine above
    assert blufr_threshold(imp, np.array([0.3]), 0.0) == pytest.approx(0.5 + np.sqrt(np.finfo(float).eps))
    assert blufr_threshold(imp, gen, 1.0) == pytest.approx(0.1 - np.sqrt(np.finfo(float).eps))
    assert blufr_threshold(np.arange(200.0), gen, 0.0125) == 197.0  # round(2.5) = 3 (MATLAB: halves up)


def open_set_roc(score, gallery_labels, probe_labels, far):
    """A line-by-line port of BLUFR's OpenSetROC.m (rank 1, one FAR) on a full score
    matrix (gallery × probe): MATLAB's stable descending sort and first-index max."""
    binary = gallery_labels[:, None] == probe_labels[None, :]
    t = binary.any(axis=0)
    gen_idx, imp_idx = np.flatnonzero(t), np.flatnonzero(~t)
    n_imp = len(imp_idx)
    false_alarms = int(np.floor(far * n_imp + 0.5))
    imp_score = np.sort(score[:, imp_idx].max(axis=0))[::-1]
    s = score[:, gen_idx].copy()
    sorted_index = np.argsort(-s, axis=0, kind="stable")
    s[~binary[:, gen_idx]] = -np.inf
    gen_score = s.max(axis=0)
    gen_gal_index = s.argmax(axis=0)
    prob_ranks = (sorted_index == gen_gal_index[None, :]).argmax(axis=0) + 1
    if false_alarms == n_imp:
        threshold = min(imp_score[-1], gen_score.min()) - np.sqrt(np.finfo(float).eps)
    elif false_alarms == 0:
        high = gen_score[gen_score > imp_score[0]]
        threshold = (
            imp_score[0] + np.sqrt(np.finfo(float).eps) if high.size == 0 else (imp_score[0] + high.min()) / 2
        )
    else:
        threshold = imp_score[false_alarms - 1]
    return float(((gen_score >= threshold) & (prob_ranks <= 1)).mean())


@pytest.mark.parametrize("backend", ["torch"] + (["faiss"] if faiss_available() else []))
def test_open_set_dir_equals_a_port_of_blufr_on_random_data(backend):
    rng = np.random.default_rng(0)
    for trial in range(30):
        n, ids = 120, 30
        labels = rng.integers(0, ids, n)
        x = rng.normal(size=(n, 4)).astype(np.float32)
        if trial % 3 == 0:  # integer-valued: ties at the top of the gallery
            x = np.round(x).astype(np.float32)
            x[np.abs(x).sum(1) == 0, 0] = 1.0
        perm = rng.permutation(n)
        gallery, probes = np.sort(perm[:40]), np.sort(perm[40:])
        far = [0.0, 0.01, 0.05, 0.1, 0.3, 1.0, rng.uniform()][trial % 7]
        far_eval = min(max(far, 1e-9), 1 - 1e-9)  # the Evaluator takes far in (0, 1)
        xp = prepare_embeddings(x, "cosine")
        score = pair_scores(xp, gallery[:, None], probes[None, :], "cosine")
        expected = open_set_roc(score, labels[gallery], labels[probes], far_eval)
        out = Evaluator(metrics=["open_set_dir"], similarity="cosine", far=far_eval, backend=backend)(
            EmbeddingSet(x, labels), extras={"gallery": gallery, "probes": probes}
        )
        (value,) = out.values()
        assert value == expected, f"trial {trial}, far {far_eval}"


def test_identification_inputs_are_checked_readably():
    test = EmbeddingSet(IDS_X, IDS)
    ev = Evaluator(metrics=["closed_set_rank1"], similarity="euclidean")
    with pytest.raises(
        ValueError, match=r"extras\['gallery'\]\[0\]: indices must be an integer array, got dtype float64"
    ):
        ev(test, extras={"gallery": GALLERY.astype(float), "probes": PROBES})
    with pytest.raises(ValueError, match=r"indices must be integers in \[0, 9\)"):
        ev(test, extras={"gallery": np.array([0, 1, 20]), "probes": PROBES})
    # a 2-D array holds one trial per row
    out = ev(test, extras={"gallery": np.stack([GALLERY, GALLERY]), "probes": np.stack([PROBES, PROBES])})
    assert out["rank1"] == pytest.approx(2 / 3) and out["rank1_se_trials"] == 0.0


def test_identification_over_trials():
    test = EmbeddingSet(IDS_X, IDS)
    extras = {"gallery": [GALLERY, GALLERY], "probes": [PROBES, np.array([3, 4, 6])]}  # trial 2: rank-1 = 1
    out = Evaluator(metrics=["closed_set_rank1"], similarity="euclidean")(test, extras=extras)
    assert out["rank1"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["rank1_se_trials"] == pytest.approx(np.std([2 / 3, 1], ddof=1) / np.sqrt(2))
    with pytest.raises(ValueError, match="1 images are both gallery and probe"):
        Evaluator(metrics=["closed_set_rank1"], similarity="euclidean")(
            test, extras={"gallery": GALLERY, "probes": np.array([2, 3, 4])}
        )
    with pytest.raises(ValueError, match="2 gallery lists but 1 probe lists"):
        Evaluator(metrics=["closed_set_rank1"], similarity="euclidean")(
            test, extras={"gallery": [GALLERY, GALLERY], "probes": [PROBES]}
        )


def test_lfw_threshold_never_averages_infinite_thresholds(caplog):
    # folds 1 and 2 hold matched pairs only: scored on fold 0, the other folds' best rule is
    # "every pair is the same person" (threshold -inf)
    pairs_def = [(0.6, 1, 0), (0.2, 0, 0), (0.9, 1, 1), (0.8, 1, 1), (0.7, 1, 2), (0.4, 1, 2)]
    scores, same, folds = (np.array(c) for c in zip(*pairs_def, strict=True))
    _, thresholds = kfold_verification(scores, same, folds)
    np.testing.assert_allclose(thresholds, [-np.inf, 0.3, 0.4])
    x = np.array([[1.0]] + [[v] for v in scores], np.float32)
    labels = np.array([0] + [0 if m else 100 + k for k, m in enumerate(same)])
    rows = np.stack([np.arange(1, 7), np.zeros(6), same, folds], axis=1).astype(np.int64)
    with caplog.at_level("WARNING"):
        out = Evaluator(metrics=["lfw_pairs"], similarity="inner_product")(
            EmbeddingSet(x, labels), extras={"pairs": rows}
        )
    assert out["lfw_threshold_infinite_folds"] == 1.0
    assert out["lfw_threshold"] == pytest.approx(0.35)
    assert "threshold is ±inf" in caplog.text
