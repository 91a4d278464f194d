"""The test set against itself: first-hit ranks and top-R lists, exact against a float64 oracle for
the symmetric block algorithm (every block and tile size) and the faiss backend."""

from __future__ import annotations

import numpy as np
import pytest

from npair.evaluation.exact import pair_scores
from npair.evaluation.knn import faiss_available, prepare_embeddings
from npair.evaluation.retrieval import class_aligned_blocks, search_self

BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])
SIMILARITIES = ["cosine", "inner_product", "euclidean"]


def oracle(x, labels, similarity):
    """Full float64 ranking of each prepared item against all others (ties by index):
    first-hit rank and same-class flags of each query's first R neighbours (R: its
    number of positives; False beyond)."""
    n = len(x)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    full = pair_scores(x, i, j, similarity)
    np.fill_diagonal(full, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(n), full.shape), -full), axis=1)[:, : n - 1]
    matches = labels[order] == labels[:, None]
    first = np.where(matches.any(1), matches.argmax(1), n - 1)
    r = np.bincount(labels)[labels] - 1
    at_r = matches[:, : r.max()] & (np.arange(r.max())[None, :] < r[:, None])
    return first, at_r


def tie_heavy(seed, n=300, similarity="cosine"):
    """Random labels and embeddings with duplicates across and within classes; every
    fourth set integer-valued (exact ties everywhere)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 40, n)
    if seed % 4 == 3:
        x = rng.integers(-2, 3, (n, 4)).astype(np.float32)
        x[np.abs(x).sum(1) == 0, 0] = 1
    else:
        x = rng.normal(size=(n, 6)).astype(np.float32)
    x[5] = x[4]
    labels[5] = labels[4] + 1  # a negative tied with a positive
    x[7] = x[6]
    labels[7] = labels[6]
    x[n // 3 : n // 3 + 10] = x[2 * n // 3]  # ten copies of one item, in various classes
    return prepare_embeddings(x, similarity), labels


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize(("block", "tile_cols"), [(16, 37), (64, 100), (512, 4096)])
def test_symmetric_blocks_are_exact(similarity, block, tile_cols):
    for seed in range(4):
        x, labels = tie_heavy(seed, similarity=similarity)
        first, matches = oracle(x, labels, similarity)
        got = search_self(
            x, labels, at_r=True, k_first_hit=len(x) - 1, similarity=similarity,
            backend="torch", block=block, tile_cols=tile_cols,
        )  # fmt: skip
        alone = search_self(
            x, labels, at_r=True, k_first_hit=0, similarity=similarity,
            backend="torch", block=block, tile_cols=tile_cols,
        )  # fmt: skip
        np.testing.assert_array_equal(alone.matches_at_r, matches, err_msg=f"seed {seed}")
        has_positive = np.bincount(labels)[labels] > 1
        np.testing.assert_array_equal(
            got.first_hit[has_positive], first[has_positive], err_msg=f"seed {seed}"
        )
        assert (got.first_hit[~has_positive] == len(x) - 1).all()
        np.testing.assert_array_equal(got.matches_at_r, matches, err_msg=f"seed {seed}")


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_faiss_backend_gives_the_same_ranks(similarity):
    for seed in range(4):
        x, labels = tie_heavy(seed, similarity=similarity)
        first, matches = oracle(x, labels, similarity)
        got = search_self(x, labels, at_r=True, k_first_hit=50, similarity=similarity, backend="faiss")
        assert got.backend == "faiss-cpu"
        has_positive = np.bincount(labels)[labels] > 1
        np.testing.assert_array_equal(
            np.minimum(got.first_hit, 50)[has_positive], np.minimum(first, 50)[has_positive]
        )
        np.testing.assert_array_equal(got.matches_at_r, matches)


def test_a_class_larger_than_the_block():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(150, np.int64), rng.integers(1, 30, 150)]
    x = prepare_embeddings(rng.normal(size=(300, 5)).astype(np.float32), "cosine")
    first, matches = oracle(x, labels, "cosine")
    got = search_self(x, labels, at_r=True, k_first_hit=299, similarity="cosine", block=32, tile_cols=50)
    np.testing.assert_array_equal(got.first_hit, first)
    np.testing.assert_array_equal(got.matches_at_r, matches)


def test_class_aligned_blocks():
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4])
    assert class_aligned_blocks(labels, 4) == [(0, 2), (2, 6), (6, 11), (11, 12)]  # class 3 alone: 5 > 4
    assert class_aligned_blocks(labels, 100) == [(0, 12)]
    assert class_aligned_blocks(labels[:0], 4) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_beyond_the_set_is_an_error(backend):
    x, labels = tie_heavy(0, n=50)
    with pytest.raises(ValueError, match="k=50 neighbours requested.*49 candidates"):
        search_self(x, labels, k_first_hit=50, backend=backend)


def test_lists_full_of_ties_fall_back_to_a_search_of_their_own(monkeypatch):
    """Nine distinct points for 300 items: every query's best negatives tie far beyond its
    list, so MAP@R must take those queries through the exact search, and stay exact."""
    from npair.evaluation import retrieval

    searched = []
    real = retrieval._matches_by_search
    monkeypatch.setattr(retrieval, "_matches_by_search", lambda *a, **k: searched.append(1) or real(*a, **k))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 15, 300)
    grid = rng.integers(-1, 2, (300, 2)).astype(np.float32) + np.array([0, 0.5], np.float32)
    for similarity in SIMILARITIES:
        x = prepare_embeddings(grid, similarity)
        first, matches = oracle(x, labels, similarity)
        got = search_self(
            x, labels, at_r=True, k_first_hit=299, similarity=similarity, block=32, tile_cols=50
        )
        np.testing.assert_array_equal(got.matches_at_r, matches)
        np.testing.assert_array_equal(got.first_hit, first)
    assert len(searched) == 3
