"""The collectives DDP training uses, run under torchrun (the GPU check's stage 5): NCCL on CUDA, gloo on CPU.

    torchrun --standalone --nproc_per_node=1 scripts/gpu_collectives.py --device cuda --result out.json

Joins the process group with the backend ``trainer.ddp.backend=auto`` picks (nccl on CUDA, gloo on CPU), then:
all_reduce, all_gather (what npair.collectives gathers N-pair negatives with), broadcast_object_list and
all_gather_object (what npair.collectives hands rank 0's results and every rank's RNG state around with), and
a few DistributedDataParallel steps of the small conv net under the N-pair-mc loss. Rank 0 writes the JSON
result. ``torchrun --nproc_per_node=1 -m npair.train trainer=ddp`` (the stage's first part) joins the same
process group, even at world size 1 (npair.run_context.setup), but its metrics.json names neither the backend
nor what each collective returned; this script checks both, value by value, so a failure names the collective.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def collectives(device: torch.device, world: int) -> dict[str, bool]:
    """Each collective gives the value it must on every rank."""
    rank = dist.get_rank()
    value = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(value)
    parts = [torch.empty(3, device=device) for _ in range(world)]
    dist.all_gather(parts, torch.full((3,), float(rank), device=device))
    box = [{"from": rank}] if rank == 0 else [None]
    dist.broadcast_object_list(box, src=0)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {"rank": rank})
    dist.barrier()
    return {
        "all_reduce": bool(torch.all(value == world * (world + 1) / 2)),
        "all_gather": all(bool(torch.all(p == r)) for r, p in enumerate(parts)),
        "broadcast_object_list": box[0] == {"from": 0},
        "all_gather_object": gathered == [{"rank": r} for r in range(world)],
    }


def ddp_steps(device: torch.device, steps: int = 3) -> dict[str, object]:
    """A few DDP training steps of the small conv net under N-pair-mc (4 classes × 2 images of 32×32)."""
    from npair.losses import NPairMCLoss
    from npair.models.small_convnet import SmallConvNet

    torch.manual_seed(0)
    model = torch.nn.Sequential(SmallConvNet(3, (8, 16, 16, 32)), torch.nn.Linear(32, 16)).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    loss_fn = NPairMCLoss(gather_across_ranks=True)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    labels = torch.arange(4, device=device).repeat_interleave(2)
    losses = []
    for _ in range(steps):
        images = torch.randn(8, 3, 32, 32, device=device)
        loss = loss_fn(ddp(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    moved = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    return {"losses": losses, "finite": all(math.isfinite(v) for v in losses), "parameters_updated": moved}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    local_rank, world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if args.device == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    started = time.perf_counter()
    dist.init_process_group(
        backend, timeout=timedelta(minutes=2), **({"device_id": device} if backend == "nccl" else {})
    )
    try:
        report = {
            "backend": dist.get_backend(),
            "world_size": dist.get_world_size(),
            "device": str(device),
            "collectives": collectives(device, world),
            "ddp": ddp_steps(device),
        }
        if backend == "nccl":
            version = torch.cuda.nccl.version()
            report["nccl_version"] = (
                ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
            )
        report["seconds"] = round(time.perf_counter() - started, 2)
    finally:
        dist.destroy_process_group()
    ok = (
        all(report["collectives"].values())
        and report["ddp"]["finite"]
        and report["ddp"]["parameters_updated"]
    )
    report["ok"] = ok
    if int(os.environ.get("RANK", "0")) == 0:
        args.result.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
