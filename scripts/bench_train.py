"""End-to-end training speed (images/s) and peak GPU memory of the real loop on generated JPEGs.

Generates JPEGs of CUB-like size (500×375, random shapes, one folder per class) in a temporary directory
(or reads an existing tree, ``--jpegs``), reads them with the ``folder`` dataset (JPEG decode, the paper's
resize/crop/flip transform), trains the backbone (GoogLeNet at 224 by default, ``pretrained=false``) with
each loss through ``npair.train.run`` for a few steps and reports images/s over the steps after the
warm-up: data loading, forward, loss, backward and the optimiser step, on whatever device is present
(CUDA if available), with the peak GPU memory of each run. Compile off and on, and several rounds, are
measured interleaved (round 1: every loss × compile mode, then round 2, ...); the table gives the median
and range over rounds (``--time-limit`` starts no run after it, past the first round). The JSON is rewritten
after every run, so a run stopped midway keeps what it measured. Writes outputs/bench/bench_train.json.

    python scripts/bench_train.py            # triplet and npair_mc, batch 120 on GPU / 12 on CPU
    python scripts/bench_train.py --batch 24 --steps 5 --losses triplet npair_mc npair_ovo contrastive
    # the GPU check's stage 2 (scripts/gpu_check.sh): the paper's 120-image batches, bf16, channels_last
    python scripts/bench_train.py --batch 120 --precision bf16 --channels-last true --workers 8 \\
        --compile-modes off on --rounds 3 --warmup 5 --steps 20
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]

from timed_run import timed_run

LOSSES = ("triplet", "npair_mc", "npair_ovo", "triplet_nm", "contrastive", "tuplet", "softmax")
COMPILE_MODES = ("off", "on")


def batch_overrides(loss: str, batch: int) -> tuple[list[str], int]:
    """The sampler size giving about ``batch`` images per step for ``loss``, and the exact image count."""
    if loss == "triplet":
        return [f"sampler.n_triplets={batch // 3}"], batch // 3 * 3
    if loss == "contrastive":
        return [f"sampler.n_pairs={batch // 2}"], batch // 2 * 2
    if loss == "tuplet":
        n = max(2, int((math.sqrt(1 + 4 * batch) - 1) / 2))
        return [f"sampler.n_classes={n}"], n * (n + 1)
    return [f"sampler.n_classes={batch // 2}", "sampler.n_per_class=2"], batch // 2 * 2


def make_jpegs(root: Path, n_classes: int, per_class: int, size: tuple[int, int] = (500, 375)) -> None:
    """``n_classes`` folders of ``per_class`` JPEGs: noisy backgrounds with a class-coloured ellipse."""
    rng = np.random.default_rng(0)
    width, height = size
    ellipse = (max(1, width * 2 // 5), max(1, height * 2 // 5))
    for c in range(n_classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        for i in range(per_class):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) // 2 + 64
            image = Image.fromarray(pixels)
            x, y = int(rng.integers(0, width - ellipse[0] + 1)), int(rng.integers(0, height - ellipse[1] + 1))
            ImageDraw.Draw(image).ellipse([x, y, x + ellipse[0], y + ellipse[1]], fill=colour)
            image.save(folder / f"{i:03d}.jpg", quality=90)


def class_folders(root: Path) -> list[str]:
    """The class folder names of an image tree, sorted (the ``folder`` dataset's class names)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def peak_gpu_memory() -> dict[str, float] | None:
    """Peak allocated / reserved GPU memory (GiB) since the last reset, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return {
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
    }


def reset_between_runs() -> None:
    """Fresh compile caches (no recompile limit carried over) and fresh GPU peak-memory counters."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure(
    loss: str,
    compiled: bool,
    round_: int,
    data_root: Path,
    workdir: Path,
    args: argparse.Namespace,
    test_classes: list[str],
) -> dict[str, Any]:
    sizes, images_per_step = batch_overrides(loss, args.batch)
    overrides = [
        "dataset=folder",
        f"dataset.root={data_root}",
        "dataset.build.split=lists",
        f"dataset.build.test_classes=[{','.join(test_classes)}]",
        f"dataset.image_size={args.image_size}",
        f"backbone={args.backbone}",
        *(["backbone.net.pretrained=false"] if args.backbone != "small_convnet" else []),
        f"loss={loss}",
        *sizes,
        f"trainer.max_steps={args.warmup + args.steps}",
        "trainer.eval_every=0",
        "trainer.log_every=1",
        "trainer.progress_bar=false",
        "trainer.probe_classes=0",
        "trainer.save_checkpoint=false",
        f"trainer.num_workers={args.workers}",
        f"trainer.precision={args.precision}",
        f"trainer.device={args.device}",
        f"trainer.channels_last={args.channels_last}",
        f"trainer.compile={str(compiled).lower()}",
        "trainer.deterministic=false",
        "eval.metrics=[recall]",
        "eval.ks=[1]",
        "logger=none",
        f"paths.root_dir={workdir}",
        *args.override,
    ]
    reset_between_runs()
    timed = timed_run(overrides, workdir / f"{loss}_compile-{'on' if compiled else 'off'}_round{round_}")
    seconds = timed.seconds_after(args.warmup)  # the steps after the warm-up, end to end
    record = timed.record
    return {
        "loss": loss,
        "compile": compiled,
        "round": round_,
        "images_per_step": images_per_step,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "images_per_s": round(images_per_step * args.steps / seconds, 2),
        "s_per_step": round(seconds / args.steps, 4),
        "warmup_s": round(timed.elapsed[args.warmup - 1], 2),
        "device": record["device"],
        "precision": record["precision"],
        "run_s_incl_setup_and_eval": round(timed.seconds, 1),
        "gpu_memory": peak_gpu_memory(),
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (loss, compile): median and range of images/s over rounds, the largest peak GPU memory, and the
    compile speed-up (median over rounds of on/off images/s, the two measured in the same round)."""
    rows = []
    keys = sorted({(r["loss"], r["compile"]) for r in runs}, key=lambda k: (k[0], k[1]))
    for loss, compiled in keys:
        mine = [r for r in runs if r["loss"] == loss and r["compile"] == compiled]
        rates = [r["images_per_s"] for r in mine]
        memory = [r["gpu_memory"]["peak_allocated_gib"] for r in mine if r["gpu_memory"]]
        row = {
            "loss": loss,
            "compile": compiled,
            "rounds": len(mine),
            "images_per_s_median": statistics.median(rates),
            "images_per_s_min": min(rates),
            "images_per_s_max": max(rates),
            "warmup_s_median": statistics.median(r["warmup_s"] for r in mine),
            "peak_gpu_allocated_gib": max(memory) if memory else None,
            "speedup_vs_compile_off": None,
        }
        if compiled:
            off = {r["round"]: r["images_per_s"] for r in runs if r["loss"] == loss and not r["compile"]}
            ratios = [r["images_per_s"] / off[r["round"]] for r in mine if r["round"] in off]
            row["speedup_vs_compile_off"] = round(statistics.median(ratios), 3) if ratios else None
        rows.append(row)
    return rows


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: a reader (or a run stopped midway) sees the previous complete file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def print_table(payload: dict[str, Any]) -> None:
    header = (
        f"{'loss':<12} {'compile':>7} {'img/step':>8} {'rounds':>6} {'images/s (median [min, max])':>30} "
        f"{'warm-up s':>9} {'peak GiB':>8} {'speed-up':>8}"
    )
    print(
        f"\n{payload['model']} at {payload['image_size']}, {payload['jpegs']['count']} JPEGs "
        f"{payload['jpegs']['size'][0]}×{payload['jpegs']['size'][1]}, "
        f"trainer.num_workers={payload['workers']}, precision {payload['precision']}, "
        f"channels_last {payload['channels_last']}, torch {payload['torch']}, "
        f"{payload['cuda'] or 'CPU'}\n{header}\n{'-' * len(header)}"
    )
    per_step = {r["loss"]: r["images_per_step"] for r in payload["runs"]}
    for r in payload["summary"]:
        rate = f"{r['images_per_s_median']:.2f} [{r['images_per_s_min']:.2f}, {r['images_per_s_max']:.2f}]"
        memory = f"{r['peak_gpu_allocated_gib']:.2f}" if r["peak_gpu_allocated_gib"] is not None else "-"
        speedup = f"{r['speedup_vs_compile_off']:.2f}" if r["speedup_vs_compile_off"] else "-"
        print(
            f"{r['loss']:<12} {'on' if r['compile'] else 'off':>7} {per_step[r['loss']]:>8} {r['rounds']:>6} "
            f"{rate:>30} {r['warmup_s_median']:>9.1f} {memory:>8} {speedup:>8}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--losses", nargs="+", default=["triplet", "npair_mc"], choices=LOSSES)
    parser.add_argument(
        "--batch", type=int, default=None, help="images per step (default: 120 on CUDA, 12 on CPU)"
    )
    parser.add_argument("--steps", type=int, default=3, help="measured steps (after the warm-up)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="steps not measured (allocation, autotuning, compile)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeats of every loss × compile mode, interleaved"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="S",
        help="start no run after S seconds (the first round always runs complete)",
    )
    parser.add_argument("--images", type=int, default=200, help="JPEGs to generate (about)")
    parser.add_argument(
        "--jpeg-size",
        type=int,
        nargs=2,
        default=(500, 375),
        metavar=("W", "H"),
        help="size of the generated JPEGs (CUB-200 images are about 500×375)",
    )
    parser.add_argument(
        "--jpegs",
        type=Path,
        default=None,
        help="an existing image tree (one folder per class) instead of generating one; "
        "its last two classes test",
    )
    parser.add_argument(
        "--backbone", default="googlenet", help="backbone= (googlenet, resnet50, small_convnet, ...)"
    )
    parser.add_argument(
        "--image-size", type=int, default=224, help="dataset.image_size (the network's input)"
    )
    parser.add_argument("--workers", type=int, default=0, help="trainer.num_workers")
    parser.add_argument("--precision", default="auto", help="trainer.precision: auto | 32 | bf16 | fp16")
    parser.add_argument(
        "--channels-last",
        default="auto",
        choices=("auto", "true", "false"),
        help="trainer.channels_last (auto = on for CUDA)",
    )
    parser.add_argument("--device", default="auto", help="trainer.device")
    parser.add_argument(
        "--compile-modes",
        nargs="+",
        default=None,
        choices=COMPILE_MODES,
        help="trainer.compile settings to measure, e.g. 'off on' (default: off)",
    )
    parser.add_argument("--compile", action="store_true", help="shorthand for --compile-modes on")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further config override for every run (repeatable), e.g. backbone.net.widths=[8,16]",
    )
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "bench_train.json")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be >= 1")
    if args.compile and args.compile_modes:
        parser.error("give either --compile or --compile-modes")
    args.compile_modes = args.compile_modes or (["on"] if args.compile else ["off"])
    if args.jpegs is not None and not args.jpegs.is_dir():
        parser.error(f"--jpegs {args.jpegs}: no such directory (an image tree with one folder per class)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    args.batch = args.batch or (120 if cuda else 12)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="npair-bench-") as tmp:
        workdir = Path(tmp) / "runs"
        if args.jpegs is None:
            data_root = Path(tmp) / "jpegs"
            n_classes = max(
                20, args.batch // 2 + 4
            )  # enough training classes for N = batch / 2, plus 2 test classes
            make_jpegs(data_root, n_classes, max(3, round(args.images / n_classes)), tuple(args.jpeg_size))
        else:
            data_root = args.jpegs
        classes = class_folders(data_root)
        files = sorted(p for p in data_root.rglob("*") if p.is_file())
        if len(classes) < 3 or not files:
            raise SystemExit(
                f"--jpegs {data_root}: needs at least 3 class folders of images, found {len(classes)}"
            )
        count = len(files)
        with Image.open(files[0]) as first:
            jpeg_size = list(first.size)
        payload: dict[str, Any] = {
            "benchmark": "bench_train",
            "model": f"{args.backbone} (pretrained=false)",
            "image_size": args.image_size,
            "jpegs": {
                "count": count,
                "size": jpeg_size,
                "classes": len(classes),
                "generated": args.jpegs is None,
            },
            "batch": args.batch,
            "workers": args.workers,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "compile_modes": args.compile_modes,
            "rounds": args.rounds,
            "warmup_steps": args.warmup,
            "steps": args.steps,
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if cuda else None,
            "complete": False,
            "rounds_done": 0,
            "stopped_early": None,
            "runs": [],
            "summary": [],
        }
        started = time.perf_counter()
        for round_ in range(1, args.rounds + 1):
            for mode in args.compile_modes:
                for loss in args.losses:
                    if args.time_limit and round_ > 1 and time.perf_counter() - started > args.time_limit:
                        payload["stopped_early"] = (
                            f"{len(payload['runs'])} runs ({round_ - 1} full rounds of "
                            f"{args.rounds}): --time-limit {args.time_limit:.0f} s reached"
                        )
                        break
                    print(
                        f"round {round_}, compile {mode}, {loss}: {args.warmup} + {args.steps} steps ...",
                        flush=True,
                    )
                    payload["runs"].append(
                        measure(loss, mode == "on", round_, data_root, workdir, args, classes[-2:])
                    )
                    payload["summary"] = summarise(payload["runs"])
                    write_json(args.out, payload)
            if payload["stopped_early"]:
                print(f"stopped after {payload['stopped_early']}", flush=True)
                break
            payload["rounds_done"] = round_
        payload["complete"] = True
        write_json(args.out, payload)
    print_table(payload)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
