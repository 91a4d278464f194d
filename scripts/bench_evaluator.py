"""Benchmark the evaluator at Stanford-Online-Products scale against pytorch-metric-learning.

Synthetic, clustered embeddings shaped like the SOP test split (60,502 × 512, 11,316
classes of 2 to ~15 images): class centres on the sphere plus Gaussian noise, at a noise
level giving Recall@1 around 0.6. Every measurement runs in a fresh subprocess and
reports wall time and peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
which, unlike tracemalloc, sees faiss and torch allocations; it includes the ~0.25 GiB
the worker needs to hold the data).

Measurements (``--only`` selects a subset):

* ``faiss_flat_k1001``  raw faiss ``IndexFlatIP`` search of all queries at k = 1001 (the floor
  for a top-1000 search, no metric work);
* ``torch_matmul``  the raw chunked ``x @ xᵀ`` blocks the torch backend computes (its floor);
* ``recall_torch``, ``recall_faiss``  ``Evaluator(metrics=[recall], ks=[1,10,100,1000])``;
* ``pml_precision_at_1``  PML ``AccuracyCalculator(include=("precision_at_1",), k=1)`` (its
  cheapest setting; the default ``k=None`` would rank all 60,501 neighbours);
* ``cluster1_faiss``, ``cluster1_torch``, ``cluster10_faiss``  ``Evaluator(metrics=[nmi, f1])``
  with 1 or 10 k-means seeds and the faiss (default) / torch k-means backend (niter = 20);
* ``pml_nmi``  PML ``AccuracyCalculator(include=("NMI",))`` (faiss k-means, niter = 20);
* ``cluster10_torch`` (only with ``--only``: ~10× cluster1_torch).

Writes ``outputs/bench/bench_evaluator.json`` and prints a markdown table.

    python scripts/bench_evaluator.py                       # full SOP scale (~1.5 h on 2 shared cores)
    python scripts/bench_evaluator.py --n 6000 --classes 1100   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_MEASUREMENTS = (
    "faiss_flat_k1001",
    "torch_matmul",
    "recall_torch",
    "recall_faiss",
    "pml_precision_at_1",
    "cluster1_faiss",
    "cluster1_torch",
    "pml_nmi",
    "cluster10_faiss",
)
ALL_MEASUREMENTS = DEFAULT_MEASUREMENTS + ("cluster10_torch",)
KS = [1, 10, 100, 1000]


def make_embeddings(n: int, classes: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SOP-like clustered data: every class has >= 2 items (mean n/classes), items are
    ``centre + noise·ε`` with unit-norm centres and ``ε ~ N(0, I/dim)``."""
    if n < 2 * classes:
        raise ValueError(f"--n {n} must be at least 2 × --classes {classes} (every class needs two images)")
    rng = np.random.default_rng(seed)
    sizes = 2 + rng.multinomial(n - 2 * classes, np.full(classes, 1.0 / classes))
    labels = np.repeat(np.arange(classes), sizes)
    labels = labels[rng.permutation(n)]
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return x.astype(np.float32), labels.astype(np.int64)


# --------------------------------------------------------------------------------------
# worker side: one measurement per process


def _worker(name: str, data: str) -> dict:
    import torch

    with np.load(data) as d:
        x, labels = d["x"], d["labels"]
    from npair.evaluation import EmbeddingSet, Evaluator

    t0 = time.perf_counter()
    result: dict = {}
    if name == "faiss_flat_k1001":
        import faiss

        xn = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)
        t0 = time.perf_counter()
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(xn)
        for s in range(0, len(xn), 8192):
            index.search(xn[s : s + 8192], 1001)
    elif name == "torch_matmul":
        from npair.evaluation.knn import torch_chunk_size

        xt = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
        t0 = time.perf_counter()
        chunk = torch_chunk_size(len(xt))
        for s in range(0, len(xt), chunk):
            xt[s : s + chunk] @ xt.T
    elif name.startswith("recall_"):
        ev = Evaluator(metrics=["recall"], ks=KS, similarity="cosine", backend=name.split("_")[1])
        result = dict(ev(EmbeddingSet(x, labels)))
    elif name.startswith("cluster"):
        seeds = int(name[len("cluster") : name.index("_")])
        ev = Evaluator(
            metrics=["nmi", "f1"],
            similarity="cosine",
            kmeans_seeds=seeds,
            kmeans_backend=name.split("_")[1],
            kmeans_niter=20,
        )
        result = dict(ev(EmbeddingSet(x, labels)))
    elif name.startswith("pml_"):
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        xn = x / np.linalg.norm(x, axis=1, keepdims=True)  # PML's tester L2-normalises embeddings
        t0 = time.perf_counter()
        if name == "pml_precision_at_1":
            calc = AccuracyCalculator(include=("precision_at_1",), k=1, device=torch.device("cpu"))
        else:
            calc = AccuracyCalculator(include=("NMI",), device=torch.device("cpu"))
        result = {k: float(v) for k, v in calc.get_accuracy(xn, labels).items()}
    else:
        raise ValueError(f"unknown measurement {name!r}")
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"name": name, "seconds": seconds, "peak_rss_gib": peak_kib / 2**20, "result": result}


def _measure(name: str, data: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--data", data]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {
            "name": name,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------


def _table(rows: list[dict], ratios: dict[str, float]) -> str:
    lines = ["| measurement | wall s | peak RSS GiB | result |", "|---|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | error | | {r['error']} |")
            continue
        res = ", ".join(
            f"{k}={v:.4f}" for k, v in r["result"].items() if not k.endswith("_se") and "excluded" not in k
        )
        lines.append(f"| {r['name']} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | {res} |")
    if ratios:
        lines.append("")
        lines.extend(f"- {k}: {v:.2f}" for k, v in ratios.items())
    return "\n".join(lines)


def _ratios(rows: list[dict]) -> dict[str, float]:
    t = {r["name"]: r["seconds"] for r in rows if "seconds" in r}
    out = {}
    for ours in ("recall_torch", "recall_faiss"):
        if ours in t and "pml_precision_at_1" in t:
            out[f"{ours} / pml_precision_at_1 (target <= 1)"] = t[ours] / t["pml_precision_at_1"]
    for ours, seeds in (
        ("cluster1_torch", 1),
        ("cluster1_faiss", 1),
        ("cluster10_torch", 10),
        ("cluster10_faiss", 10),
    ):
        if ours in t and "pml_nmi" in t:
            out[f"{ours} per seed / pml_nmi (target <= 1.2)"] = t[ours] / seeds / t["pml_nmi"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=60502, help="embeddings (SOP test split: 60,502)")
    p.add_argument("--classes", type=int, default=11316, help="classes (SOP test split: 11,316)")
    p.add_argument("--dim", type=int, default=512, help="embedding size (SOP: 512)")
    p.add_argument(
        "--noise",
        type=float,
        default=2.4,
        help="noise level (norm of the noise vs unit-norm centres); 2.4 gives Recall@1 ≈ 0.6 at SOP scale",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=ALL_MEASUREMENTS, help="run only these measurements")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench_evaluator.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.data)))
        return 0

    x, labels = make_embeddings(args.n, args.classes, args.dim, args.noise, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "embeddings.npz")
        np.savez(data, x=x, labels=labels)
        for name in args.only or DEFAULT_MEASUREMENTS:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.append(_measure(name, data))
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    ratios = _ratios(rows)
    payload = {
        "config": {
            "n": args.n,
            "classes": args.classes,
            "dim": args.dim,
            "noise": args.noise,
            "seed": args.seed,
            "ks": KS,
            "similarity": "cosine",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        },
        "measurements": rows,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(_table(rows, ratios))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
