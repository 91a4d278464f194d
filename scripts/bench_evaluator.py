"""Benchmark the evaluator against pytorch-metric-learning (PML) and the matrix-product floor,
over a sweep of test-set sizes shaped like Stanford Online Products.

Synthetic, clustered embeddings with SOP's class density (60,502 × 512 in 11,316 classes of
2 to ~15 images; a size n gets round(n · 11,316 / 60,502) classes): class centres on the
sphere plus Gaussian noise, at a noise level giving Recall@1 around 0.6. Every measurement
runs in a fresh subprocess and reports wall time and peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which sees faiss and torch allocations; it
includes the worker holding the data: 0.12 GiB at 60,502 × 512). Rounds are interleaved:
each round runs every measurement at every size once, in the same order, so ours and PML
always meet the same machine load; ratios are taken within a round and reported as the
median [min, max] over rounds.

Measurements (``--only`` selects a subset):

* ``ours_recall``  ``Evaluator(metrics=[recall], ks=[1, 10, 100, 1000])``;
* ``ours_map_at_r``  ``Evaluator(metrics=[map_at_r])``;
* ``pml_precision_at_1``  PML ``AccuracyCalculator(include=("precision_at_1",), k=1)`` (its
  cheapest setting; the default ``k=None`` would rank every item);
* ``pml_map_at_r``  PML ``AccuracyCalculator(include=("mean_average_precision_at_r",), k="max_bin_count")``;
* ``matmul_floor``  the full ``n × n`` similarity matrix in torch chunks, nothing else (the
  floor of any method that computes every product);
* with ``--kmeans``: ``ours_kmeans_1seed`` (``metrics=[nmi, f1]``, one faiss k-means seed,
  niter 20), ``ours_kmeans_2seeds_1job`` / ``ours_kmeans_2seeds_2jobs`` (two seeds one after
  the other / at once, ``kmeans_jobs``) and ``pml_nmi`` (PML's faiss k-means, niter 20);
* ``ours_recall_faiss`` (only with ``--only``): ``ours_recall`` with ``backend=faiss``.

Writes ``outputs/bench/bench_evaluator.json`` and prints one markdown table per size.

    python scripts/bench_evaluator.py --sizes 5000 10000 20000 40000 60502   # the README's sweep
    python scripts/bench_evaluator.py --sizes 5000 --rounds 3                # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SOP_ITEMS, SOP_CLASSES = 60502, 11316
KS = [1, 10, 100, 1000]
DEFAULT_MEASUREMENTS = ("ours_recall", "pml_precision_at_1", "ours_map_at_r", "pml_map_at_r", "matmul_floor")
KMEANS_MEASUREMENTS = ("ours_kmeans_1seed", "pml_nmi", "ours_kmeans_2seeds_1job", "ours_kmeans_2seeds_2jobs")
ALL_MEASUREMENTS = DEFAULT_MEASUREMENTS + KMEANS_MEASUREMENTS + ("ours_recall_faiss",)
RATIOS = (  # (ours, reference, target)
    ("ours_recall", "pml_precision_at_1", 0.7),
    ("ours_map_at_r", "pml_map_at_r", None),
    ("ours_recall", "matmul_floor", None),
    ("ours_map_at_r", "matmul_floor", None),
    ("ours_recall_faiss", "pml_precision_at_1", None),
    ("ours_kmeans_1seed", "pml_nmi", None),
)


def classes_for(n: int) -> int:
    """SOP's class density: 60,502 items in 11,316 classes."""
    return max(1, round(n * SOP_CLASSES / SOP_ITEMS))


def make_embeddings(n: int, classes: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SOP-like clustered data: every class has >= 2 items (mean n/classes), items are
    ``centre + noise·ε`` with unit-norm centres and ``ε ~ N(0, I/dim)``."""
    if n < 2 * classes:
        raise ValueError(f"n={n} must be at least 2 × classes={classes} (every class needs two images)")
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

    xn = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)
    result: dict = {}
    t0 = time.perf_counter()
    if name == "matmul_floor":
        xt = torch.from_numpy(xn)
        chunk = max(1, (256 * 2**20) // (4 * len(xt)))
        for s in range(0, len(xt), chunk):
            xt[s : s + chunk] @ xt.T
    elif name.startswith("ours_recall"):
        backend = "faiss" if name.endswith("faiss") else "auto"
        ev = Evaluator(
            metrics=["recall"], ks=[k for k in KS if k < len(x)], similarity="cosine", backend=backend
        )
        result = dict(ev(EmbeddingSet(x, labels)))
    elif name == "ours_map_at_r":
        result = dict(Evaluator(metrics=["map_at_r"], similarity="cosine")(EmbeddingSet(x, labels)))
    elif name.startswith("ours_kmeans"):
        seeds = 1 if "1seed" in name else 2
        jobs = 2 if name.endswith("2jobs") else 1
        ev = Evaluator(metrics=["nmi", "f1"], similarity="cosine", kmeans_seeds=seeds, kmeans_jobs=jobs)
        result = dict(ev(EmbeddingSet(x, labels)))
        result["seconds_per_seed"] = (time.perf_counter() - t0) / seeds
    elif name.startswith("pml_"):
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        include, k = {
            "pml_precision_at_1": (("precision_at_1",), 1),
            "pml_map_at_r": (("mean_average_precision_at_r",), "max_bin_count"),
            "pml_nmi": (("NMI",), None),
        }[name]
        t0 = time.perf_counter()  # PML's tester L2-normalises the embeddings first (done above)
        calc = AccuracyCalculator(include=include, k=k, device=torch.device("cpu"))
        result = {key: float(v) for key, v in calc.get_accuracy(xn, labels).items()}
    else:
        raise ValueError(f"unknown measurement {name!r}")
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"name": name, "seconds": seconds, "peak_rss_gib": peak_kib / 2**20, "result": result}


def _measure(name: str, data: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--data", data]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {
            "name": name,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# summary


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(rounds: list[dict[str, dict]]) -> dict:
    """Per measurement: median [min, max] seconds, max peak RSS, the last result; per
    ratio: median [min, max] of the per-round ratios."""
    names = [n for n in rounds[0] if all("seconds" in r.get(n, {}) for r in rounds)]
    out: dict = {"measurements": {}, "ratios": {}, "errors": {}}
    for r in rounds:
        for n, m in r.items():
            if "error" in m:
                out["errors"][n] = m["error"]
    for n in names:
        out["measurements"][n] = {
            "seconds": _spread([r[n]["seconds"] for r in rounds]),
            "peak_rss_gib": max(r[n]["peak_rss_gib"] for r in rounds),
            "result": rounds[-1][n]["result"],
        }
    for ours, ref, target in RATIOS:
        if ours in names and ref in names:
            ratio = _spread([r[ours]["seconds"] / r[ref]["seconds"] for r in rounds])
            out["ratios"][f"{ours} / {ref}"] = {**ratio, "target": target}
    return out


def _fmt(spread: dict[str, float], digits: int = 2) -> str:
    return f"{spread['median']:.{digits}f} [{spread['min']:.{digits}f}, {spread['max']:.{digits}f}]"


def _result_text(result: dict) -> str:
    keep = {k: v for k, v in result.items() if not k.endswith("excluded_singletons") and "_se_" not in k}
    return ", ".join(f"{k}={v:.4f}" for k, v in keep.items())


def table(n: int, summary: dict) -> str:
    lines = [
        f"n = {n:,} ({classes_for(n):,} classes)",
        "",
        "| measurement | wall s, median [min, max] | peak RSS GiB | result |",
        "|---|---:|---:|---|",
    ]
    for name, m in summary["measurements"].items():
        lines.append(
            f"| {name} | {_fmt(m['seconds'])} | {m['peak_rss_gib']:.2f} | {_result_text(m['result'])} |"
        )
    for name, error in summary["errors"].items():
        lines.append(f"| {name} | error | | {error} |")
    if summary["ratios"]:
        lines.append("")
    for name, r in summary["ratios"].items():
        target = f" (target <= {r['target']})" if r["target"] else ""
        lines.append(f"- {name}: {_fmt(r)}{target}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 40000, SOP_ITEMS])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3 for a median and a range)")
    p.add_argument("--dim", type=int, default=512, help="embedding size (SOP: 512)")
    p.add_argument("--noise", type=float, default=2.4, help="noise norm vs unit centres; 2.4: Recall@1 ≈ 0.6")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kmeans", action="store_true", help="also the k-means measurements (NMI/F1 per seed)")
    p.add_argument("--only", nargs="+", choices=ALL_MEASUREMENTS, help="run only these measurements")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench_evaluator.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.data)))
        return 0
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    names = list(args.only or DEFAULT_MEASUREMENTS + (KMEANS_MEASUREMENTS if args.kmeans else ()))
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        data = {}
        for n in args.sizes:
            x, labels = make_embeddings(n, classes_for(n), args.dim, args.noise, args.seed)
            data[n] = str(Path(tmp) / f"embeddings_{n}.npz")
            np.savez(data[n], x=x, labels=labels)
        rounds: dict[int, list[dict]] = {n: [] for n in args.sizes}
        for k in range(args.rounds):
            for n in args.sizes:
                measured = {}
                for name in names:
                    print(f"round {k + 1}/{args.rounds}, n={n}: {name} ...", file=sys.stderr, flush=True)
                    measured[name] = _measure(name, data[n])
                    print(f"  {measured[name]}", file=sys.stderr, flush=True)
                rounds[n].append(measured)
            loads.append(os.getloadavg())
    summaries = {n: summarise(rounds[n]) for n in args.sizes}
    payload = {
        "config": {"sizes": args.sizes, "rounds": args.rounds, "dim": args.dim, "noise": args.noise,
                   "seed": args.seed, "ks": KS, "similarity": "cosine", "measurements": names},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_start_and_after_each_round": loads},
        "sizes": {str(n): {"classes": classes_for(n), "summary": summaries[n], "rounds": rounds[n]}
                  for n in args.sizes},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(payload, indent=2) + "\n")
    tmp_out.replace(args.out)
    for n in args.sizes:
        print(table(n, summaries[n]) + "\n")
    print(f"load average (1, 5, 15 min) at the start and after each round: {loads}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
