"""The multi-process run context: which rank this process is, joining and leaving the process group, and
what DistributedDataParallel changes in a run (``trainer=ddp``). The exchanges between ranks are in
npair.collectives.

    torchrun --nproc_per_node=K -m npair.train trainer=ddp ...            # K GPUs (or K CPU processes)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m npair.train trainer=ddp
    python -m npair.train -m hydra/launcher=slurm hydra.launcher.tasks_per_node=K \\
        hydra.launcher.gpus_per_node=K trainer=ddp

What W ranks change, and why one process and W processes train the same model:

* **Batches.** The sampler's batch size (``sampler.n_classes`` / ``n_triplets`` / ``n_pairs``) is the
  *global* batch: each rank builds the same global batch from (seed, epoch) and keeps its contiguous
  1/W slice (npair.samplers), so for class-block batches every rank holds distinct classes. A batch
  size that does not divide by W fails before training (npair.guards). (The naive tuplet sampler is
  the exception: each rank builds complete tuplets from its N/W classes.)
* **Negatives.** ``trainer.ddp.gather_negatives`` sets ``loss.gather_across_ranks`` for the losses
  that have it (N-pair-mc, N-pair-ovo): every rank computes the loss of the whole global batch
  (N = the global number of classes), gradient flowing into its own slice (npair.collectives).
* **Loss scale.** DDP *averages* parameter gradients over ranks. With gathered negatives every rank's
  loss is the global loss L and its backward gives the part of dL/dθ that flows through its own
  slice, so the average is (1/W)·dL/dθ. The loop therefore calls ``backward()`` on W·L
  (:func:`loss_scale`); the logged loss is L. Losses computed per rank (triplet, contrastive, ...)
  are means over equal-sized slices, whose average gradient is already the global one: scale 1.
* **BatchNorm.** ``trainer.ddp.sync_batchnorm`` makes training-mode BatchNorm use the statistics
  of the global batch, as one process would: ``torch.nn.SyncBatchNorm`` on CUDA, and on CPU/gloo
  (where SyncBatchNorm does not run) :class:`npair.models.batchnorm.GlobalBatchNorm2d`.
* **Rank 0 only** evaluates, logs (RunLogger, W&B, tqdm, INFO messages) and writes files; the other
  ranks keep no RunLogger and write nothing (``trainer=ddp`` also points their Hydra output away
  from the run directory). Checkpoints hold every rank's RNG state, gathered to rank 0.

Backend: ``trainer.ddp.backend=auto`` is nccl on CUDA and gloo on CPU. Each rank uses
``cuda:LOCAL_RANK``. Under SLURM via the submitit launcher (one task per GPU) the rank variables
are taken from SLURM (``submitit.helpers.TorchDistributedEnvironment``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

log = logging.getLogger("npair.run_context")


@dataclass(frozen=True)
class Context:
    """This process's place in the run: rank, local rank (its GPU), world size, backend (None: no process
    group; a launched ``trainer=ddp`` run joins one even at world size 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether this process is in a process group (and its collectives and DDP are used)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def setup(trainer: DictConfig, device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group when ``trainer.distributed`` and a launcher (torchrun, SLURM tasks) started
    this process, at any world size (``torchrun --nproc_per_node=1`` included).

    Returns the context and this rank's device (``cuda:LOCAL_RANK`` on CUDA). One process without a
    launcher runs as a plain single-process run, even with ``trainer=ddp``.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if not trainer.get("distributed", False):
        if launched > 1:
            raise RuntimeError(
                f"started by a distributed launcher (WORLD_SIZE={launched}) but trainer.distributed=false: "
                "add trainer=ddp to the command line, or run a single process"
            )
        return SINGLE, device
    if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        import submitit  # the SLURM tasks of a submitit job: rank variables from SLURM

        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ:  # no launcher announced ranks
        log.info("trainer=ddp in a single process (no torchrun/SLURM tasks): training without DDP")
        return SINGLE, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":  # one GPU per local rank (SLURM may already show each task just its own GPU)
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    spec = str(trainer.ddp.backend)
    backend = ("nccl" if device.type == "cuda" else "gloo") if spec == "auto" else spec
    dist.init_process_group(
        backend,
        timeout=timedelta(minutes=float(trainer.ddp.timeout_min)),
        **({"device_id": device} if backend == "nccl" else {}),
    )
    if rank != 0:  # only rank 0 speaks; the others report warnings and errors
        logging.getLogger("npair").setLevel(logging.WARNING)
    return Context(rank, local_rank, world, backend), device


def teardown(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ the training
def loss_scale(loss_fn: nn.Module, ctx: Context) -> float:
    """W when every rank computes the same gathered loss (DDP then averages W partial gradients), else 1."""
    return float(ctx.world_size) if ctx.enabled and getattr(loss_fn, "gather_across_ranks", False) else 1.0


def gather_negatives(cfg: DictConfig, ctx: Context) -> None:
    """``trainer.ddp.gather_negatives``: set ``loss.gather_across_ranks`` (if the loss has it) under DDP."""
    if ctx.enabled and cfg.trainer.ddp.gather_negatives and "gather_across_ranks" in cfg.loss:
        cfg.loss.gather_across_ranks = True


def for_training(
    model: nn.Module, loss_fn: nn.Module, trainer: DictConfig, ctx: Context, device: torch.device
) -> tuple[nn.Module, nn.Module, float]:
    """What the step loop calls: the model and the loss wrapped for DDP (:func:`wrap`), the model
    ``torch.compile``d with ``trainer.compile``, and the loss scale for ``backward()``
    (:func:`loss_scale`)."""
    train_model, train_loss = wrap(model, ctx, device), wrap(loss_fn, ctx, device)
    if trainer.compile:
        train_model = torch.compile(train_model)
    return train_model, train_loss, loss_scale(loss_fn, ctx)


def wrap(module: nn.Module, ctx: Context, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` under DDP when it has trainable parameters, else itself."""
    if not ctx.enabled or not any(p.requires_grad for p in module.parameters()):
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
