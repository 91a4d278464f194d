"""On CUDA (skipped without a GPU): the torch and faiss backends give the metrics they give on CPU,
ties included. The GPU timing belongs to the GPU check script, not to this suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npair.evaluation import EmbeddingSet, Evaluator
from npair.evaluation.knn import faiss_gpu_available, knn, prepare_embeddings
from npair.evaluation.retrieval import search_self

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tie_heavy(seed=0, n=600):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 60, n)
    x = rng.integers(-2, 3, (n, 6)).astype(np.float32)
    x[np.abs(x).sum(1) == 0, 0] = 1
    x[: n // 2] += rng.normal(size=(n // 2, 6)).astype(np.float32)  # half continuous, half exact ties
    return x, labels


@pytest.mark.parametrize("similarity", ["cosine", "inner_product", "euclidean"])
def test_symmetric_search_on_cuda_equals_cpu(similarity):
    x, labels = tie_heavy()
    p = prepare_embeddings(x, similarity)
    kw = {"at_r": True, "k_first_hit": len(x) - 1, "similarity": similarity, "block": 64, "tile_cols": 200}
    cpu = search_self(p, labels, device="cpu", **kw)
    gpu = search_self(p, labels, device="cuda", **kw)
    np.testing.assert_array_equal(cpu.first_hit, gpu.first_hit)
    np.testing.assert_array_equal(cpu.matches_at_r, gpu.matches_at_r)


@pytest.mark.parametrize("backend", ["torch"] + (["faiss"] if faiss_gpu_available() else []))
def test_knn_on_cuda_equals_cpu(backend):
    x, _ = tie_heavy(1)
    cpu = knn(x, x, 9, backend=backend, device="cpu", exclude_self=True)[1]
    gpu = knn(x, x, 9, backend=backend, device="cuda", exclude_self=True)[1]
    np.testing.assert_array_equal(cpu, gpu)


@pytest.mark.parametrize("backend", ["torch"] + (["faiss"] if faiss_gpu_available() else []))
def test_every_metric_on_cuda_equals_cpu(backend):
    x, labels = tie_heavy(2)
    xr, labels_r = tie_heavy(3, n=400)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(x), (2, 200))
    gallery = [np.flatnonzero(labels < 30)[::3]]
    extras = {
        "pairs": np.stack([i, j, labels[i] == labels[j], np.arange(200) % 10], 1).astype(np.int64),
        "gallery": gallery,
        "probes": [np.setdiff1d(np.arange(len(x)), gallery[0])],
    }
    metrics = [
        "recall",
        "map_at_r",
        "r_precision",
        "knn_acc",
        "vrf",
        "lfw_pairs",
        "closed_set_rank1",
        "open_set_dir",
    ]
    results = [
        Evaluator(metrics=metrics, ks=[1, 2, 4, 8], backend=backend, device=device, knn_k=3)(
            EmbeddingSet(x, labels), reference=EmbeddingSet(xr, labels_r), extras=extras
        )
        for device in ("cpu", "cuda")
    ]
    assert dict(results[0]) == dict(results[1])
    assert results[1].meta["device"] == "cuda"
