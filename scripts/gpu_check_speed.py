"""GPU check, stage 2 — training speed at paper scale through scripts/bench_train.py.

``gpu``: GoogLeNet at 224, 120 images per step (the 60-pair-mc batch and the triplet rows' batch), bf16
autocast, channels_last, torch.compile off and on, 8 DataLoader workers over generated 500×375 JPEGs,
3 interleaved rounds; images/s and peak GPU memory for each loss. ``cpu-smoke``: the same script and
code path at toy size (the small conv net at 64 px, 12 images per step, 2 workers, one round).
bench_train.py rewrites its JSON after every run, so when the stage's time runs out what was measured
is kept and reported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_common import SCRIPTS, Result, run_logged, stage_main

LOSSES = ["npair_mc", "triplet"]
ARGS = {
    "gpu": [
        "--backbone",
        "googlenet",
        "--image-size",
        "224",
        "--batch",
        "120",
        "--workers",
        "8",
        "--precision",
        "bf16",
        "--channels-last",
        "true",
        "--compile-modes",
        "off",
        "on",
        "--rounds",
        "3",
        "--warmup",
        "5",
        "--steps",
        "20",
        "--images",
        "400",
        "--device",
        "cuda",
        "--override",
        "sampler.epoch_length=1000",
    ],  # no epoch boundary (DataLoader restart) while measuring
    "cpu-smoke": [
        "--backbone",
        "small_convnet",
        "--image-size",
        "64",
        "--batch",
        "12",
        "--workers",
        "2",
        "--precision",
        "bf16",
        "--channels-last",
        "true",
        "--compile-modes",
        "off",
        "on",
        "--rounds",
        "1",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--images",
        "60",
        "--jpeg-size",
        "160",
        "120",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--override",
        "sampler.epoch_length=1000",
        "--override",
        "backbone.net.widths=[8,16]",
    ],  # two stages: less to compile on the CPU
}


def run(mode: str, work: Path, result: Result, budget_s: float) -> None:
    out = work / "bench_train.json"
    out.unlink(missing_ok=True)
    limit = max(10.0, budget_s - 20)  # leave time to read and report what was measured
    # no new run after 75 % of the time: the last one started must end within the stage's budget
    cmd = [
        sys.executable,
        str(SCRIPTS / "bench_train.py"),
        "--losses",
        *LOSSES,
        *ARGS[mode],
        "--time-limit",
        f"{0.75 * limit:.0f}",
        "--out",
        str(out),
    ]
    returncode = run_logged(cmd, work / "bench_train.log", cwd=work, timeout=limit)
    if returncode is None:
        result.notes.append(
            f"bench_train.py stopped after {limit:.0f} s (the stage's time); partial results kept"
        )
    result.figures["command"] = " ".join(["python scripts/bench_train.py", "--losses", *LOSSES, *ARGS[mode]])
    if not out.exists():
        result.check("bench_train.py measured something", False, f"no JSON written (exit code {returncode})")
        return
    payload = json.loads(out.read_text())
    result.figures["bench_train"] = payload
    expected = {(loss, mode_ == "on") for loss in LOSSES for mode_ in ("off", "on")}
    measured = {(r["loss"], r["compile"]) for r in payload["summary"]}
    missing = sorted(f"{loss} compile={'on' if c else 'off'}" for loss, c in expected - measured)
    result.check(
        "every loss measured with compile off and on",
        not missing,
        f"missing: {missing}" if missing else f"{len(payload['runs'])} runs, {payload['rounds']} round(s)",
    )
    result.check(
        "bench_train.py completed",
        payload.get("complete") and returncode == 0,
        f"exit code {returncode}, rounds done: {payload.get('rounds_done')} of {payload['rounds']}",
    )
    if payload.get("stopped_early"):
        result.notes.append(f"bench_train.py measured {payload['stopped_early']}")
    if mode == "gpu":
        memory = [r["gpu_memory"] for r in payload["runs"]]
        result.check("peak GPU memory recorded", all(memory), memory[:1])
    for row in payload["summary"]:
        print(
            f"{row['loss']:<10} compile {'on ' if row['compile'] else 'off'}: "
            f"{row['images_per_s_median']:.1f} images/s "
            f"[{row['images_per_s_min']:.1f}, {row['images_per_s_max']:.1f}], "
            f"peak {row['peak_gpu_allocated_gib']} GiB, speed-up {row['speedup_vs_compile_off']}",
            flush=True,
        )


if __name__ == "__main__":
    stage_main(run)
