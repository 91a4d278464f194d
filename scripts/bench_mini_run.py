"""One mini-table run on CPU under a few settings, side by side: what makes `make reproduce-table` fast.

Runs the real experiment ``mini_table2/npair_mc`` (small conv net on 32×32 glyphs, 60-pair-mc, 120 images
per step, one torch thread as in ``make reproduce-table``) through ``npair.train.run`` once per variant,
round-robin, ``--repeats`` times. A variant is a space-separated list of config overrides. The defaults
compare the conv net in NCHW memory format with 16 first-stage channels, the same in channels_last, and
the mini tables' configuration (channels_last, 8 first-stage channels). Reports seconds per training step
(train_log.csv, after ``--warmup`` steps), the whole run (data, training, evaluation), Recall@1, and each
variant's speed-up over the first. An untimed warm-up run first builds the data cache and pays the process's
one-time costs. Writes outputs/bench/bench_mini_run.json.

    python scripts/bench_mini_run.py                 # 200 steps (the mini tables' length), 2 repeats
    python scripts/bench_mini_run.py --steps 50 --repeats 1 --variants "" "trainer.channels_last=false"
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from timed_run import timed_run

VARIANTS = (
    "trainer.channels_last=false backbone.net.widths=[16,32,64,128]",
    "trainer.channels_last=true backbone.net.widths=[16,32,64,128]",
    "",  # the mini tables as configured
)


def measure(
    variant: str, workdir: Path, data_dir: Path, args: argparse.Namespace, tag: str, steps: int | None = None
) -> dict:
    steps = steps or args.steps
    overrides = [
        f"experiment={args.experiment}",
        f"trainer.max_steps={steps}",
        "trainer.log_every=1",
        f"trainer.threads={args.threads}",
        "trainer.save_checkpoint=false",
        "logger=none",
        f"paths.root_dir={workdir}",
        f"paths.data_dir={data_dir}",
        *shlex.split(variant),
    ]
    timed = timed_run(overrides, workdir / tag)
    return {
        "variant": variant,
        "channels_last": timed.cfg.trainer.channels_last,
        "widths": list(timed.cfg.backbone.net.widths),
        "s_per_step": timed.seconds_after(args.warmup) / (steps - args.warmup),
        "run_s": timed.seconds,
        "recall@1": timed.record["final"]["recall@1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="mini_table2/npair_mc")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), help="override lists, one per variant"
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps per run (mini tables: 200)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of s/step")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant, round-robin")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (make reproduce-table: 1)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "bench_mini_run.json")
    args = parser.parse_args()
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps")
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory(prefix="npair-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        # Untimed: builds the dataset's cache and pays the process's one-time costs (imports, first kernels).
        print("warm-up run ...", flush=True)
        measure(args.variants[0], Path(tmp) / "runs", data_dir, args, "warmup", steps=args.warmup + 1)
        for repeat in range(args.repeats):
            for i, variant in enumerate(args.variants):
                print(f"[{variant or 'as configured'}] repeat {repeat + 1}/{args.repeats} ...", flush=True)
                results[variant].append(
                    measure(variant, Path(tmp) / "runs", data_dir, args, f"v{i}_{repeat}")
                )
    summary = []
    for variant, rows in results.items():
        summary.append(
            {
                "variant": variant or "(as configured)",
                "channels_last": rows[0]["channels_last"],
                "widths": rows[0]["widths"],
                "s_per_step": statistics.median(r["s_per_step"] for r in rows),
                "run_s": statistics.median(r["run_s"] for r in rows),
                "recall@1": [r["recall@1"] for r in rows],
            }
        )
    base = summary[0]
    for s in summary:
        s["speedup_step"], s["speedup_run"] = base["s_per_step"] / s["s_per_step"], base["run_s"] / s["run_s"]
    header = (
        f"{'channels_last':<13} {'widths':<17} {'s/step':>7} {'run s':>6} {'×step':>6} {'×run':>6}  recall@1"
    )
    print(
        f"\n{args.experiment}, {args.steps} steps, {args.threads} thread(s), torch {torch.__version__}, "
        f"median of {args.repeats}; ×: speed-up over the first row\n{header}\n{'-' * len(header)}"
    )
    for s in summary:
        widths = ",".join(map(str, s["widths"]))
        print(
            f"{s['channels_last']!s:<13} {widths:<17} {s['s_per_step']:>7.3f} {s['run_s']:>6.1f} "
            f"{s['speedup_step']:>6.2f} {s['speedup_run']:>6.2f}  "
            f"{', '.join(f'{v:.4f}' for v in s['recall@1'])}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "bench_mini_run",
        "experiment": args.experiment,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "summary": summary,
        "runs": [r for rows in results.values() for r in rows],
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
