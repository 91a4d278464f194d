"""Throughput of the training input pipeline (decode JPEG + paper transform + collate), in images/s.

Generates CUB-like JPEGs (about 500x375, smooth content like photos, quality 90) in a temp dir,
then times a DataLoader over ``ImageListDataset`` with the paper's training pipeline (resize 256,
random crop 224, flip, ImageNet normalisation) for 0, 1 and 2 workers; prints a table and writes
JSON. Also reports the per-image cost of decoding and of the transform alone (main process).

    python scripts/bench_data.py                      # 300 images, workers 0 1 2
    python scripts/bench_data.py --n-images 600 --workers 0 2 4 --out outputs/bench/bench_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from npair.data.images import ImageListDataset, load_image
from npair.data.transforms import paper_transforms


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs of 500x375 (every third one 375x500, as CUB mixes orientations)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        size = (375, 500) if i % 3 == 2 else (500, 375)
        base = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize(size, Image.BICUBIC)  # smooth colour field
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = rng.integers(0, size[0]), rng.integers(0, size[1])
            x1, y1 = x0 + rng.integers(10, 150), y0 + rng.integers(10, 150)
            draw.ellipse([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        img = img.filter(ImageFilter.GaussianBlur(1.0))
        noise = rng.normal(0, 6, size=(size[1], size[0], 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
        path = folder / f"{i // 30:03d}.class" / f"img_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)
        paths.append(path)
    return paths


def time_loader(dataset, batch_size: int, workers: int, epochs: int, seed: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=generator,
        persistent_workers=workers > 0,
        drop_last=True,
    )
    it = iter(loader)
    next(it)  # warm-up: worker start-up and first batch are not timed
    del it
    n = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for images, _labels in loader:
            n += images.shape[0]
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="passes over the images per measurement")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the main process (default: torch's own; workers always use 1)",
    )
    parser.add_argument("--out", default="outputs/bench/bench_data.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        t0 = time.perf_counter()
        paths = make_jpegs(Path(tmp), args.n_images, args.seed)
        gen_s = time.perf_counter() - t0
        mean_kb = float(np.mean([p.stat().st_size for p in paths]) / 1024)
        pair = paper_transforms(image_size=args.image_size)
        dataset = ImageListDataset(
            paths, [int(p.parent.name[:3]) for p in paths], transform=pair.train, name="bench"
        )

        # Per-image cost of the two stages, main process.
        sample = paths[: min(100, len(paths))]
        t0 = time.perf_counter()
        decoded = [load_image(p) for p in sample]
        decode_ms = 1000 * (time.perf_counter() - t0) / len(sample)
        t0 = time.perf_counter()
        for img in decoded:
            pair.train(img)
        transform_ms = 1000 * (time.perf_counter() - t0) / len(sample)

        rows = []
        for workers in args.workers:
            result = time_loader(dataset, args.batch_size, workers, args.epochs, args.seed)
            rows.append({"workers": workers, **result})

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {
        "benchmark": "input pipeline: JPEG decode + paper train transform "
        "(resize 256, random crop, flip, normalise) + collate",
        "n_images": args.n_images,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs_per_measurement": args.epochs,
        "mean_jpeg_kib": round(mean_kb, 1),
        "decode_ms_per_image": round(decode_ms, 2),
        "transform_ms_per_image": round(transform_ms, 2),
        "results": rows,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_1m_5m_15m": [round(x, 2) for x in load] if load else None,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pillow": Image.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "generate_s": round(gen_s, 2),
    }
    print(
        f"input pipeline, {args.n_images} JPEGs ~500x375 ({mean_kb:.0f} KiB), crop {args.image_size}, "
        f"batch {args.batch_size}; decode {decode_ms:.1f} ms/img, "
        f"transform {transform_ms:.1f} ms/img (main process)"
    )
    print(f"{'workers':>8} | {'images/s':>9} | {'seconds':>8} | images")
    print(f"{'-' * 8}-+-{'-' * 9}-+-{'-' * 8}-+-------")
    for row in rows:
        print(f"{row['workers']:>8} | {row['images_per_s']:>9.1f} | {row['seconds']:>8.2f} | {row['images']}")
    if load:
        print(
            f"load average during the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
            f"on {os.cpu_count()} cores"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
