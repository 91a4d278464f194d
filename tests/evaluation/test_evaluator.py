"""The Evaluator: agreement with pytorch-metric-learning, backend agreement, bad input, configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from npair.configuration import CONFIG_DIR
from npair.evaluation import EmbeddingSet, Evaluator
from npair.evaluation.knn import faiss_available

EVAL_CONFIG_DIR = CONFIG_DIR / "eval"
BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])


def clustered(n=400, classes=25, dim=16, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.concatenate(
        [np.arange(classes), np.arange(classes), rng.integers(0, classes, n - 2 * classes)]
    )
    labels = labels[rng.permutation(n)]
    x = rng.normal(size=(classes, dim))[labels] + noise * rng.normal(size=(n, dim))
    return x.astype(np.float32), labels


def with_duplicates(seed=0):
    """Random clustered embeddings where some items are exact copies of an item of ANOTHER
    class: from the copy, the original ties with the query at rank 0."""
    x, labels = clustered(seed=seed)
    for src, dst in [(0, 1), (10, 11), (20, 21), (30, 31)]:
        x[dst] = x[src]
        if labels[dst] == labels[src]:
            labels[dst] = (labels[src] + 1) % 25
    return x, labels


def _pml(x, labels, similarity):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    if similarity == "cosine":  # PML's faiss L2 on L2-normalised embeddings ranks by cosine
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    calc = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    return calc.get_accuracy(x, labels)


def _positional_recall_at_1(x, labels):
    """RDML/PA style: search 2 neighbours, drop column 0 (whatever it is)."""
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")
    return float((labels[order[:, 1]] == labels).mean())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
@pytest.mark.parametrize("make", [clustered, with_duplicates])
def test_recall_at_1_and_map_at_r_equal_pml(backend, similarity, make):
    x, labels = make()
    ours = Evaluator(
        metrics=["recall", "map_at_r", "r_precision"], ks=[1], similarity=similarity, backend=backend
    )(EmbeddingSet(x, labels))
    pml = _pml(x, labels, similarity)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-12)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-12)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-12)


def test_duplicates_make_positional_exclusion_differ():
    """The duplicate fixture is one where dropping rank 0 gives a different (wrong) Recall@1."""
    x, labels = with_duplicates()
    ours = Evaluator(metrics=["recall"], ks=[1], similarity="euclidean", backend="torch")(
        EmbeddingSet(x, labels)
    )
    assert _positional_recall_at_1(x, labels) != pytest.approx(ours["recall@1"])


def _all_metric_evaluator(backend, similarity):
    return Evaluator(
        metrics=[
            "recall",
            "map_at_r",
            "r_precision",
            "nmi",
            "f1",
            "knn_acc",
            "vrf",
            "softmax_acc",
            "lfw_pairs",
            "closed_set_rank1",
            "open_set_dir",
        ],
        ks=[1, 2, 4, 8, 16],
        similarity=similarity,
        backend=backend,
        kmeans_seeds=2,
        kmeans_backend="torch",
        knn_k=5,
        vrf_negatives=[1, 5],
        vrf_seeds=2,
        chunk_size=97,
    )


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("similarity", ["cosine", "inner_product", "euclidean"])
@pytest.mark.parametrize("integer_valued", [False, True])
def test_faiss_and_torch_backends_agree_on_all_metrics(similarity, integer_valued):
    x, labels = clustered(seed=4)
    xr, labels_r = clustered(n=300, seed=5)
    if integer_valued:  # exact ties and duplicates everywhere: the backends must still be identical
        x, xr = np.round(x / 2), np.round(xr / 2)
        x[np.abs(x).sum(1) == 0, 0] = 1
        xr[np.abs(xr).sum(1) == 0, 0] = 1
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(x), 25))
    i, j = rng.integers(0, len(x), (2, 200))
    extras = {
        "pairs": np.stack([i, j, labels[i] == labels[j], np.arange(200) % 10], axis=1).astype(np.int64),
        "gallery": [np.flatnonzero(labels < 15)[::3], np.flatnonzero(labels < 10)[::2]],
    }
    extras["probes"] = [np.setdiff1d(np.arange(len(x)), g)[::2] for g in extras["gallery"]]
    results = [
        _all_metric_evaluator(b, similarity)(
            EmbeddingSet(x, labels, logits), reference=EmbeddingSet(xr, labels_r), extras=extras
        )
        for b in ("torch", "faiss")
    ]
    assert {"lfw_acc", "rank1", "dir@far=1%", "knn_acc", "vrf_neg5", "map@r", "f1"} <= set(results[0])
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert results[0][key] == results[1][key], key  # identical, not merely close
    assert results[0].meta["knn_backend"] == "torch" and results[1].meta["knn_backend"] == "faiss-cpu"


# from one query, items 0 and 1 tie exactly at the cut of rank 2 (one right, one wrong)
TIE_X = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0.6, 0.8, 0], [0, 0, 1], [0, 0.1, 1]], np.float32)
TIE_Y = np.array([1, 0, 0, 1, 2, 2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_at_the_cut_are_ordered_by_index_in_every_backend(backend):
    out = Evaluator(metrics=["recall", "map_at_r"], ks=[1, 2], similarity="cosine", backend=backend)(
        EmbeddingSet(TIE_X, TIE_Y)
    )
    # query 3: item 2 (0.8, other class), then items 0 and 1 tied at 0.6: item 0 (same class) first
    assert out["recall@2"] == pytest.approx(4 / 6)
    assert out["recall@1"] == pytest.approx(2 / 6)


def test_result_records_similarity_and_is_a_float_dict():
    x, labels = clustered()
    ev = Evaluator(metrics=["recall", "nmi"], ks=[1, 2], similarity="euclidean", kmeans_seeds=2)
    result = ev(EmbeddingSet(x, labels))
    assert ev.similarity == "euclidean" and result.meta["similarity"] == "euclidean"
    assert set(result) == {"recall@1", "recall@2", "recall_excluded_singletons", "nmi", "nmi_se_kmeans_seeds"}
    assert all(isinstance(v, float) for v in result.values())


def test_kmeans_uses_test_class_count_and_averages_seeds():
    x, labels = clustered(noise=0.05)
    result = Evaluator(metrics=["nmi", "f1"], kmeans_seeds=[3, 4, 5])(EmbeddingSet(x, labels))
    assert result.meta["kmeans_k"] == 25 and result.meta["kmeans_seeds"] == [3, 4, 5]
    assert result["nmi"] > 0.9 and "f1_se_kmeans_seeds" in result
    one = Evaluator(metrics=["nmi", "f1"], kmeans_seeds=1)(EmbeddingSet(x, labels))
    assert "nmi_se_kmeans_seeds" not in one  # no standard error from a single seed


# ---------------------------------------------------------------- seen-class protocol


def test_knn_acc_uses_the_reference_set():
    train = EmbeddingSet(np.array([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0], [2.0, 0.1]]), np.array([0, 0, 1, 1]))
    test = EmbeddingSet(np.array([[0.1, 1.0], [1.0, 0.2], [1.0, 0.9]]), np.array([0, 1, 0]))
    ev = Evaluator(metrics=["knn_acc"], similarity="cosine", knn_k=1)
    assert ev.needs_reference
    # cosine: query 3 (1.0, 0.9) is closer in angle to class 1's (2, 0.1)? cos = .74 vs (0,1): .67 -> wrong
    assert ev(test, reference=train)["knn_acc"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="needs reference embeddings"):
        ev(test)
    with pytest.raises(ValueError, match="knn_k=5 exceeds the 4 reference items"):
        Evaluator(metrics=["knn_acc"], knn_k=5)(test, reference=train)
    with pytest.raises(ValueError, match="needs_reference: true"):
        Evaluator(metrics=["knn_acc"], needs_reference=False)


def test_softmax_accuracy_only_with_logits():
    x, labels = clustered(n=60, classes=3)
    logits = np.eye(3)[labels]
    logits[:6] = np.eye(3)[(labels[:6] + 1) % 3]  # 6 wrong of 60
    ev = Evaluator(metrics=["softmax_acc"])
    assert ev(EmbeddingSet(x, labels, logits))["softmax_acc"] == pytest.approx(0.9)
    without = ev(EmbeddingSet(x, labels))
    assert "softmax_acc" not in without and "no logits" in without.meta["softmax_acc"]


# ---------------------------------------------------------------- bad input


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="10 embeddings but 9 labels"):
        EmbeddingSet(np.zeros((10, 3)), np.zeros(9))
    with pytest.raises(ValueError, match="logits shape"):
        EmbeddingSet(np.zeros((10, 3)), np.zeros(10), np.zeros((9, 2)))
    with pytest.raises(ValueError, match="labels must be integers"):
        EmbeddingSet(np.zeros((2, 3)), np.array([0.5, 1.0]))


def test_nan_embeddings_are_an_error():
    x, labels = clustered()
    x[17, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 of 400 rows.*row 17"):
        Evaluator(metrics=["recall"])(EmbeddingSet(x, labels))


def test_singleton_queries_are_excluded_and_counted():
    x, labels = clustered(n=100, classes=10)
    labels = labels.copy()
    labels[[3, 50]] = [98, 99]  # two classes of one image each
    ev = Evaluator(metrics=["recall", "map_at_r"], ks=[1, 4], similarity="euclidean")
    result = ev(EmbeddingSet(x, labels))
    assert result["recall_excluded_singletons"] == 2.0
    keep = np.setdiff1d(np.arange(100), [3, 50])
    # same as evaluating the others against the FULL set (the singletons stay as distractors)
    d = ((x[keep, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    d[np.arange(len(keep)), keep] = np.inf
    nearest = np.argsort(d, axis=1, kind="stable")[:, :4]
    hits = labels[nearest] == labels[keep, None]
    assert result["recall@1"] == pytest.approx(hits[:, 0].mean())
    assert result["recall@4"] == pytest.approx(hits.any(1).mean())
    with pytest.raises(
        ValueError, match="2 test queries belong to classes with a single test item.*label 98"
    ):
        Evaluator(metrics=["recall"], singleton_queries="error")(EmbeddingSet(x, labels))


def test_k_larger_than_the_test_set_is_an_error():
    x, labels = clustered(n=60, classes=5)
    with pytest.raises(ValueError, match="K=100.*only 60 items"):
        Evaluator(metrics=["recall"], ks=[1, 100])(EmbeddingSet(x, labels))


def test_bad_configuration_is_an_error():
    with pytest.raises(ValueError, match="unknown eval metric"):
        Evaluator(metrics=["recal"])
    with pytest.raises(ValueError, match="similarity='dot'"):
        Evaluator(similarity="dot")
    with pytest.raises(ValueError, match="kmeans_seeds=0"):
        Evaluator(kmeans_seeds=0)
    with pytest.raises(ValueError, match="VRF\\(neg=30\\).*only 25 classes"):
        Evaluator(metrics=["vrf"], vrf_negatives=[30])(EmbeddingSet(*clustered()))


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("path", sorted(EVAL_CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_eval_configs_instantiate(path):
    from tests.helpers import compose_config

    cfg = compose_config([f"eval={path.stem}"]).eval  # through Hydra: config files may extend others
    assert cfg.name == path.stem
    node = OmegaConf.to_container(cfg, resolve=True)
    node.pop("name")
    ev = instantiate(node)
    assert isinstance(ev, Evaluator)
    assert ev.similarity == cfg.similarity
    assert ev.needs_reference == (path.stem == "recognition")
    text = path.read_text()
    own_keys = [k for k in OmegaConf.load(path) if k not in ("_target_", "defaults", "name")]
    for key in own_keys:  # every key the file sets is documented with its provenance
        line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
        assert "#" in line, f"{path.name}: key {key} has no comment"


def test_config_k_lists():
    assert list(OmegaConf.load(EVAL_CONFIG_DIR / "retrieval.yaml").ks) == [1, 2, 4, 8]
    assert list(OmegaConf.load(EVAL_CONFIG_DIR / "sop.yaml").ks) == [1, 10, 100, 1000]


# ---------------------------------------------------------------- labels, empty and degenerate sets


def test_empty_test_set_is_an_error():
    train = EmbeddingSet(np.eye(3, dtype=np.float32), np.array([0, 1, 2]))
    empty = EmbeddingSet(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="the test set is empty"):
        Evaluator(metrics=["knn_acc"])(empty, reference=train)
    with pytest.raises(ValueError, match="the reference set is empty"):
        Evaluator(metrics=["knn_acc"])(train, reference=empty)


def _pml_knn_accuracy(test_x, test_y, ref_x, ref_y):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    def normalise(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    calc = AccuracyCalculator(include=("precision_at_1",), k=1, device=torch.device("cpu"))
    return calc.get_accuracy(normalise(test_x), test_y, normalise(ref_x), ref_y, ref_includes_query=False)


def test_knn_accuracy_counts_queries_whose_class_is_absent_from_the_reference():
    x, labels = clustered(n=400, classes=25, noise=1.5, seed=1)
    xr, labels_r = clustered(n=300, classes=25, noise=1.5, seed=2)
    keep = labels_r >= 5  # the reference lacks classes 0-4
    test, ref = EmbeddingSet(x, labels), EmbeddingSet(xr[keep], labels_r[keep])
    absent = int((labels < 5).sum())
    out = Evaluator(metrics=["knn_acc"], knn_k=1)(test, reference=ref)
    assert out["knn_acc_absent_class_queries"] == absent > 0
    pml = _pml_knn_accuracy(x, labels, xr[keep], labels_r[keep])["precision_at_1"]
    assert out["knn_acc"] == pytest.approx(pml, abs=1e-12)  # excluded, as PML does
    wrong = Evaluator(metrics=["knn_acc"], absent_class_queries="wrong")(test, reference=ref)
    assert wrong["knn_acc"] == pytest.approx(out["knn_acc"] * (400 - absent) / 400)
    with pytest.raises(ValueError, match=f"{absent} of 400 test queries have a class absent"):
        Evaluator(metrics=["knn_acc"], absent_class_queries="error")(test, reference=ref)
    with pytest.raises(ValueError, match="absent_class_queries='skip'"):
        Evaluator(metrics=["knn_acc"], absent_class_queries="skip")


def test_one_class_or_all_singletons_are_refused_for_nmi_and_f1():
    x, _ = clustered(n=60, classes=5)
    with pytest.raises(ValueError, match="at least 2 test classes, got 1"):
        Evaluator(metrics=["nmi"])(EmbeddingSet(x, np.zeros(60, np.int64)))
    with pytest.raises(ValueError, match="every one of the 60 test classes has a single item"):
        Evaluator(metrics=["f1"])(EmbeddingSet(x, np.arange(60)))
