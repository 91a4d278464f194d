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

**Query exclusion by index.** With ``exclude_self=True`` query ``i`` *is* reference
``i`` and is removed from its own neighbour list by its index, never by dropping rank 0
(dropping rank 0 is wrong when another item ties with the query, e.g. a duplicated
image; see ``metrics-and-anchors.md`` §4.8 item 1). Ties between distinct reference
items (duplicated embeddings) are ordered by reference index, whatever the backend, so
results do not depend on the backend's tie order (for a tie straddling rank ``k``, the
torch backend also lets the lowest indices make the cut; faiss keeps its own choice).

Backends:

* ``"torch"``: chunked matrix product + ``torch.topk`` on ``device`` (CPU or CUDA).
* ``"faiss"``: ``IndexFlatIP`` / ``IndexFlatL2`` (exact). On a CUDA device, when faiss
  has GPU support, a single-GPU index on that device (never all GPUs: cloning an index
  to every GPU is what breaks on large sets, ROADMAP #6). faiss-GPU cannot return more
  than 2048 neighbours (faiss #1501); above that the search falls back to the torch
  backend on the same GPU (logged, and recorded by :func:`resolve_backend`).
* ``"auto"``: torch. On the 2-core development machine the torch backend (MKL sgemm)
  is ~3x faster than the faiss-cpu wheel's exhaustive top-k search (SOP-scale
  Recall@{1..1000}: 55 s vs 163 s, ``scripts/bench_evaluator.py``); choose ``faiss``
  explicitly for faiss-GPU.

:func:`iter_retrieval` is the evaluator's shared search for a test set against itself:
the exact rank of every query's first same-label neighbour (Recall@K for *all* K at
once) and the label matches of its top-k list (MAP@R, R-precision). The torch backend
computes the first-hit rank without a top-k at all — it counts, in each query's
similarity row, the items scoring above the query's best positive — so Recall@1000
costs no more than Recall@1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

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
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start, scores, indices)`` for consecutive query chunks.

    ``scores``/``indices`` are ``(chunk, k)``, most similar first, ``indices`` int64
    into ``reference``. With ``exclude_self`` query ``i`` is reference item ``i``
    (``query`` must equal ``reference[:len(query)]``) and never appears in its own list.
    ``prepared=True`` skips validation/normalisation (inputs already from
    :func:`prepare_embeddings`).
    """
    if not prepared:
        query = prepare_embeddings(query, similarity, "query embeddings")
        reference = prepare_embeddings(reference, similarity, "reference embeddings")
    check_similarity(similarity)
    if query.shape[1] != reference.shape[1]:
        raise ValueError(f"query dimension {query.shape[1]} != reference dimension {reference.shape[1]}")
    if exclude_self and len(query) > len(reference):
        raise ValueError(
            f"exclude_self needs query ⊂ reference, got {len(query)} queries > {len(reference)} references"
        )
    _check_k(k, len(reference), exclude_self)
    used = resolve_backend(backend, device, k + int(exclude_self))
    if used == "torch":
        chunks = _torch_knn(query, reference, k, similarity, device, exclude_self, chunk_size)
    else:
        chunks = _faiss_knn(
            query, reference, k, similarity, device if used == "faiss-gpu" else None, exclude_self, chunk_size
        )
    for start, scores, indices in chunks:
        yield start, *order_ties_by_index(scores, indices)


def order_ties_by_index(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Within each row, order equal scores by increasing reference index (rows are
    already sorted by decreasing score; only rows containing a tie are re-sorted).

    >>> s, i = order_ties_by_index(np.array([[2.0, 1.0, 1.0]]), np.array([[7, 9, 4]]))
    >>> i.tolist()
    [[7, 4, 9]]
    """
    if scores.shape[1] < 2:
        return scores, indices
    tied = (scores[:, 1:] == scores[:, :-1]).any(axis=1)
    if tied.any():
        rows = np.flatnonzero(tied)
        sub_s, sub_i = scores[rows], indices[rows]
        order = np.lexsort((sub_i, -sub_s), axis=-1)
        scores = scores.copy()
        indices = indices.copy()
        scores[rows] = np.take_along_axis(sub_s, order, axis=1)
        indices[rows] = np.take_along_axis(sub_i, order, axis=1)
    return scores, indices


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


def topk_ties_by_index(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` per row, except that when tied scores straddle rank ``k`` the
    lowest-index tied items make the cut (torch's own choice is arbitrary). Rows are
    checked with one comparison pass; only rows with such a tie are redone."""
    values, idx = torch.topk(s, k, dim=1, largest=True, sorted=True)
    kth = values[:, -1:]
    if s.device.type == "cpu":  # numpy reductions: ~2x faster than torch's on CPU
        at_or_above = torch.from_numpy(np.greater_equal(s.numpy(), kth.numpy()).sum(1, dtype=np.int64))
    else:
        at_or_above = (s >= kth).sum(1)
    straddle = torch.nonzero(at_or_above > k).flatten()
    for i in straddle.tolist():
        row = s[i]
        above = torch.nonzero(row > kth[i]).flatten()
        tied = torch.nonzero(row == kth[i]).flatten()[: k - len(above)]  # nonzero: increasing index
        keep = torch.cat([above, tied])
        values[i] = row[keep]
        idx[i] = keep
        order = torch.sort(values[i], descending=True, stable=True).indices
        values[i], idx[i] = values[i][order], idx[i][order]
    return values, idx


def _torch_scores(
    q: torch.Tensor, r: torch.Tensor, r_sq: torch.Tensor | None, similarity: str
) -> torch.Tensor:
    s = q @ r.T
    if similarity == "euclidean":
        # -‖q - r‖² = 2 q·r - ‖r‖² - ‖q‖²  (the ‖q‖² term keeps scores true distances)
        s.mul_(2).sub_(r_sq[None, :]).sub_((q * q).sum(1, keepdim=True))
    return s


def _torch_knn(query, reference, k, similarity, device, exclude_self, chunk_size):
    dev = torch.device(device)
    r = torch.from_numpy(reference).to(dev)
    r_sq = (r * r).sum(1) if similarity == "euclidean" else None
    chunk = chunk_size or torch_chunk_size(len(reference))
    with torch.no_grad():
        for start in range(0, len(query), chunk):
            q = torch.from_numpy(query[start : start + chunk]).to(dev)
            s = _torch_scores(q, r, r_sq, similarity)
            if exclude_self:
                rows = torch.arange(len(q), device=dev)
                s[rows, rows + start] = -math.inf
            values, idx = topk_ties_by_index(s, k)
            yield start, values.cpu().numpy(), idx.cpu().numpy().astype(np.int64, copy=False)


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


def _faiss_knn(query, reference, k, similarity, device, exclude_self, chunk_size):
    index, _resources = _faiss_index(reference, similarity, device)
    k_search = k + int(exclude_self)
    chunk = chunk_size or 8192
    for start in range(0, len(query), chunk):
        q = query[start : start + chunk]
        scores, idx = index.search(q, k_search)
        if similarity == "euclidean":
            scores = -scores  # faiss returns squared L2 distances
        if exclude_self:
            scores, idx = _drop_self(scores, idx, start)
        yield start, scores, idx


def _drop_self(scores: np.ndarray, idx: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index from a ``k+1`` result; if absent (tied duplicates
    pushed it out), drop the last column instead. Returns ``k`` columns."""
    own = np.arange(start, start + len(idx))[:, None]
    is_self = idx == own
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    n, k1 = idx.shape
    return scores[keep].reshape(n, k1 - 1), idx[keep].reshape(n, k1 - 1)


def iter_retrieval(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    k_top: int,
    k_first_hit: int,
    similarity: str = "cosine",
    backend: str = "auto",
    device: str = "cpu",
    chunk_size: int | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Search the (prepared) set ``x`` against itself, each query excluded by index.

    Yields ``(start, first_hit, matches)`` per query chunk:

    * ``first_hit (b,)`` int64: 0-based rank of the query's first same-label neighbour,
      exact whenever it is ``< k_first_hit`` (otherwise some value ``>= k_first_hit``;
      ``n - 1`` or more when the query has no positive at all);
    * ``matches (b, k_top)`` bool: same-label flags of the ``k_top`` nearest neighbours.

    Ranks follow the tie rule of :func:`order_ties_by_index`. The faiss backend searches
    ``max(k_top, k_first_hit)`` neighbours; the torch backend counts, per row, the items
    scoring above the best positive, and runs ``topk`` only for ``k_top`` (small: R).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(x)
    k_search = max(k_top, k_first_hit)
    _check_k(k_search, n, exclude_self=True)
    used = resolve_backend(backend, device, k_search + 1)
    if used != "torch":
        for start, _, idx in iter_knn(
            x,
            x,
            k_search,
            similarity=similarity,
            backend=backend,
            device=device,
            exclude_self=True,
            chunk_size=chunk_size,
            prepared=True,
        ):
            matches = labels[idx] == labels[start : start + len(idx), None]
            hit = matches.any(axis=1)
            first = np.where(hit, matches.argmax(axis=1), k_search).astype(np.int64)
            yield start, first, matches[:, :k_top]
        return
    yield from _torch_retrieval(x, labels, k_top, similarity, device, chunk_size)


def _count_at_least(s: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: how many scores are ``> threshold`` and ``>= threshold`` (int64).

    On CPU the comparisons run in numpy on the same memory (about 2x faster than torch's
    bool reductions on the development machine); on GPU in torch.
    """
    if s.device.type == "cpu":
        sn, tn = s.numpy(), threshold.numpy()[:, None]
        above = np.greater(sn, tn).sum(1, dtype=np.int64)
        at_or_above = np.greater_equal(sn, tn).sum(1, dtype=np.int64)
        return torch.from_numpy(above), torch.from_numpy(at_or_above)
    t = threshold[:, None]
    return (s > t).sum(1), (s >= t).sum(1)


def _torch_retrieval(x, labels, k_top, similarity, device, chunk_size):
    dev = torch.device(device)
    n = len(x)
    r = torch.from_numpy(x).to(dev)
    r_sq = (r * r).sum(1) if similarity == "euclidean" else None
    # class members, grouped by class and in index order within a class
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = torch.from_numpy(np.argsort(inverse, kind="stable")).to(dev)
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]])).to(dev)
    counts_t = torch.from_numpy(counts).to(dev)
    inverse_t = torch.from_numpy(inverse.astype(np.int64)).to(dev)
    chunk = chunk_size or torch_chunk_size(n)
    with torch.no_grad():
        for start in range(0, n, chunk):
            q = r[start : start + chunk]
            b = len(q)
            rows = torch.arange(b, device=dev)
            s = _torch_scores(q, r, r_sq, similarity)
            s[rows, rows + start] = -math.inf
            # best positive: gather the row's own class members (self is already -inf)
            cls = inverse_t[start : start + b]
            width = int(counts_t[cls].max())
            slot = torch.arange(width, device=dev)
            valid = slot[None, :] < counts_t[cls][:, None]
            cols = members[(offsets[cls][:, None] + slot[None, :]).clamp(max=n - 1)]
            pos_scores = torch.where(valid, s.gather(1, cols), -math.inf)
            best, best_slot = pos_scores.max(dim=1)  # first maximum = lowest index among tied positives
            best_col = cols[rows, best_slot]
            above, at_or_above = _count_at_least(s, best)
            first = above.clone()
            tied = torch.nonzero(at_or_above - above > 1).flatten()
            for i in tied.tolist():  # exact ties with the best positive (duplicates): lower index first
                row = s[i]
                first[i] += int(((row == best[i]) & (torch.arange(n, device=dev) < best_col[i])).sum())
            no_positive = torch.isinf(best)
            first[no_positive] = n - 1
            if k_top > 0:
                values, idx = topk_ties_by_index(s, k_top)
                values, idx = order_ties_by_index(values.cpu().numpy(), idx.cpu().numpy())
                matches = labels[idx] == labels[start : start + b, None]
            else:
                matches = np.zeros((b, 0), dtype=bool)
            yield start, first.cpu().numpy().astype(np.int64), matches
