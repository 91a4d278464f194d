"""End-to-end training speed (images/s) of the real loop: GoogLeNet at 224 on JPEGs of CUB-like size.

Generates ~200 JPEGs (500×375, random shapes, one folder per class) in a temporary directory, reads them
with the ``folder`` dataset (JPEG decode, the paper's resize/crop/flip transform), trains GoogLeNet
(``backbone=googlenet``, ``pretrained=false``) with each loss through ``npair.train.run`` for a few steps
and reports images/s over the steps after the warm-up: data loading, forward, loss, backward and the
optimiser step, on whatever device is present (CUDA if available). Writes outputs/bench/bench_train.json.

    python scripts/bench_train.py                          # triplet and npair_mc, batch 120 on GPU / 12 on CPU
    python scripts/bench_train.py --batch 24 --steps 5 --losses triplet npair_mc npair_ovo contrastive
    python scripts/bench_train.py --precision bf16 --compile --workers 8     # GPU knobs (trainer.*)
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]

from timed_run import timed_run

LOSSES = ("triplet", "npair_mc", "npair_ovo", "triplet_nm", "contrastive", "tuplet", "softmax")


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
    for c in range(n_classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) // 2 + 64
            image = Image.fromarray(pixels)
            x, y = int(rng.integers(0, size[0] - 200)), int(rng.integers(0, size[1] - 150))
            ImageDraw.Draw(image).ellipse([x, y, x + 200, y + 150], fill=colour)
            image.save(folder / f"{i:03d}.jpg", quality=90)


def measure(loss: str, data_root: Path, workdir: Path, args: argparse.Namespace, test_classes: list[str]) -> dict:
    sizes, images_per_step = batch_overrides(loss, args.batch)
    overrides = [
        "dataset=folder", f"dataset.root={data_root}", "dataset.build.split=lists",
        f"dataset.build.test_classes=[{','.join(test_classes)}]", "backbone=googlenet", "backbone.net.pretrained=false",
        f"loss={loss}", *sizes, f"trainer.max_steps={args.warmup + args.steps}", "trainer.eval_every=0",
        "trainer.log_every=1", "trainer.progress_bar=false", "trainer.probe_classes=0", "trainer.save_checkpoint=false",
        f"trainer.num_workers={args.workers}", f"trainer.precision={args.precision}", f"trainer.device={args.device}",
        f"trainer.compile={str(args.compile).lower()}", "trainer.deterministic=false", "eval.kmeans_seeds=1",
        "logger=none", f"paths.root_dir={workdir}",
    ]
    timed = timed_run(overrides, workdir / loss)
    seconds = timed.seconds_after(args.warmup)  # the steps after the warm-up, end to end
    record, total = timed.record, timed.seconds
    return {"loss": loss, "images_per_step": images_per_step, "steps": args.steps, "warmup_steps": args.warmup,
            "images_per_s": round(images_per_step * args.steps / seconds, 2),
            "s_per_step": round(seconds / args.steps, 3), "device": record["device"],
            "precision": record["precision"], "run_s_incl_setup_and_eval": round(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", nargs="+", default=["triplet", "npair_mc"], choices=LOSSES)
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: 120 on CUDA, 12 on CPU)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="steps not measured (allocation, autotuning, compile)")
    parser.add_argument("--images", type=int, default=200, help="JPEGs to generate (about)")
    parser.add_argument("--workers", type=int, default=0, help="trainer.num_workers")
    parser.add_argument("--precision", default="auto", help="trainer.precision: auto | 32 | bf16 | fp16")
    parser.add_argument("--device", default="auto", help="trainer.device")
    parser.add_argument("--compile", action="store_true", help="trainer.compile=true (torch.compile)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "bench_train.json")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    cuda = torch.cuda.is_available() and args.device != "cpu"
    args.batch = args.batch or (120 if cuda else 12)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_classes = max(20, args.batch // 2 + 4)  # enough training classes for N = batch / 2, plus 2 test classes
    per_class = max(3, round(args.images / n_classes))
    results = []
    with tempfile.TemporaryDirectory(prefix="npair-bench-") as tmp:
        data_root, workdir = Path(tmp) / "jpegs", Path(tmp) / "runs"
        make_jpegs(data_root, n_classes, per_class)
        test_classes = [f"class_{c:03d}" for c in range(n_classes - 2, n_classes)]
        for loss in args.losses:
            print(f"{loss}: {args.warmup} + {args.steps} steps ...", flush=True)
            results.append(measure(loss, data_root, workdir, args, test_classes))
    header = f"{'loss':<12} {'img/step':>8} {'steps':>5} {'images/s':>9} {'s/step':>7}  device, precision"
    print(f"\nGoogLeNet 224×224, {n_classes * per_class} JPEGs 500×375 ({n_classes} classes), "
          f"trainer.num_workers={args.workers}, torch {torch.__version__}\n{header}\n{'-' * len(header)}")
    for r in results:
        print(f"{r['loss']:<12} {r['images_per_step']:>8} {r['steps']:>5} {r['images_per_s']:>9.2f} "
              f"{r['s_per_step']:>7.3f}  {r['device']}, {r['precision']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "bench_train", "model": "googlenet (pretrained=false)", "image_size": 224,
               "jpegs": {"count": n_classes * per_class, "size": [500, 375], "classes": n_classes},
               "batch": args.batch, "workers": args.workers, "compile": args.compile, "torch": torch.__version__,
               "cuda": torch.cuda.get_device_name(0) if cuda else None, "results": results}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
