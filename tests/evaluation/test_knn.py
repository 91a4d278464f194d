"""Neighbour search backends: exactness against float64 brute force, agreement, query exclusion by index."""

from __future__ import annotations

import numpy as np
import pytest

from npair.evaluation.knn import (
    faiss_available,
    iter_retrieval,
    knn,
    order_ties_by_index,
    prepare_embeddings,
    resolve_backend,
)

BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])
SIMILARITIES = ["cosine", "inner_product", "euclidean"]


def _brute_force(q, r, similarity):
    q = q.astype(np.float64)
    r = r.astype(np.float64)
    if similarity == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
    if similarity == "euclidean":
        return -((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    return q @ r.T


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
    if backend == "torch":  # torch: the lowest tied indices make the cut (faiss keeps its own choice)
        for row, i in enumerate(idx):
            assert i.tolist() == sorted(set(range(5)) - {row})[:2]


def test_order_ties_by_index():
    s = np.array([[3.0, 2.0, 2.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    i = np.array([[9, 8, 1, 5, 0], [4, 3, 2, 1, 0]])
    s2, i2 = order_ties_by_index(s, i)
    assert i2.tolist() == [[9, 1, 5, 8, 0], [4, 3, 2, 1, 0]]
    np.testing.assert_array_equal(s2, s)


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


def _first_hit_from_full_ranking(x, labels, similarity):
    full = _brute_force(x, x, similarity)
    np.fill_diagonal(full, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), full.shape), -full), axis=1)  # ties by index
    matches = labels[order] == labels[:, None]
    matches[:, -1] = False  # the last column is the query itself (-inf)
    return np.where(matches.any(1), matches.argmax(1), len(x) - 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_iter_retrieval_first_hit_rank_is_exact(backend, similarity):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 40, 250)
    x = rng.normal(size=(250, 6)).astype(np.float32)
    x[5] = x[4]  # duplicates, including ties between a positive and a negative
    labels[5] = labels[4] + 1
    x[7] = x[6]
    labels[7] = labels[6]
    prepared = prepare_embeddings(x, similarity)
    expected = _first_hit_from_full_ranking(prepared, labels, similarity)
    first = np.empty(250, dtype=np.int64)
    for start, f, m in iter_retrieval(
        prepared, labels, k_top=3, k_first_hit=249, similarity=similarity, backend=backend, chunk_size=60
    ):
        first[start : start + len(f)] = f
        assert m.shape == (len(f), 3)
    has_positive = np.bincount(labels, minlength=labels.max() + 1)[labels] > 1
    np.testing.assert_array_equal(first[has_positive], expected[has_positive])
    assert (first[~has_positive] >= 249).all()


def test_loading_faiss_logs_nothing_below_warning() -> None:
    """faiss's loader reports each CPU-specific build it tries at INFO (8 lines, a ModuleNotFoundError among
    them); with npair's evaluation imported, a run's INFO log holds none of them."""
    import subprocess
    import sys

    pytest.importorskip("faiss")
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from npair.evaluation.knn import faiss_available\n"
            "assert faiss_available()\n"
            "logging.getLogger('npair').info('evaluation ready')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "faiss.loader" not in result.stderr and "ModuleNotFoundError" not in result.stderr
    assert "INFO:npair:evaluation ready" in result.stderr  # INFO records are shown: faiss's were filtered
