"""Neighbour search backends: the exact order (float64 scores, ties by index) against a float64
oracle, identical results from both backends on tie-heavy data, query exclusion by index."""

from __future__ import annotations

import numpy as np
import pytest

from npair.evaluation.exact import pair_scores
from npair.evaluation.knn import (
    faiss_available,
    knn,
    prepare_embeddings,
    resolve_backend,
)

BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])
SIMILARITIES = ["cosine", "inner_product", "euclidean"]


def _brute_force(q, r, similarity):
    """Independent float64 scores (broadcast, no BLAS)."""
    q = q.astype(np.float64)
    r = r.astype(np.float64)
    if similarity == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
    if similarity == "euclidean":
        return -((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    return (q[:, None, :] * r[None, :, :]).sum(-1)


def exact_order(q, r, similarity, exclude_self=False):
    """The rule every backend follows: float64 scores of the prepared float32 embeddings,
    decreasing, exact ties by increasing index."""
    qp, rp = prepare_embeddings(q, similarity), prepare_embeddings(r, similarity)
    i, j = np.meshgrid(np.arange(len(qp)), np.arange(len(rp)), indexing="ij")
    full = pair_scores(qp, i, j, similarity, y=rp)
    if exclude_self:
        full[np.arange(len(qp)), np.arange(len(qp))] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(rp)), full.shape), -full), axis=1)
    return order[:, : len(rp) - int(exclude_self)], full


def integer_set(seed, n=60, d=4, high=3):
    """Small integer-valued embeddings: many exact ties and duplicates."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-high + 1, high, (n, d)).astype(np.float32)
    x[np.abs(x).sum(1) == 0, 0] = 1  # no all-zero rows (no cosine)
    return x


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 12)).astype(np.float32), rng.normal(size=(200, 12)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_knn_matches_float64_brute_force(data, backend, similarity):
    q, r = data
    scores, idx = knn(q, r, 7, similarity=similarity, backend=backend, chunk_size=64)
    full = _brute_force(q, r, similarity)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_follows_the_exact_order_on_tie_heavy_data(backend, similarity, exclude_self):
    for seed in range(20):
        x = integer_set(seed)
        expected, _ = exact_order(x, x, similarity, exclude_self)
        _, idx = knn(
            x, x, 9, similarity=similarity, backend=backend, exclude_self=exclude_self, chunk_size=25
        )
        np.testing.assert_array_equal(idx, expected[:, :9], err_msg=f"seed {seed}")


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_backends_identical_on_random_integer_sets(similarity):
    for seed in range(80):
        x = integer_set(100 + seed, n=40, d=3)
        k = 1 + seed % 12
        _, i_t = knn(x, x, k, similarity=similarity, backend="torch", exclude_self=True)
        _, i_f = knn(x, x, k, similarity=similarity, backend="faiss", exclude_self=True)
        np.testing.assert_array_equal(i_t, i_f, err_msg=f"seed {seed}, k {k}")


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_backends_agree_with_self_exclusion(data, similarity):
    if not faiss_available():
        pytest.skip("faiss not installed")
    x = data[0]
    s_t, i_t = knn(x, x, 10, similarity=similarity, backend="torch", exclude_self=True, chunk_size=50)
    s_f, i_f = knn(x, x, 10, similarity=similarity, backend="faiss", exclude_self=True, chunk_size=70)
    np.testing.assert_array_equal(i_t, i_f)
    np.testing.assert_allclose(s_t, s_f, rtol=1e-5, atol=1e-4)
    assert not (i_t == np.arange(len(x))[:, None]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_excluded_by_index_not_by_rank_with_duplicates(backend):
    # items 0 and 1 are the same point; from query 0, item 1 ties with the query itself
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    _, idx = knn(x, x, 2, similarity="euclidean", backend=backend, exclude_self=True)
    assert idx[0].tolist() == [1, 2]  # positional dropping could have returned [0, 2] (itself)
    assert idx[1].tolist() == [0, 2]
    # each query's own index never appears, whatever the duplicates
    assert not (idx == np.arange(4)[:, None]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_duplicates_self_pushed_out_of_the_search(backend):
    # 5 identical points: faiss' k+1 list may not contain the query itself; it must still be excluded
    x = np.zeros((5, 3), dtype=np.float32)
    x[:, 0] = 1.0
    _, idx = knn(x, x, 2, similarity="inner_product", backend=backend, exclude_self=True)
    assert not (idx == np.arange(5)[:, None]).any()
    assert (idx[:, 0] != idx[:, 1]).all()
    for row, i in enumerate(idx):  # every backend: the lowest tied indices make the cut
        assert i.tolist() == sorted(set(range(5)) - {row})[:2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_reference_is_an_error(backend, data):
    q, r = data
    with pytest.raises(ValueError, match="k=200 neighbours requested.*199 candidates"):
        knn(r, r, 200, backend=backend, exclude_self=True)
    with pytest.raises(ValueError, match="k=201"):
        knn(q, r, 201, backend=backend)


def test_prepare_embeddings_rejects_bad_input():
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 of 4 rows.*row 2"):
        prepare_embeddings(x, "cosine")
    with pytest.raises(ValueError, match="all-zero rows"):
        prepare_embeddings(np.zeros((2, 3)), "cosine")
    with pytest.raises(ValueError, match="2-D"):
        prepare_embeddings(np.ones(3), "cosine")
    with pytest.raises(ValueError, match="similarity='dot'"):
        prepare_embeddings(np.ones((2, 3)), "dot")


def test_resolve_backend():
    assert resolve_backend("torch", "cpu", 10) == "torch"
    assert resolve_backend("auto", "cpu", 10) == "torch"
    if faiss_available():
        assert resolve_backend("faiss", "cpu", 5000) == "faiss-cpu"
        # on CUDA without faiss-GPU, or above faiss-GPU's k limit, torch on the same device
        assert resolve_backend("faiss", "cuda", 4096) == "torch"
    with pytest.raises(ValueError, match="backend='annoy'"):
        resolve_backend("annoy", "cpu", 1)


def test_loading_faiss_logs_nothing_below_warning() -> None:
    """faiss's loader reports each CPU-specific build it tries at INFO (8 lines, a ModuleNotFoundError among
    them); with npair's evaluation imported, a run's INFO log holds none of them."""
    import subprocess
    import sys

    pytest.importorskip("faiss")
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from npair.evaluation.knn import faiss_available\n"
        "assert faiss_available()\n"
        "logging.getLogger('npair').info('evaluation ready')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "faiss.loader" not in result.stderr and "ModuleNotFoundError" not in result.stderr
    assert "INFO:npair:evaluation ready" in result.stderr  # INFO records are shown: faiss's were filtered
