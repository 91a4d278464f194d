"""Per-update cost of N-pair-mc (2N images) vs the naive (N+1)-tuplet loss (N(N+1) images).

The paper's efficiency argument (§3, abstract): for the same N classes per anchor, N-pair-mc needs
2N embeddings per update while building N (N+1)-tuplets naively needs N(N+1), so the cost ratio
should approach (N+1)/2 when the network dominates. One update = forward + backward through the
glyphs backbone (``SmallConvNet(in_channels=1)`` at 32×32) + a linear head to 64-d, the loss, and
an Adam step. Inputs are random images (cost does not depend on content) in each loss's layout.
The two losses are measured interleaved (mc, tuplet, mc, tuplet, ...) so machine noise hits both;
the ratio is taken per repeat and its median reported.

    python scripts/bench_losses.py --repeats 5 --out outputs/bench/bench_losses.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from npair.losses import NPairMCLoss, TupletLoss
from npair.models import EmbeddingModel
from npair.models.small_convnet import SmallConvNet

EMBEDDING_DIM = 64
IMAGE_SIZE = 32


def npair_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """2N images, class_blocks layout: N classes × (anchor, positive)."""
    labels = torch.arange(n).repeat_interleave(2)
    return torch.randn(2 * n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen), labels


def tuplet_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """N(N+1) images, tuplets layout: row i = [a_i, p_i, one image of each other class]."""
    labels = []
    for i in range(n):
        labels += [i, i] + [j for j in range(n) if j != i]
    return torch.randn(n * (n + 1), 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen), torch.tensor(labels)


class Update:
    """One training update of a fresh model with its own optimizer, for one loss."""

    def __init__(self, loss: nn.Module, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = EmbeddingModel(SmallConvNet(in_channels=1), EMBEDDING_DIM)
        self.loss = loss
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        out = self.loss(self.model(images), labels)
        out.backward()
        self.opt.step()
        return time.perf_counter() - start


def run(ns: list[int], repeats: int, warmup: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in ns:
        mc_update, tup_update = Update(NPairMCLoss(), seed), Update(TupletLoss(), seed)
        mc_batch, tup_batch = npair_batch(n, gen), tuplet_batch(n, gen)
        for _ in range(warmup):
            mc_update(*mc_batch)
            tup_update(*tup_batch)
        t_mc, t_tup = [], []
        for _ in range(repeats):  # interleaved: noise hits both losses alike
            t_mc.append(mc_update(*mc_batch))
            t_tup.append(tup_update(*tup_batch))
        ratios = [b / a for a, b in zip(t_mc, t_tup)]
        rows.append(
            {
                "N": n,
                "images_npair_mc": 2 * n,
                "images_tuplet": n * (n + 1),
                "npair_mc_ms_median": 1e3 * statistics.median(t_mc),
                "tuplet_ms_median": 1e3 * statistics.median(t_tup),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "expected_ratio": (n + 1) / 2,
                "npair_mc_ms": [1e3 * t for t in t_mc],
                "tuplet_ms": [1e3 * t for t in t_tup],
            }
        )
        print_row(rows[-1], header=len(rows) == 1)
    return rows


def print_row(r: dict, header: bool) -> None:
    if header:
        print(
            f"{'N':>4} {'imgs mc':>8} {'imgs tup':>9} {'mc ms':>9} {'tuplet ms':>10} "
            f"{'ratio':>7} {'[min, max]':>15} {'(N+1)/2':>8}"
        )
    print(
        f"{r['N']:>4} {r['images_npair_mc']:>8} {r['images_tuplet']:>9} {r['npair_mc_ms_median']:>9.1f} "
        f"{r['tuplet_ms_median']:>10.1f} {r['ratio_median']:>7.2f} "
        f"{'[' + format(r['ratio_min'], '.2f') + ', ' + format(r['ratio_max'], '.2f') + ']':>15} "
        f"{r['expected_ratio']:>8.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[8, 16, 32], help="values of N")
    parser.add_argument("--repeats", type=int, default=5, help="timed updates per loss and N")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates per loss and N")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads; 0 keeps torch's default. 1 by default: on a small shared CPU, "
        "multi-thread timings of small batches are dominated by OpenMP waits "
        "(measured: 1.5 s for a 16-image update)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/bench_losses.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.ns, args.repeats, args.warmup, args.seed)
    result = {
        "benchmark": "bench_losses",
        "what": "per-update wall time (fwd+bwd SmallConvNet 32x32 + linear head 64-d, loss, Adam step), CPU",
        "ratio": "tuplet time / npair_mc time, per interleaved repeat; median reported",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
