"""The configurable evaluator: shared work (one kNN search for every K, one k-means per
seed) computed once per call, then each requested metric.

Built from ``configs/eval/<name>.yaml`` with ``hydra.utils.instantiate`` (the training
loop drops ``name``). Metric names and the result keys they produce:

====================  ====================================================  ==============================
metric                result keys                                           needs
====================  ====================================================  ==============================
``recall``            ``recall@K`` for K in ``ks``                          test set against itself
``map_at_r``          ``map@r``                                             test set against itself
``r_precision``       ``r_precision``                                       test set against itself
``nmi`` / ``f1``      ``nmi``, ``f1`` (+ ``nmi_se_kmeans_seeds``,           k-means, one per seed
                      ``f1_se_kmeans_seeds``)
``knn_acc``           ``knn_acc``, ``knn_acc_absent_class_queries``         ``reference`` (training split)
``softmax_acc``       ``softmax_acc`` (only when the test set has logits)   test logits
``vrf``               ``vrf_neg{k}`` (+ ``vrf_neg{k}_se_negative_draws``)   test set
``lfw_pairs``         ``lfw_acc``, ``lfw_acc_se_folds``, ``lfw_threshold``  ``extras["pairs"]``
``closed_set_rank1``  ``rank1`` (+ ``rank1_se_trials``)                     ``extras["gallery"|"probes"]``
``open_set_dir``      ``dir@far={far}%`` (+ ``dir@far={far}%_se_trials``)   ``extras["gallery"|"probes"]``
====================  ====================================================  ==============================

``<metric>_se_<over>`` is the standard error of the mean across the repeats it names
(k-means seeds, negative draws, LFW folds, identification trials; :mod:`.keys`), present
only with at least two repeats. It is never the tables' ± across training seeds.
Further face protocols registered with :func:`npair.evaluation.faces.register` are
accepted as metric names.

Counted exclusions are reported, never hidden: ``recall_excluded_singletons`` (test
queries whose class has no other test item: excluded from Recall@K / MAP@R /
R-precision, as PML does, unless ``singleton_queries="error"``),
``vrf_excluded_singletons``, and ``knn_acc_absent_class_queries`` (test queries whose
class is not in the reference set: excluded from ``knn_acc`` as PML does, unless
``absent_class_queries`` is ``wrong`` or ``error``).

The result is an :class:`EvalResult`: a plain ``dict[str, float]`` of metrics plus a
``meta`` attribute recording the similarity, the backend actually used and the
protocol settings (the similarity is also :attr:`Evaluator.similarity`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .clustering import KMEANS_BACKENDS, clustering_scores, resolve_kmeans_backend
from .embedding_set import EmbeddingSet, shared_labels
from .knn import BACKENDS, check_similarity, iter_knn, prepare_embeddings
from .metrics import (
    average_precision_at_r_per_query,
    logits_accuracy,
    majority_vote,
    positives_per_query,
    r_precision_per_query,
)
from .retrieval import search_self

log = logging.getLogger(__name__)

METRICS = (
    "recall",
    "map_at_r",
    "r_precision",
    "nmi",
    "f1",
    "knn_acc",
    "softmax_acc",
    "vrf",
    "lfw_pairs",
    "closed_set_rank1",
    "open_set_dir",
)
RETRIEVAL_METRICS = ("recall", "map_at_r", "r_precision")
SINGLETON_POLICIES = ("exclude", "error")
ABSENT_CLASS_POLICIES = ("exclude", "wrong", "error")


class EvalResult(dict):
    """``dict[str, float]`` of metrics, with ``meta`` (similarity, backend, settings)."""

    def __init__(self, metrics: dict[str, float] | None = None, meta: dict[str, Any] | None = None):
        super().__init__(metrics or {})
        self.meta: dict[str, Any] = dict(meta or {})


class Evaluator:
    """Evaluate an :class:`EmbeddingSet` (see the module docstring for metrics and keys).

    Args:
        metrics: names from :data:`METRICS`.
        ks: K values for Recall@K (CUB/Cars: 1,2,4,8; SOP: 1,10,100,1000 — Sohn 2016 Table 2).
        similarity: ``cosine`` | ``inner_product`` | ``euclidean`` for ranking, k-means
            preparation, verification scores.
        backend: kNN backend ``auto`` | ``faiss`` | ``torch`` (same results).
        device: ``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` (cuda when available).
        chunk_size: queries per search chunk (None: automatic, bounded memory).
        kmeans_seeds: number of k-means seeds (seeds ``0..S-1``) or an explicit list.
        kmeans_niter: Lloyd iterations per k-means run.
        kmeans_backend: ``auto`` (faiss, else sklearn) | ``faiss`` | ``sklearn`` | ``torch``.
        kmeans_jobs: k-means seeds run at once (threads sharing the CPU threads).
        knn_k: neighbours voting in ``knn_acc`` (majority vote, tie-break in
            :func:`~npair.evaluation.metrics.majority_vote`).
        vrf_negatives: the k values of VRF(neg=k).
        vrf_seeds: repeats of the VRF draw (seeds ``0..S-1``) or a list.
        far: false-accept rate for open-set DIR@FAR.
        singleton_queries: ``exclude`` (count in ``recall_excluded_singletons``) or ``error``.
        absent_class_queries: ``knn_acc`` queries whose class is not in the reference:
            ``exclude`` (PML's rule), ``wrong`` (count them as errors) or ``error``;
            their number is ``knn_acc_absent_class_queries`` in every case.
        needs_reference: whether the caller must pass the training split's embeddings;
            default: True exactly when ``knn_acc`` is requested.
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("recall",),
        ks: Sequence[int] = (1, 2, 4, 8),
        similarity: str = "cosine",
        backend: str = "auto",
        device: str = "cpu",
        chunk_size: int | None = None,
        kmeans_seeds: int | Sequence[int] = 10,
        kmeans_niter: int = 20,
        kmeans_backend: str = "auto",
        kmeans_jobs: int = 1,
        knn_k: int = 1,
        vrf_negatives: Sequence[int] = (1,),
        vrf_seeds: int | Sequence[int] = 10,
        far: float = 0.01,
        singleton_queries: str = "exclude",
        absent_class_queries: str = "exclude",
        needs_reference: bool | None = None,
    ) -> None:
        from .faces import FACE_PROTOCOLS

        self.metrics = tuple(metrics)
        known = METRICS + tuple(p for p in FACE_PROTOCOLS if p not in METRICS)
        unknown = [m for m in self.metrics if m not in known]
        if unknown:
            raise ValueError(f"unknown eval metric(s) {unknown}; choose from {known}")
        self.ks = tuple(int(k) for k in ks)
        if "recall" in self.metrics and (not self.ks or min(self.ks) < 1):
            raise ValueError(f"ks={list(ks)}: Recall@K needs positive K values")
        self.similarity = check_similarity(similarity)
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
        self.backend = backend
        self.device = _resolve_device(device)
        self.chunk_size = chunk_size
        self.kmeans_seeds = _seed_list(kmeans_seeds, "kmeans_seeds")
        self.kmeans_niter = int(kmeans_niter)
        if kmeans_backend not in KMEANS_BACKENDS:
            raise ValueError(f"kmeans_backend={kmeans_backend!r} is not one of {KMEANS_BACKENDS}")
        self.kmeans_backend = kmeans_backend
        if int(kmeans_jobs) < 1:
            raise ValueError(f"kmeans_jobs={kmeans_jobs} must be >= 1")
        self.kmeans_jobs = int(kmeans_jobs)
        if knn_k < 1:
            raise ValueError(f"knn_k={knn_k} must be >= 1")
        self.knn_k = int(knn_k)
        self.vrf_negatives = tuple(int(k) for k in vrf_negatives)
        if "vrf" in self.metrics and (not self.vrf_negatives or min(self.vrf_negatives) < 1):
            raise ValueError(f"vrf_negatives={list(vrf_negatives)} must be positive integers")
        self.vrf_seeds = _seed_list(vrf_seeds, "vrf_seeds")
        if not 0.0 < far < 1.0:
            raise ValueError(f"far={far} must lie in (0, 1)")
        self.far = float(far)
        if singleton_queries not in SINGLETON_POLICIES:
            raise ValueError(f"singleton_queries={singleton_queries!r} is not one of {SINGLETON_POLICIES}")
        self.singleton_queries = singleton_queries
        if absent_class_queries not in ABSENT_CLASS_POLICIES:
            raise ValueError(
                f"absent_class_queries={absent_class_queries!r} is not one of {ABSENT_CLASS_POLICIES}"
            )
        self.absent_class_queries = absent_class_queries
        derived = "knn_acc" in self.metrics
        if needs_reference is None:
            needs_reference = derived
        if derived and not needs_reference:
            raise ValueError(
                "metric knn_acc needs the reference (training) embeddings: set needs_reference: true"
            )
        self.needs_reference = bool(needs_reference)

    # ------------------------------------------------------------------------------
    def __call__(
        self,
        test: EmbeddingSet,
        reference: EmbeddingSet | None = None,
        extras: dict | None = None,
    ) -> EvalResult:
        extras = extras or {}
        if not isinstance(test, EmbeddingSet):
            raise TypeError(f"test must be an EmbeddingSet, got {type(test).__name__}")
        if len(test) == 0:
            raise ValueError(
                "the test set is empty (0 embeddings): nothing to evaluate; check the test split"
            )
        if reference is not None and not isinstance(reference, EmbeddingSet):
            raise TypeError(f"reference must be an EmbeddingSet, got {type(reference).__name__}")
        t0 = time.perf_counter()
        x = prepare_embeddings(test.embeddings, self.similarity, "test embeddings")
        labels = test.labels
        reference_labels = None
        if reference is not None and "knn_acc" in self.metrics:
            labels, reference_labels = shared_labels(test, reference)
        out: dict[str, float] = {}
        meta: dict[str, Any] = {
            "similarity": self.similarity,
            "metrics": list(self.metrics),
            "n_test": len(test),
            "n_test_classes": test.num_classes,
        }
        if any(m in self.metrics for m in RETRIEVAL_METRICS):
            out.update(self._retrieval(x, labels, meta))
        if "nmi" in self.metrics or "f1" in self.metrics:
            wanted = [m for m in ("nmi", "f1") if m in self.metrics]
            out.update(
                clustering_scores(
                    x,
                    labels,
                    seeds=self.kmeans_seeds,
                    niter=self.kmeans_niter,
                    backend=self.kmeans_backend,
                    device=self.device,
                    metrics=wanted,
                    jobs=self.kmeans_jobs,
                )
            )
            meta.update(
                kmeans_seeds=list(self.kmeans_seeds),
                kmeans_niter=self.kmeans_niter,
                kmeans_backend=resolve_kmeans_backend(self.kmeans_backend),
                kmeans_k=test.num_classes,
            )
        if "knn_acc" in self.metrics:
            out.update(self._knn_accuracy(x, labels, reference, reference_labels, meta))
        if "softmax_acc" in self.metrics:
            if test.logits is not None:
                out["softmax_acc"] = logits_accuracy(test.logits, labels)
            else:
                meta["softmax_acc"] = "skipped: the test EmbeddingSet has no logits"
        if "vrf" in self.metrics:
            from .verification import vrf_scores

            out.update(
                vrf_scores(x, labels, self.vrf_negatives, seeds=self.vrf_seeds, similarity=self.similarity)
            )
            meta["vrf_seeds"] = list(self.vrf_seeds)
        from .faces import FACE_PROTOCOLS, face_scores

        face_metrics = [m for m in self.metrics if m in FACE_PROTOCOLS]
        if face_metrics:
            out.update(
                face_scores(
                    x,
                    labels,
                    extras,
                    face_metrics,
                    similarity=self.similarity,
                    far=self.far,
                    backend=self.backend,
                    device=self.device,
                )
            )
        meta["seconds"] = time.perf_counter() - t0
        return EvalResult(out, meta)

    # ------------------------------------------------------------------------------
    def _retrieval(self, x: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> dict[str, float]:
        """Recall@K, MAP@R, R-precision from ONE kNN search at the largest K needed."""
        n = len(labels)
        positives = positives_per_query(labels, labels, reference_includes_query=True)
        valid = positives > 0
        n_single = int((~valid).sum())
        if n_single and self.singleton_queries == "error":
            first = int(np.flatnonzero(~valid)[0])
            raise ValueError(
                f"{n_single} test queries belong to classes with a single test item (e.g. label "
                f"{labels[first]} at index {first}): they have no positive for Recall@K; "
                "drop them or set singleton_queries: exclude"
            )
        if not valid.any():
            raise ValueError("no test class has two or more items: Recall@K / MAP@R are undefined")
        wants = {m for m in RETRIEVAL_METRICS if m in self.metrics}
        k_first_hit = max(self.ks) if "recall" in wants else 0
        k_top = int(positives.max()) if wants & {"map_at_r", "r_precision"} else 0
        if max(k_first_hit, k_top) > n - 1:
            raise ValueError(
                f"Recall@K with K={k_first_hit} needs more than K other items, but the test set has only "
                f"{n} items ({n - 1} candidates per query); lower ks"
            )
        ranks = search_self(
            x,
            labels,
            at_r=bool(k_top),
            k_first_hit=k_first_hit,
            similarity=self.similarity,
            backend=self.backend,
            device=self.device,
            chunk_size=self.chunk_size,
        )
        out: dict[str, float] = {}
        if "recall" in wants:
            for kk in self.ks:
                out[f"recall@{kk}"] = float((ranks.first_hit[valid] < kk).mean())
        matches, r = ranks.matches_at_r[valid], positives[valid]
        if "map_at_r" in wants:
            out["map@r"] = float(average_precision_at_r_per_query(matches, r).mean())
        if "r_precision" in wants:
            out["r_precision"] = float(r_precision_per_query(matches, r).mean())
        out["recall_excluded_singletons"] = float(n_single)
        meta.update(knn_backend=ranks.backend, knn_k=max(k_first_hit, k_top), device=self.device)
        return out

    def _knn_accuracy(
        self,
        x: np.ndarray,
        labels: np.ndarray,
        reference: EmbeddingSet | None,
        reference_labels: np.ndarray | None,
        meta: dict[str, Any],
    ) -> dict[str, float]:
        """kNN recognition (seen-class protocol): test queries vote over the reference set."""
        if reference is None:
            raise ValueError(
                "metric knn_acc needs reference embeddings (the training split): "
                "call evaluator(test, reference=...)"
            )
        if len(reference) == 0:
            raise ValueError("metric knn_acc: the reference set is empty (0 embeddings)")
        ref = prepare_embeddings(reference.embeddings, self.similarity, "reference embeddings")
        if ref.shape[1] != x.shape[1]:
            raise ValueError(f"reference dimension {ref.shape[1]} != test dimension {x.shape[1]}")
        if self.knn_k > len(ref):
            raise ValueError(f"knn_k={self.knn_k} exceeds the {len(ref)} reference items")
        absent = ~np.isin(labels, reference_labels)
        n_absent = int(absent.sum())
        if n_absent and self.absent_class_queries == "error":
            first = int(np.flatnonzero(absent)[0])
            raise ValueError(
                f"knn_acc: {n_absent} of {len(labels)} test queries have a class absent from the reference "
                f"set (e.g. label {labels[first]} at index {first}), so no neighbour can name it; "
                "check the splits, or set absent_class_queries: exclude (PML's rule) or wrong"
            )
        if n_absent == len(labels) and self.absent_class_queries == "exclude":
            raise ValueError(
                f"knn_acc: none of the {len(labels)} test queries has its class in the reference set; "
                "the test and reference splits share no class"
            )
        correct = np.zeros(len(labels), dtype=bool)
        for start, _, idx in iter_knn(
            x,
            ref,
            self.knn_k,
            similarity=self.similarity,
            backend=self.backend,
            device=self.device,
            chunk_size=self.chunk_size,
            prepared=True,
        ):
            predicted = majority_vote(reference_labels[idx], self.knn_k)
            correct[start : start + len(idx)] = predicted == labels[start : start + len(idx)]
        counted = ~absent if self.absent_class_queries == "exclude" else np.ones(len(labels), dtype=bool)
        meta.update(
            knn_acc_k=self.knn_k, n_reference=len(ref), knn_acc_absent_classes=self.absent_class_queries
        )
        return {"knn_acc": float(correct[counted].mean()), "knn_acc_absent_class_queries": float(n_absent)}


def _resolve_device(device: str) -> str:
    device = str(device)
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r} must be cpu, cuda, cuda:N or auto")
    return device


def _seed_list(seeds: int | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(seeds, int | np.integer):
        if seeds < 1:
            raise ValueError(f"{name}={seeds} must be >= 1")
        return tuple(range(int(seeds)))
    out = tuple(int(s) for s in seeds)
    if not out:
        raise ValueError(f"{name}: empty seed list")
    return out
