"""GPU check, stage 4 — a short real training, killed with SIGKILL and resumed, against an uninterrupted one.

Two runs of ``python -m npair.train trainer=gpu`` with the same config start side by side on glyphs
(``gpu``: GoogLeNet at 224, 60-pair-mc, 120 images per step, trainer=gpu's 8 DataLoader workers, bf16
autocast, about a minute; ``cpu-smoke``: the small conv net at 32 px on the CPU, 2 workers). One is killed
(SIGKILL, its whole process group: the DataLoader workers too) as soon as its first checkpoint exists, then
started again with the same command and run directory (``trainer.resume=auto``); the other runs straight
through. Both use ``trainer.deterministic=true`` (torch deterministic algorithms, warn-only where none
exists). Glyphs have no random augmentation, so the DataLoader workers do not limit exactness (augmentation
inside workers restarts from the epoch's worker seed on resume: npair.stream).

The resumed run must end with the uninterrupted run's final metrics, history and weights, bit for bit —
where CUDA determinism allows: when not identical on the GPU, the ops torch warned have no deterministic
CUDA implementation are listed, with the differences; a difference that no such warning explains fails.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_common import Result, echo_log, npair_env, stage_main

GLYPHS = {
    "gpu": {"n_classes": 160, "images_per_class": 6, "image_size": 224},
    "cpu-smoke": {"n_classes": 40, "images_per_class": 6, "image_size": 32},
}
SETTINGS = {
    "gpu": [
        "backbone=googlenet",
        "backbone.net.pretrained=false",
        "sampler.n_classes=60",
        "trainer.max_steps=120",
        "trainer.checkpoint_every=40",
        "trainer.log_every=10",
        "trainer.probe_classes=16",
    ],
    "cpu-smoke": [
        "trainer.device=cpu",
        "trainer.num_workers=2",
        "trainer.threads=1",
        "backbone=small_convnet",
        "sampler.n_classes=8",
        "trainer.max_steps=30",
        "trainer.checkpoint_every=10",
        "trainer.log_every=5",
        "trainer.probe_classes=4",
    ],
}
NONDETERMINISTIC = re.compile(r"(\S+) does not have a deterministic implementation")


def overrides(mode: str, work: Path) -> list[str]:
    glyphs = GLYPHS[mode]
    return [
        "trainer=gpu",
        "dataset=glyphs",
        f"dataset.image_size={glyphs['image_size']}",
        f"dataset.build.n_classes={glyphs['n_classes']}",
        f"dataset.build.images_per_class={glyphs['images_per_class']}",
        "loss=npair_mc",
        *SETTINGS[mode],
        "trainer.eval_every=0",
        "trainer.progress_bar=false",
        "trainer.deterministic=true",
        "eval.kmeans_seeds=1",
        "logger=none",
        f"paths.root_dir={work}",
    ]


def build_glyphs_once(mode: str, work: Path) -> None:
    """Generate the glyphs into the runs' cache (paths.data_dir/glyphs) before the two runs start side by
    side."""
    from npair.data.embedded import build_glyphs

    build_glyphs(work / "data" / "glyphs", **GLYPHS[mode], seed=0)


def start(cmd: list[str], log: Path, work: Path) -> tuple[subprocess.Popen, Any]:
    handle = open(log, "w")  # noqa: SIM115 (closed by finish())
    proc = subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, env=npair_env(), cwd=work, start_new_session=True
    )  # its own process group: SIGKILL reaches the workers too
    return proc, handle


def finish(proc: subprocess.Popen, handle: Any, deadline: float) -> int | None:
    """Wait until ``deadline`` (time.monotonic()); past it, kill the process group. The exit code, or None."""
    try:
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
    finally:
        handle.close()


def model_diff(a: Path, b: Path) -> dict[str, Any]:
    """How two checkpoints' model weights differ: tensors compared, tensors differing, largest difference."""
    import torch

    from npair.checkpoint import load  # the one reader of run files: weights only, format checked

    wa, wb = (load(p)["model"] for p in (a, b))
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    largest = max(((wa[k].float() - wb[k].float()).abs().max().item() for k in differing), default=0.0)
    return {"tensors": len(wa), "differing": len(differing), "max_abs_diff": largest, "first": differing[:5]}


def mean_rate(run_dir: Path) -> float | None:
    """Mean of the train_log.csv images_per_s column (the loop's own throughput measurement)."""
    path = run_dir / "train_log.csv"
    if not path.exists():
        return None
    with open(path, newline="") as handle:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(handle) if r.get("images_per_s")]
    return round(sum(rates) / len(rates), 1) if rates else None


def run(mode: str, work: Path, result: Result, budget_s: float) -> None:
    deadline = time.monotonic() + budget_s - 15  # leave time to compare and report
    build_glyphs_once(mode, work)
    base = [sys.executable, "-m", "npair.train", *overrides(mode, work)]
    killed_dir, straight_dir = work / "resume_killed", work / "resume_straight"
    result.figures["command"] = " ".join(
        ["python -m npair.train", *overrides(mode, Path("<work>")), "hydra.run.dir=<run dir>"]
    )
    logs = {name: work / f"resume_{name}.log" for name in ("straight", "killed", "resumed")}
    commands = {
        "straight": [*base, f"hydra.run.dir={straight_dir}"],
        "killed": [*base, f"hydra.run.dir={killed_dir}"],
    }

    started = time.monotonic()
    straight, straight_log = start(commands["straight"], logs["straight"], work)
    killed, killed_log = start(commands["killed"], logs["killed"], work)
    checkpoint = killed_dir / "checkpoint.pt"
    while killed.poll() is None and not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if killed.poll() is None:
        os.killpg(killed.pid, signal.SIGKILL)
    killed_rc = finish(killed, killed_log, deadline)
    echo_log(logs["killed"], commands["killed"], killed_rc)
    if not result.check(
        "run killed (SIGKILL) after its first checkpoint",
        killed_rc == -signal.SIGKILL and checkpoint.exists(),
        f"exit code {killed_rc}, checkpoint written: {checkpoint.exists()}",
    ):
        finish(straight, straight_log, time.monotonic())
        return
    from npair.checkpoint import load

    killed_at = int(load(checkpoint)["step"])
    resumed, resumed_log = start(commands["killed"], logs["resumed"], work)
    resumed_rc = finish(resumed, resumed_log, deadline)
    echo_log(logs["resumed"], commands["killed"], resumed_rc)
    straight_rc = finish(straight, straight_log, deadline)
    echo_log(logs["straight"], commands["straight"], straight_rc)
    result.figures["wall_s"] = round(time.monotonic() - started, 1)
    ok = result.check(
        "uninterrupted and resumed runs exit 0",
        straight_rc == 0 and resumed_rc == 0,
        {"straight": straight_rc, "resumed": resumed_rc},
    )
    text = logs["resumed"].read_text(errors="replace")
    result.check("the restart resumed from the checkpoint", "resuming" in text, f"killed at step {killed_at}")
    if not ok:
        return

    a = json.loads((straight_dir / "metrics.json").read_text())
    b = json.loads((killed_dir / "metrics.json").read_text())
    result.figures.update(
        device=a["device"],
        precision=a["precision"],
        killed_at_step=killed_at,
        steps=a.get("steps_done"),
        final_straight=a["final"],
        final_resumed=b["final"],
        images_per_s_straight=mean_rate(straight_dir),
    )
    result.check(
        "the resumed run completed from the killed step",
        b["status"] == "completed" and b.get("resumed_from_step") == killed_at,
        {"status": b["status"], "resumed_from_step": b.get("resumed_from_step")},
    )
    weights = model_diff(straight_dir / "checkpoint.pt", killed_dir / "checkpoint.pt")
    metric_diff = {k: abs(float(a["final"][k]) - float(b["final"].get(k, float("nan")))) for k in a["final"]}
    identical = a["final"] == b["final"] and a["history"] == b["history"] and weights["differing"] == 0
    warned = sorted(
        {
            m.group(1)
            for name in logs
            for m in NONDETERMINISTIC.finditer(logs[name].read_text(errors="replace"))
        }
    )
    detail = {
        "identical": identical,
        "metric_abs_diff": metric_diff,
        "weights": weights,
        "ops_without_deterministic_cuda_implementation": warned,
    }
    result.figures["comparison"] = detail
    if identical:
        result.check(
            "resumed run identical to the uninterrupted one (metrics, history, weights)", True, detail
        )
    elif mode == "gpu" and warned:
        result.notes.append(
            f"not bit-identical on the GPU: torch has no deterministic CUDA implementation of "
            f"{', '.join(warned)}; largest final-metric difference {max(metric_diff.values()):.4g}"
        )
        result.check("resumed run identical where CUDA determinism allows", True, detail)
    else:
        result.check(
            "resumed run identical to the uninterrupted one (metrics, history, weights)", False, detail
        )


if __name__ == "__main__":
    stage_main(run)
