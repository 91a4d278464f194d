"""k-means backends and the clustering metrics over seeds."""

from __future__ import annotations

import numpy as np
import pytest

from npair.evaluation import clustering
from npair.evaluation.clustering import clustering_scores, kmeans
from npair.evaluation.knn import faiss_available
from npair.evaluation.metrics import nmi

KMEANS_BACKENDS = ["torch", "sklearn"] + (["faiss"] if faiss_available() else [])


def blobs(k=6, per=30, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 20
    labels = np.repeat(np.arange(k), per)
    return (centres[labels] + rng.normal(size=(k * per, dim))).astype(np.float32), labels


@pytest.mark.parametrize("backend", KMEANS_BACKENDS)
def test_kmeans_recovers_separated_blobs(backend):
    x, labels = blobs(k=3)
    scores = [nmi(labels, kmeans(x, 3, seed=s, backend=backend)) for s in range(8)]
    assert max(scores) == pytest.approx(1.0)  # random init may merge two blobs in some seeds
    assert np.mean(scores) > 0.7


@pytest.mark.parametrize("backend", KMEANS_BACKENDS)
def test_kmeans_is_deterministic_per_seed_and_uses_all_points(backend):
    x, _ = blobs(k=3, per=40)
    a = kmeans(x, 3, seed=7, backend=backend)
    assert a.shape == (120,) and a.dtype == np.int64
    np.testing.assert_array_equal(a, kmeans(x, 3, seed=7, backend=backend))
    assert set(a.tolist()) <= {0, 1, 2}


def test_faiss_kmeans_never_subsamples(monkeypatch):
    if not faiss_available():
        pytest.skip("faiss not installed")
    import faiss

    seen = {}
    real = faiss.Kmeans

    def spy(d, k, **kw):
        seen.update(kw)
        return real(d, k, **kw)

    monkeypatch.setattr(faiss, "Kmeans", spy)
    x = np.random.default_rng(0).normal(size=(600, 3)).astype(np.float32)
    kmeans(x, 2, backend="faiss")  # 600 > 256·2: faiss' default would train on a 512-point sample
    assert seen["max_points_per_centroid"] >= 600 and seen["niter"] == 20


def test_torch_kmeans_reseeds_empty_clusters():
    # 5 distinct points, 4 clusters, init on duplicates forces empty clusters; none may stay empty
    x = np.array([[0.0], [0.0], [0.0], [10.0], [20.0], [30.0]], dtype=np.float32)
    for seed in range(10):
        a = kmeans(x, 4, seed=seed, backend="torch", niter=10)
        assert len(set(a.tolist())) >= 3


def test_kmeans_rejects_bad_k():
    with pytest.raises(ValueError, match="k=5 clusters needs 1 <= k <= n=3"):
        kmeans(np.zeros((3, 2), np.float32), 5)


def test_clustering_scores_mean_and_se_over_seeds(monkeypatch):
    # fake k-means: seed s mislabels s points -> known per-seed NMI/F1, checks the averaging
    labels = np.repeat(np.arange(4), 10)

    def fake(x, k, *, seed, niter, backend, device):
        assert k == 4
        a = labels.copy()
        a[:seed] = (a[:seed] + 1) % 4
        return a

    monkeypatch.setattr(clustering, "kmeans", fake)
    from npair.evaluation.metrics import pair_f1

    out = clustering_scores(np.zeros((40, 2), np.float32), labels, seeds=[0, 2, 4])
    per_seed_nmi = [nmi(labels, fake(None, 4, seed=s, niter=0, backend="", device="")) for s in (0, 2, 4)]
    per_seed_f1 = [pair_f1(labels, fake(None, 4, seed=s, niter=0, backend="", device="")) for s in (0, 2, 4)]
    assert out["nmi"] == pytest.approx(np.mean(per_seed_nmi))
    assert out["nmi_se_kmeans_seeds"] == pytest.approx(np.std(per_seed_nmi, ddof=1) / np.sqrt(3))
    assert out["f1"] == pytest.approx(np.mean(per_seed_f1))
    assert per_seed_nmi[0] == 1.0
