"""Exact nearest-neighbour search with interchangeable backends (faiss or pure torch).

Every backend returns, for each query, the ``k`` most similar reference items, most
similar first, as ``(scores, indices)`` with *larger score = more similar*:

* ``"inner_product"``: score = ``q · r`` on the raw embeddings (the N-pair training
  similarity, Sohn 2016 Eq. 4);
* ``"cosine"``: score = ``q · r`` after L2-normalising both sides;
* ``"euclidean"``: score = ``-‖q - r‖²`` on the raw embeddings (Song et al. 2016's
  protocol ranks by Euclidean distance).

Queries are processed in chunks, so memory never holds an ``n × n`` matrix: the torch
backend materialises one ``chunk × n_reference`` block at a time, faiss one
``chunk × k`` result.

**One order for every backend.** Neighbours come in decreasing *float64* similarity of
the prepared float32 embeddings, exact ties in increasing reference index. The float32
search proposes candidates; :mod:`npair.evaluation.exact` decides, in float64, every
comparison closer than float32's rounding-error bound, and a top-k list is extended
until no item left out can reach the k-th score. Float32 products round differently
with the BLAS kernel, the tile shape and an item's position, so without this two
copies of one item could rank apart, and faiss and torch could disagree at ties.

**Query exclusion by index.** With ``exclude_self=True`` query ``i`` *is* reference
``i`` and is removed from its own neighbour list by its index, never by dropping rank 0
(dropping rank 0 is wrong when another item ties with the query, e.g. a duplicated
image; ``docs/metrics.md`` §4.8 item 1).

Backends:

* ``"torch"``: chunked matrix product + ``torch.topk`` on ``device`` (CPU or CUDA).
* ``"faiss"``: ``IndexFlatIP`` / ``IndexFlatL2`` (exact). On a CUDA device, when faiss
  has GPU support, a single-GPU index on that device (never all GPUs: cloning an index
  to every GPU is what breaks on large sets, ROADMAP #6). faiss-GPU cannot return more
  than 2048 neighbours (faiss #1501); above that the search falls back to the torch
  backend on the same GPU (logged, and recorded by :func:`resolve_backend`).
* ``"auto"``: torch (for a set against itself, :mod:`npair.evaluation.retrieval` then
  computes half the products; ``scripts/bench_evaluator.py``).

A test set against itself (Recall@K, MAP@R) is :func:`npair.evaluation.retrieval.search_self`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from .exact import cut_is_complete, error_bound, full_precision_matmul, max_norm, order_exactly

log = logging.getLogger(__name__)
# faiss's loader logs each CPU-specific build it tries at INFO, failures included (8 lines per process, among
# them a ModuleNotFoundError for a missing AVX512 build): only its warnings are worth a run's log.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

Similarity = Literal["cosine", "inner_product", "euclidean"]
SIMILARITIES: tuple[str, ...] = ("cosine", "inner_product", "euclidean")
BACKENDS: tuple[str, ...] = ("auto", "faiss", "torch")
FAISS_GPU_MAX_K = 2048  # faiss/gpu/utils/DeviceDefs.cuh: GPU_MAX_SELECTION_K (CUDA >= 9.5)
DEFAULT_BLOCK_BYTES = 256 * 2**20  # torch backend: at most this many bytes per score block


def faiss_available() -> bool:
    """True when ``import faiss`` works (torch is imported first: faiss #2126)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_gpu_available() -> bool:
    """True when faiss was built with GPU support and sees at least one GPU."""
    if not faiss_available():
        return False
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def check_similarity(similarity: str) -> str:
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity={similarity!r} is not one of {SIMILARITIES}")
    return similarity


def prepare_embeddings(embeddings: np.ndarray, similarity: str, name: str = "embeddings") -> np.ndarray:
    """Validate embeddings and bring them to the form the similarity is computed on.

    Returns a C-contiguous float32 ``(n, D)`` array, L2-normalised rows for
    ``"cosine"``. Raises ``ValueError`` on a wrong shape, NaN/inf values, or (cosine)
    an all-zero row, naming how many rows and the first offending index.

    >>> prepare_embeddings(np.array([[3.0, 4.0]]), "cosine")
    array([[0.6, 0.8]], dtype=float32)
    """
    check_similarity(similarity)
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, D), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} contain NaN or inf in {bad.size} of {len(x)} rows (first: row {bad[0]}); "
            "check the model output (diverged training?) before evaluating"
        )
    if similarity == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            bad = np.flatnonzero(norms[:, 0] == 0)
            raise ValueError(
                f"{name}: {bad.size} all-zero rows (first: row {bad[0]}) have no cosine similarity; "
                "use similarity=inner_product or euclidean, or fix the embeddings"
            )
        x = np.ascontiguousarray(x / norms, dtype=np.float32)
    return x


def resolve_backend(backend: str, device: str, k: int) -> str:
    """The backend actually used: ``"torch"``, ``"faiss-cpu"`` or ``"faiss-gpu"``.

    ``auto`` picks torch. faiss on a CUDA device uses faiss-GPU when
    available and ``k <= 2048``, else torch on that device (faiss-GPU's selection
    limit); faiss on CPU is ``faiss-cpu``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        backend = "torch"
    if backend == "torch":
        return "torch"
    if not faiss_available():
        raise ImportError(
            "backend='faiss' needs the faiss package (pip install faiss-cpu), or use backend=torch"
        )
    if str(device).startswith("cuda"):
        if faiss_gpu_available() and k <= FAISS_GPU_MAX_K:
            return "faiss-gpu"
        why = (
            f"k={k} > {FAISS_GPU_MAX_K} (faiss-GPU limit)"
            if faiss_gpu_available()
            else "faiss has no GPU support"
        )
        log.warning("kNN on %s: %s; using the torch backend on the same device", device, why)
        return "torch"
    return "faiss-cpu"


def _check_k(k: int, n_reference: int, exclude_self: bool) -> None:
    available = n_reference - int(exclude_self)
    if k < 1:
        raise ValueError(f"k={k}: need at least one neighbour")
    if k > available:
        raise ValueError(
            f"k={k} neighbours requested but the reference set has only {available} candidates per query "
            f"({n_reference} items{', minus the query itself' if exclude_self else ''}); lower K"
        )


def torch_chunk_size(n_reference: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Queries per chunk so that one float32 ``chunk × n_reference`` block fits ``block_bytes``."""
    return max(1, block_bytes // (4 * max(1, n_reference)))


def iter_knn(
    query: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    similarity: str = "cosine",
    backend: str = "auto",
    device: str = "cpu",
    exclude_self: bool = False,
    chunk_size: int | None = None,
    prepared: bool = False,
    query_index: np.ndarray | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start, scores, indices)`` for consecutive query chunks.

    ``scores``/``indices`` are ``(chunk, k)`` in the exact order (module docstring),
    ``indices`` int64 into ``reference``, ``scores`` the float32 search scores. With
    ``exclude_self`` query ``i`` is reference item ``i`` (``query`` must equal
    ``reference[:len(query)]``) and never appears in its own list. ``prepared=True``
    skips validation/normalisation (inputs already from :func:`prepare_embeddings`).
    ``query_index``: with ``exclude_self``, the reference index of each query, when the
    queries are not the first rows of the reference.
    """
    if not prepared:
        query = prepare_embeddings(query, similarity, "query embeddings")
        reference = prepare_embeddings(reference, similarity, "reference embeddings")
    for start, values, index, err in iter_candidates(
        query, reference, k, similarity=similarity, backend=backend, device=device,
        exclude_self=exclude_self, chunk_size=chunk_size, prepared=True, query_index=query_index,
    ):  # fmt: skip
        queries = np.arange(start, start + len(values))
        yield start, *order_exactly(values, index, queries, k, err, query, reference, similarity)


def iter_candidates(
    query: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    similarity: str = "cosine",
    backend: str = "auto",
    device: str = "cpu",
    exclude_self: bool = False,
    chunk_size: int | None = None,
    prepared: bool = False,
    query_index: np.ndarray | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Like :func:`iter_knn`, but yields ``(start, scores, indices, err)``: float32
    candidate lists of at least ``k`` items in float32 order whose cut at ``k`` is
    complete (:func:`~npair.evaluation.exact.cut_is_complete`), not yet in the exact
    order, with each query's error bound ``err``. ``query_index``: with
    ``exclude_self``, the reference index of each query (default ``0..len(query)-1``)."""
    if not prepared:
        query = prepare_embeddings(query, similarity, "query embeddings")
        reference = prepare_embeddings(reference, similarity, "reference embeddings")
    check_similarity(similarity)
    if query.shape[1] != reference.shape[1]:
        raise ValueError(f"query dimension {query.shape[1]} != reference dimension {reference.shape[1]}")
    if exclude_self and query_index is None and len(query) > len(reference):
        raise ValueError(
            f"exclude_self needs query ⊂ reference, got {len(query)} queries > {len(reference)} references"
        )
    own = np.arange(len(query)) if query_index is None else np.asarray(query_index, dtype=np.int64)
    _check_k(k, len(reference), exclude_self)
    err = error_bound(query, max_norm(reference), similarity)
    used = resolve_backend(backend, device, k + int(exclude_self))
    search = _torch_search if used == "torch" else _faiss_search
    gpu = device if used == "faiss-gpu" else None
    with full_precision_matmul():
        for start, v, i in search(
            query, reference, k, err, similarity, device, gpu, exclude_self, chunk_size, own
        ):
            yield start, v, i, err[start : start + len(v)]


def knn(
    query: np.ndarray,
    reference: np.ndarray,
    k: int,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """All of :func:`iter_knn` at once: ``(scores (n, k) float32, indices (n, k) int64)``.

    >>> x = np.array([[0.0], [1.0], [3.0]], dtype=np.float32)
    >>> knn(x, x, 1, similarity="euclidean", exclude_self=True)[1].ravel().tolist()
    [1, 0, 1]
    """
    scores, indices = [], []
    for _, s, i in iter_knn(query, reference, k, **kwargs):
        scores.append(s)
        indices.append(i)
    if not scores:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(indices)


def _first_size(k: int) -> int:
    """Candidates fetched at first for a top-k: a margin for ties and near-ties at the cut."""
    return k + max(2, k // 8)


def _complete_lists(
    rows: int, k: int, n_available: int, err: np.ndarray, fetch
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate lists for ``rows`` queries, each long enough that its cut at ``k`` is
    complete: ``fetch(row_ids, m)`` returns the top ``m`` (float32, decreasing) of those
    rows; rows whose cut is not complete are fetched again with twice as many. The
    result is padded with -inf / -1 to a common length."""
    m = min(_first_size(k), n_available)
    pending = np.arange(rows)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    while pending.size:
        v, i = fetch(pending, m)
        done = cut_is_complete(v, k, err[pending], exhausted=m >= n_available)
        parts.append((pending[done], v[done], i[done]))
        pending = pending[~done]
        m = min(2 * m, n_available)
    width = max(p[1].shape[1] for p in parts)
    values = np.full((rows, width), -np.inf, dtype=np.float32)
    index = np.full((rows, width), -1, dtype=np.int64)
    for r, v, i in parts:
        values[r, : v.shape[1]] = v
        index[r, : i.shape[1]] = i
    return values, index


def _torch_scores(
    q: torch.Tensor, r: torch.Tensor, r_sq: torch.Tensor | None, similarity: str
) -> torch.Tensor:
    s = q @ r.T
    if similarity == "euclidean":
        # -‖q - r‖² = 2 q·r - ‖q‖² - ‖r‖²  (the ‖q‖² term keeps scores true distances)
        s.mul_(2).sub_((q * q).sum(1, keepdim=True)).sub_(r_sq[None, :])
    return s


def _torch_search(query, reference, k, err, similarity, device, _gpu, exclude_self, chunk_size, own):
    dev = torch.device(device)
    r = torch.from_numpy(reference).to(dev)
    r_sq = (r * r).sum(1) if similarity == "euclidean" else None
    chunk = chunk_size or torch_chunk_size(len(reference))
    n_available = len(reference) - int(exclude_self)
    with torch.no_grad():
        for start in range(0, len(query), chunk):
            q = torch.from_numpy(query[start : start + chunk]).to(dev)
            s = _torch_scores(q, r, r_sq, similarity)
            if exclude_self:
                rows = torch.arange(len(q), device=dev)
                s[rows, torch.from_numpy(own[start : start + len(q)]).to(dev)] = -math.inf

            def fetch(row_ids, m, s=s):
                v, i = torch.topk(s[torch.from_numpy(row_ids).to(dev)], m, dim=1)
                return v.cpu().numpy(), i.cpu().numpy().astype(np.int64, copy=False)

            yield start, *_complete_lists(len(q), k, n_available, err[start : start + len(q)], fetch)


def _faiss_index(reference: np.ndarray, similarity: str, device: str | None):
    """Exact flat index holding ``reference``; on ``device`` (one GPU) when given.

    Returns ``(index, gpu_resources)``: the caller keeps the resources alive while the
    GPU index is in use (faiss' Python objects refuse extra attributes).
    """
    import faiss

    d = reference.shape[1]
    index = faiss.IndexFlatL2(d) if similarity == "euclidean" else faiss.IndexFlatIP(d)
    resources = None
    if device is not None:
        gpu_id = torch.device(device).index or 0
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, gpu_id, index)  # this GPU only (not all GPUs)
    index.add(reference)
    return index, resources


def _faiss_search(query, reference, k, err, similarity, device, gpu, exclude_self, chunk_size, own):
    index, _resources = _faiss_index(reference, similarity, gpu)
    chunk = chunk_size or 8192
    n_available = len(reference) - int(exclude_self)
    r = None
    for start in range(0, len(query), chunk):
        q = query[start : start + chunk]

        def fetch(row_ids, m, q=q, start=start):
            nonlocal r
            m_search = min(m + int(exclude_self), len(reference))
            if (
                gpu is not None and m_search > FAISS_GPU_MAX_K
            ):  # faiss-GPU's selection limit: torch on the GPU
                if r is None:
                    r = torch.from_numpy(reference).to(device)
                s = _torch_scores(torch.from_numpy(q[row_ids]).to(device), r, (r * r).sum(1), similarity)
                if exclude_self:
                    s[torch.arange(len(row_ids)), torch.from_numpy(own[row_ids + start])] = -math.inf
                v, i = torch.topk(s, m, dim=1)
                return v.cpu().numpy(), i.cpu().numpy().astype(np.int64, copy=False)
            scores, idx = index.search(np.ascontiguousarray(q[row_ids]), m_search)
            if similarity == "euclidean":
                scores = -scores  # faiss returns squared L2 distances
            if exclude_self:
                scores, idx = _drop_self(scores, idx, own[row_ids + start])
            return scores[:, :m], idx[:, :m]

        yield start, *_complete_lists(len(q), k, n_available, err[start : start + len(q)], fetch)


def _drop_self(scores: np.ndarray, idx: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index ``own[row]`` from a ``k+1`` result; if absent (tied
    duplicates pushed it out), drop the last column instead. Returns ``k`` columns."""
    is_self = idx == own[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    n, k1 = idx.shape
    return scores[keep].reshape(n, k1 - 1), idx[keep].reshape(n, k1 - 1)
