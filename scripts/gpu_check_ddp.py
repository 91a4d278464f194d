"""GPU check, stage 5 — multi-process: torchrun with trainer=ddp, and the DDP collectives (NCCL / gloo).

1. ``torchrun --standalone --nproc_per_node=1 -m npair.train trainer=ddp ...`` for a few steps (``gpu``:
   GoogLeNet at 224 on glyphs, 120 images per step, CUDA; ``cpu-smoke``: the small conv net on the CPU):
   the launcher path end to end: under torchrun, npair.run_context.setup joins the process group even at
   world size 1, so the run trains with DDP in a process group of one, and rank 0's run directory is complete;
2. ``torchrun --standalone --nproc_per_node=1 scripts/gpu_collectives.py``: the backend
   ``trainer.ddp.backend=auto`` picks (nccl on CUDA, gloo on CPU), which the training run does not record, and
   each collective's values (all_reduce, all_gather, object broadcasts and gathers) and a few
   DistributedDataParallel steps, checked one by one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_common import SCRIPTS, Result, npair_env, run_logged, stage_main
from gpu_check_resume import GLYPHS, build_glyphs_once

SETTINGS = {
    "gpu": [
        "backbone=googlenet",
        "backbone.net.pretrained=false",
        "sampler.n_classes=60",
        "trainer.device=cuda",
    ],
    "cpu-smoke": ["backbone=small_convnet", "sampler.n_classes=8", "trainer.device=cpu", "trainer.threads=1"],
}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
COLLECTIVES_S = {"gpu": 20, "cpu-smoke": 30}  # kept for the second part: torchrun, CUDA and NCCL start-up


def run(mode: str, work: Path, result: Result, budget_s: float) -> None:
    deadline = time.monotonic() + budget_s - 5  # leave time to report
    build_glyphs_once(
        mode, work
    )  # the glyphs of stage 4, cached under work/data (made here if stage 4 did not)
    glyphs = GLYPHS[mode]
    run_dir = work / "ddp_run"
    train = [
        "trainer=ddp",
        "dataset=glyphs",
        f"dataset.image_size={glyphs['image_size']}",
        f"dataset.build.n_classes={glyphs['n_classes']}",
        f"dataset.build.images_per_class={glyphs['images_per_class']}",
        "loss=npair_mc",
        *SETTINGS[mode],
        "trainer.max_steps=10",
        "trainer.eval_every=0",
        "trainer.log_every=5",
        "trainer.probe_classes=0",
        "trainer.progress_bar=false",
        "eval.kmeans_seeds=1",
        "logger=none",
    ]
    result.figures["train_command"] = " ".join(
        ["torchrun --standalone --nproc_per_node=1 -m npair.train", *train]
    )
    scratch = work / "ddp_tmp"
    scratch.mkdir(exist_ok=True)
    env = npair_env({"TMPDIR": str(scratch)})
    log = work / "ddp_train.log"
    rc = run_logged(
        [*TORCHRUN, "-m", "npair.train", *train, f"paths.root_dir={work}", f"hydra.run.dir={run_dir}"],
        log,
        env=env,
        cwd=work,
        timeout=max(5.0, deadline - time.monotonic() - COLLECTIVES_S[mode]),
    )
    metrics = run_dir / "metrics.json"
    record = json.loads(metrics.read_text()) if metrics.exists() else {}
    # npair.run_context.setup logs this line only when no launcher started the process: under torchrun the
    # run must be in the process group (world size 1), not a plain single-process run
    single = "trainer=ddp in a single process" in log.read_text(errors="replace")
    result.check(
        "torchrun -m npair.train trainer=ddp completes in a process group of one",
        rc == 0 and record.get("status") == "completed" and record.get("world_size") == 1 and not single,
        {
            "exit_code": rc,
            "status": record.get("status"),
            "world_size": record.get("world_size"),
            "without_process_group": single,
            "device": record.get("device"),
            "final": record.get("final"),
        },
    )

    out = work / "collectives.json"
    out.unlink(missing_ok=True)
    device = "cuda" if mode == "gpu" else "cpu"
    result.figures["collectives_command"] = (
        f"torchrun --standalone --nproc_per_node=1 scripts/gpu_collectives.py "
        f"--device {device} --result <json>"
    )
    rc = run_logged(
        [*TORCHRUN, str(SCRIPTS / "gpu_collectives.py"), "--device", device, "--result", str(out)],
        work / "collectives.log",
        env=env,
        cwd=work,
        timeout=max(5.0, deadline - time.monotonic()),
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    result.figures["collectives"] = report
    expected = "nccl" if mode == "gpu" else "gloo"
    result.check(
        f"{expected} process group: collectives and DDP steps",
        rc == 0 and report.get("ok") is True and report.get("backend") == expected,
        {"exit_code": rc, **report},
    )


if __name__ == "__main__":
    stage_main(run)
