"""k-means clustering of test embeddings and the clustering metrics (NMI, F1) over seeds.

Protocol (Song et al. CVPR 2016, as Sohn 2016 Table 2 reports it): k-means with
``k`` = number of **test** classes, on **all** test points, NMI and F1 of the cluster
assignment against the classes, averaged over S k-means seeds (paper: 10, "standard
errors are omitted"). The cluster assignment of a point is its nearest final centroid.

k-means is Euclidean on the embeddings as the similarity sees them: L2-normalised for
``cosine``, raw for ``euclidean`` and ``inner_product`` (Song et al. cluster raw features).

Backends:

* ``"faiss"``: ``faiss.Kmeans`` with ``max_points_per_centroid`` raised to ``n`` so it
  never subsamples (faiss' default 256 silently trains on a subset when n > 256·k,
  faiss #268), ``min_points_per_centroid=1`` (no warnings for small classes), random
  initialisation from ``seed``, ``niter`` Lloyd iterations (default 20 = PML's
  ``FaissKMeans(niter=20)`` and RDML), one run per seed (``nredo=1``).
* ``"sklearn"``: ``sklearn.cluster.KMeans(init="random", n_init=1, max_iter=niter,
  tol=0)`` — the same algorithm (Lloyd, random init), used when faiss is absent.
* ``"torch"``: the same Lloyd iterations in torch (chunked ``x @ cᵀ`` assignment on the
  evaluator's device), random initialisation from ``seed`` (k distinct points), empty
  clusters re-seeded by splitting a large cluster as faiss does. Useful on a GPU when
  faiss has no GPU support.
* ``"auto"``: faiss when importable, else scikit-learn (``scripts/bench_evaluator.py
  --kmeans`` times faiss k-means per seed against PML's NMI).

Seeds run one after another by default; ``jobs`` runs several at once in threads, each
with its share of the CPU threads (worth it only where one k-means cannot use every core).

Different backends draw different initialisations, so NMI/F1 agree between them only up
to k-means' seed-to-seed noise; for a fixed backend and seed they are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .keys import spread_key
from .knn import faiss_available, faiss_gpu_available
from .metrics import mean_and_standard_error, nmi, pair_f1

KMEANS_BACKENDS = ("auto", "torch", "faiss", "sklearn")
SPLIT_EPS = 1.0 / 1024  # faiss Clustering: relative perturbation when splitting a cluster


def resolve_kmeans_backend(backend: str) -> str:
    """The k-means backend actually used: ``auto`` is faiss when importable, else sklearn."""
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"kmeans backend={backend!r} is not one of {KMEANS_BACKENDS}")
    if backend == "auto":
        return "faiss" if faiss_available() else "sklearn"
    return backend


def kmeans(
    x: np.ndarray, k: int, *, seed: int = 0, niter: int = 20, backend: str = "auto", device: str = "cpu"
) -> np.ndarray:
    """Cluster the rows of ``x`` (float32, already prepared) into ``k`` clusters.

    Returns the ``(n,)`` int64 index of each point's nearest final centroid.

    >>> x = np.array([[0.0], [0.1], [10.0], [10.1]], dtype=np.float32)
    >>> a = kmeans(x, 2, seed=0, backend="sklearn")
    >>> bool(a[0] == a[1] != a[2] == a[3])
    True
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means with k={k} clusters needs 1 <= k <= n={n} points")
    backend = resolve_kmeans_backend(backend)
    if backend == "torch":
        return _torch_kmeans(x, k, seed=int(seed), niter=niter, device=device)
    if backend == "faiss" and not faiss_available():
        raise ImportError("kmeans_backend='faiss' needs the faiss package; use torch or sklearn")
    if backend == "faiss":
        import faiss

        km = faiss.Kmeans(
            x.shape[1],
            k,
            niter=niter,
            seed=int(seed),
            nredo=1,
            max_points_per_centroid=max(n, 1),
            min_points_per_centroid=1,
            verbose=False,
            gpu=1 if str(device).startswith("cuda") and faiss_gpu_available() else False,  # one GPU
        )
        km.train(x)
        _, assignment = km.index.search(x, 1)
        return assignment[:, 0].astype(np.int64)
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, init="random", n_init=1, max_iter=niter, tol=0.0, random_state=int(seed))
    return km.fit_predict(x).astype(np.int64)


def _assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int) -> torch.Tensor:
    """Nearest centroid (squared Euclidean) of every row, in chunks of rows."""
    c_sq = (centroids * centroids).sum(1)
    out = torch.empty(len(x), dtype=torch.int64, device=x.device)
    for s in range(0, len(x), chunk):
        scores = x[s : s + chunk] @ centroids.T
        scores.mul_(2).sub_(c_sq[None, :])  # argmax of 2 x·c - ‖c‖² = argmin ‖x - c‖²
        out[s : s + chunk] = scores.argmax(dim=1)
    return out


def _torch_kmeans(x: np.ndarray, k: int, *, seed: int, niter: int, device: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xt = torch.from_numpy(x).to(device)
    n = len(xt)
    chunk = max(1, (128 * 2**20) // (4 * k))  # <= 128 MiB score block
    centroids = xt[torch.from_numpy(rng.choice(n, size=k, replace=False)).to(device)].clone()
    with torch.no_grad():
        for _ in range(niter):
            assignment = _assign(xt, centroids, chunk)
            counts = torch.bincount(assignment, minlength=k)
            sums = torch.zeros_like(centroids).index_add_(0, assignment, xt)
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled, None].to(sums.dtype)
            if not bool(filled.all()):
                _split_for_empty(centroids, counts.cpu().numpy(), rng)
        return _assign(xt, centroids, chunk).cpu().numpy()


def _split_for_empty(centroids: torch.Tensor, counts: np.ndarray, rng: np.random.Generator) -> None:
    """Re-seed each empty cluster by splitting a cluster drawn with probability
    proportional to (size - 1), both halves perturbed by ±SPLIT_EPS (faiss' rule)."""
    sign = torch.ones(centroids.shape[1], device=centroids.device)
    sign[1::2] = -1
    counts = counts.astype(np.float64)
    for empty in np.flatnonzero(counts == 0):
        weights = np.maximum(counts - 1, 0)
        if weights.sum() == 0:
            return
        big = int(rng.choice(len(counts), p=weights / weights.sum()))
        centroids[empty] = centroids[big] * (1 + SPLIT_EPS * sign)
        centroids[big] = centroids[big] * (1 - SPLIT_EPS * sign)
        counts[empty] = np.floor(counts[big] / 2)
        counts[big] -= counts[empty]


def clustering_scores(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    seeds: Sequence[int] = tuple(range(10)),
    niter: int = 20,
    backend: str = "auto",
    device: str = "cpu",
    metrics: Sequence[str] = ("nmi", "f1"),
    jobs: int = 1,
) -> dict[str, float]:
    """NMI and/or F1 of k-means (k = number of distinct labels) over ``seeds``.

    One k-means per seed, shared by both metrics; ``jobs`` seeds run at once (threads;
    faiss and torch release the GIL), each with its share of the CPU threads. Returns
    ``{metric: mean over seeds}`` plus ``{metric}_se_kmeans_seeds`` (standard error
    across k-means seeds of this one embedding) when there are >= 2 seeds.

    A single test class, or classes of one item each, are refused: k-means with k = 1 or
    k = n scores NMI = F1 = 1 whatever the embeddings.
    """
    labels = np.asarray(labels)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
    if len(seeds) == 0:
        raise ValueError("kmeans seeds: need at least one seed")
    if jobs < 1:
        raise ValueError(f"kmeans_jobs={jobs} must be >= 1")
    k = int(np.unique(labels).size)
    if k < 2:
        raise ValueError(
            f"NMI/F1 need at least 2 test classes, got {k}: with one class, k-means with k = 1 "
            "scores NMI = F1 = 1 whatever the embeddings; drop nmi/f1 from eval.metrics for this set"
        )
    if k == len(labels):
        raise ValueError(
            f"NMI/F1: every one of the {k} test classes has a single item, so k-means with k = n puts each "
            "point in its own cluster and scores NMI = F1 = 1 whatever the embeddings; "
            "evaluate on a split with several items per class"
        )
    functions = {"nmi": nmi, "f1": pair_f1}

    def one_seed(seed: int) -> dict[str, float]:
        assignment = kmeans(x, k, seed=seed, niter=niter, backend=backend, device=device)
        return {m: functions[m](labels, assignment) for m in metrics}

    if jobs == 1 or len(seeds) == 1:
        per_seed = [one_seed(seed) for seed in seeds]
    else:
        per_seed = _in_parallel(one_seed, list(seeds), jobs)
    out: dict[str, float] = {}
    for m in metrics:
        values = [r[m] for r in per_seed]
        out[m], se = mean_and_standard_error(values)
        if len(values) > 1:
            out[spread_key(m, "kmeans_seeds")] = se
    return out


def _in_parallel(fn, seeds: list[int], jobs: int) -> list[dict[str, float]]:
    """``fn`` over ``seeds`` in ``jobs`` threads, the CPU threads split between them."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    previous_torch = torch.get_num_threads()
    faiss = None
    if faiss_available():
        import faiss
    previous_faiss = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(fn, seeds))
    finally:
        torch.set_num_threads(previous_torch)
        if faiss is not None:
            faiss.omp_set_num_threads(previous_faiss)
