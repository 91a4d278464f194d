"""GPU check, stage 3 — the evaluator at Online-Products scale on the GPU, against pytorch-metric-learning.

On SOP-shaped synthetic embeddings (``gpu``: 60,502 × 512 in 11,316 classes, as the test split of
docs/datasets.md §3; ``cpu-smoke``: 3,000 × 64 in 560 classes), with cosine similarity
(configs/eval/sop.yaml):

* our ``Evaluator``, torch backend, on the device: Recall@{1,10,100,1000}, then NMI + F1 with one k-means
  seed (k-means: faiss-GPU when faiss has GPU support, else the torch k-means on the device);
* the faiss backend on the device, when faiss has GPU support (cpu-smoke: faiss-cpu, when installed):
  Recall@K must equal the torch backend's;
* PML's ``AccuracyCalculator`` on the same embeddings on the device: ``precision_at_1`` (= Recall@1,
  docs/metrics.md §4.2) must equal our Recall@1; PML's NMI (faiss k-means; needs faiss) must agree with ours
  within k-means' seed-to-seed spread — on the whole set when faiss has GPU support, else on the subsample;
* a class-complete subsample (about 10,000 items; cpu-smoke 1,500) evaluated on the device and on the CPU
  backend: the metrics must be equal (Recall@K up to near-tie flips of at most 2 queries, NMI / F1 within
  0.002, since the GPU rounds sums in another order); the exact differences are recorded.

In cpu-smoke the "device" is the CPU: the same code path, checking the plumbing, not the GPU.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_common import Result, stage_main

KS = [1, 10, 100, 1000]
SIZES = {
    "gpu": {"n": 60502, "classes": 11316, "dim": 512, "subsample": 10000},
    "cpu-smoke": {"n": 3000, "classes": 560, "dim": 64, "subsample": 1500},
}
NOISE = 2.4  # noise norm against unit-norm class centres: Recall@1 about 0.56 at SOP scale
RECALL_FLIPS = 2  # queries whose first hit may move across a K on another device (near-tied scores)
CLUSTER_TOL = 0.002  # NMI / F1, same k-means seed, GPU against CPU
PML_NMI_TOL = 0.01  # NMI, our k-means against PML's faiss k-means (other seeds and initialisation)


def sop_like(n: int, classes: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered embeddings shaped like the SOP test split: every class has >= 2 items (mean n / classes),
    items are ``centre + NOISE·ε`` with unit-norm centres and ``ε ~ N(0, I/dim)``."""
    rng = np.random.default_rng(seed)
    sizes = 2 + rng.multinomial(n - 2 * classes, np.full(classes, 1.0 / classes))
    labels = np.repeat(np.arange(classes), sizes)[rng.permutation(n)]
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + NOISE * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return x.astype(np.float32), labels.astype(np.int64)


def class_subsample(labels: np.ndarray, target: int, seed: int = 1) -> np.ndarray:
    """Indices of whole classes drawn at random until about ``target`` items (classes stay complete)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.unique(labels))
    counts = np.bincount(labels)
    chosen = order[: int(np.searchsorted(np.cumsum(counts[order]), target)) + 1]
    return np.flatnonzero(np.isin(labels, chosen))


def faiss_status() -> dict[str, Any]:
    try:
        import faiss
    except ImportError:
        return {"found": False, "gpu": False}
    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    return {"found": True, "gpu": gpu, "version": getattr(faiss, "__version__", None)}


def timed(fn: Callable[[], Any], device: str) -> tuple[Any, dict[str, Any]]:
    """``fn()`` with its wall time and the peak GPU memory torch allocated meanwhile (faiss' own is not
    seen)."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    value = fn()
    if cuda:
        torch.cuda.synchronize()
    cost = {"seconds": round(time.perf_counter() - start, 3)}
    if cuda:
        cost["peak_torch_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return value, cost


def ours(x: np.ndarray, labels: np.ndarray, device: str, **kwargs: Any) -> tuple[dict[str, float], dict]:
    from npair.evaluation import EmbeddingSet, Evaluator

    evaluator = Evaluator(similarity="cosine", device=device, kmeans_seeds=1, kmeans_niter=20, **kwargs)
    result, cost = timed(lambda: evaluator(EmbeddingSet(x, labels)), device)
    return dict(result), {**cost, "meta": {k: v for k, v in result.meta.items() if k != "seconds"}}


def pml(x: np.ndarray, labels: np.ndarray, device: str, include: str, faiss_gpu: bool) -> tuple[float, dict]:
    """PML's metric on L2-normalised embeddings (its tester's convention; cosine = inner product then)."""
    import torch
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN, FaissKMeans

    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    kwargs: dict[str, Any] = {
        "device": torch.device(device),
        "knn_func": CustomKNN(CosineSimilarity(), batch_size=4096),
    }
    if include == "NMI":
        kwargs["kmeans_func"] = FaissKMeans(niter=20, gpu=faiss_gpu)
    else:
        kwargs["k"] = 1
    calculator = AccuracyCalculator(include=(include,), **kwargs)
    value, cost = timed(lambda: calculator.get_accuracy(xn, labels)[include], device)
    return float(value), cost


def compare(a: dict[str, float], b: dict[str, float], keys: list[str]) -> dict[str, float]:
    return {k: abs(float(a[k]) - float(b[k])) for k in keys}


def run(mode: str, work: Path, result: Result, budget_s: float) -> None:
    import torch

    size = SIZES[mode]
    device = "cuda" if mode == "gpu" else "cpu"
    if mode == "gpu" and not torch.cuda.is_available():
        result.check("CUDA available", False, "torch.cuda.is_available() is False")
        return
    faiss = faiss_status()
    result.figures.update(
        data={**size, "noise": NOISE, "similarity": "cosine", "ks": KS}, device=device, faiss=faiss
    )
    x, labels = sop_like(size["n"], size["classes"], size["dim"])
    recall_keys = [f"recall@{k}" for k in KS]
    kmeans_backend = "faiss" if faiss["gpu"] or (mode == "cpu-smoke" and faiss["found"]) else "torch"

    full: dict[str, Any] = {}
    recall, full["recall_torch"] = ours(x, labels, device, metrics=["recall"], ks=KS, backend="torch")
    clusters, full["nmi_f1_one_seed"] = ours(
        x, labels, device, metrics=["nmi", "f1"], kmeans_backend=kmeans_backend
    )
    full["recall_torch"]["metrics"], full["nmi_f1_one_seed"]["metrics"] = recall, clusters
    print(
        f"ours on {device}: {recall} in {full['recall_torch']['seconds']} s; {clusters} in "
        f"{full['nmi_f1_one_seed']['seconds']} s (k-means: {kmeans_backend})",
        flush=True,
    )
    valid = len(labels) - int(recall["recall_excluded_singletons"])

    if faiss["gpu"] or (mode == "cpu-smoke" and faiss["found"]):
        faiss_recall, full["recall_faiss"] = ours(
            x, labels, device, metrics=["recall"], ks=KS, backend="faiss"
        )
        full["recall_faiss"]["metrics"] = faiss_recall
        diff = compare(faiss_recall, recall, recall_keys)
        result.check(
            "faiss backend Recall@K = torch backend's",
            max(diff.values()) <= RECALL_FLIPS / valid,
            {"abs_diff": diff, "faiss_s": full["recall_faiss"]["seconds"]},
        )
    else:
        result.check(
            "faiss backend Recall@K = torch backend's",
            None,
            "skipped: faiss " + ("has no GPU support here" if faiss["found"] else "is not installed"),
        )

    p_at_1, full["pml_precision_at_1"] = pml(x, labels, device, "precision_at_1", faiss["gpu"])
    full["pml_precision_at_1"]["value"] = p_at_1
    result.check(
        "our Recall@1 = PML precision_at_1",
        abs(p_at_1 - recall["recall@1"]) <= 1 / valid,
        {
            "ours": recall["recall@1"],
            "pml": p_at_1,
            "ours_s": full["recall_torch"]["seconds"],
            "pml_s": full["pml_precision_at_1"]["seconds"],
        },
    )

    sub = class_subsample(labels, size["subsample"])
    xs, ls = x[sub], labels[sub]
    kwargs = {"metrics": ["recall", "nmi", "f1"], "ks": KS, "backend": "torch", "kmeans_backend": "torch"}
    on_device, sub_device = ours(xs, ls, device, **kwargs)
    on_cpu, sub_cpu = ours(xs, ls, "cpu", **kwargs)
    diff = compare(on_device, on_cpu, [*recall_keys, "nmi", "f1"])
    sub_valid = len(ls) - int(on_cpu["recall_excluded_singletons"])
    ok = (
        all(diff[k] <= RECALL_FLIPS / sub_valid for k in recall_keys)
        and diff["nmi"] <= CLUSTER_TOL
        and diff["f1"] <= CLUSTER_TOL
    )
    result.check(
        f"subsample metrics on {device} = on the CPU backend",
        ok,
        {
            "items": len(ls),
            "classes": int(np.unique(ls).size),
            "abs_diff": diff,
            "identical": all(v == 0 for v in diff.values()),
        },
    )
    result.figures["subsample"] = {
        "items": len(ls),
        device: on_device,
        "cpu": on_cpu,
        f"{device}_cost": sub_device,
        "cpu_cost": sub_cpu,
    }

    if not faiss["found"]:
        result.check("our NMI ≈ PML NMI", None, "skipped: PML's k-means needs faiss, which is not installed")
    else:
        if faiss["gpu"]:
            pml_nmi, cost = pml(x, labels, device, "NMI", True)
            ours_nmi, where = clusters["nmi"], "whole set"
        else:
            pml_nmi, cost = pml(xs, ls, device, "NMI", False)
            ours_nmi, where = on_device["nmi"], "subsample (faiss has no GPU support: PML k-means on the CPU)"
        full["pml_nmi"] = {**cost, "value": pml_nmi, "on": where}
        result.check(
            "our NMI ≈ PML NMI",
            abs(pml_nmi - ours_nmi) <= PML_NMI_TOL,
            {"ours": ours_nmi, "pml": pml_nmi, "on": where, "tolerance": PML_NMI_TOL},
        )
    result.figures["full"] = full


if __name__ == "__main__":
    stage_main(run)
