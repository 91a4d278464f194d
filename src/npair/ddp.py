"""Training in several processes with PyTorch's DistributedDataParallel (``trainer=ddp``).

    torchrun --nproc_per_node=K -m npair.train trainer=ddp ...            # K GPUs (or K CPU processes)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m npair.train trainer=ddp
    python -m npair.train -m hydra/launcher=slurm hydra.launcher.tasks_per_node=K hydra.launcher.gpus_per_node=K trainer=ddp

What W ranks change, and why one process and W processes train the same model:

* **Batches.** The sampler's batch size (``sampler.n_classes`` / ``n_triplets`` / ``n_pairs``) is the
  *global* batch: each rank builds the same global batch from (seed, epoch) and keeps its contiguous
  1/W slice (npair.samplers), so for class-block batches every rank holds distinct classes. A batch
  size that does not divide by W fails before training (npair.guards). (The naive tuplet sampler is
  the exception: each rank builds complete tuplets from its N/W classes.)
* **Negatives.** ``trainer.ddp.gather_negatives`` sets ``loss.gather_across_ranks`` for the losses
  that have it (N-pair-mc, N-pair-ovo): every rank computes the loss of the whole global batch
  (N = the global number of classes), gradient flowing into its own slice (npair.distributed).
* **Loss scale.** DDP *averages* parameter gradients over ranks. With gathered negatives every rank's
  loss is the global loss L and its backward gives the part of dL/dθ that flows through its own
  slice, so the average is (1/W)·dL/dθ. The loop therefore calls ``backward()`` on W·L
  (:func:`loss_scale`); the logged loss is L. Losses computed per rank (triplet, contrastive, ...)
  are means over equal-sized slices, whose average gradient is already the global one: scale 1.
* **BatchNorm.** ``trainer.ddp.sync_batchnorm`` makes training-mode BatchNorm use the statistics
  of the global batch, as one process would: ``torch.nn.SyncBatchNorm`` on CUDA, and on CPU/gloo
  (where SyncBatchNorm does not run) :class:`GlobalBatchNorm2d`.
* **Rank 0 only** evaluates, logs (RunLogger, W&B, tqdm, INFO messages) and writes files; the other
  ranks keep no RunLogger and write nothing (``trainer=ddp`` also points their Hydra output away
  from the run directory). Checkpoints hold every rank's RNG state, gathered to rank 0.

Backend: ``trainer.ddp.backend=auto`` is nccl on CUDA and gloo on CPU. Each rank uses
``cuda:LOCAL_RANK``. Under SLURM via the submitit launcher (one task per GPU) the rank variables
are taken from SLURM (``submitit.helpers.TorchDistributedEnvironment``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from npair import distributed as npd
from npair.models.batchnorm import replace_children

log = logging.getLogger("npair.ddp")


# ---------------------------------------------------------------------------------- who am I
def env_rank() -> int:
    """The global rank announced by the launcher's environment (torchrun: RANK; SLURM via submitit:
    SLURM_PROCID), 0 when there is none. Usable before any process group exists (config resolvers)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return 0


def _if_rank_zero(on_rank_zero: Any, elsewhere: Any = None) -> Any:
    """Config resolver ``${if_rank_zero:A,B}``: A on global rank 0, B on the others (trainer/ddp.yaml)."""
    return on_rank_zero if env_rank() == 0 else elsewhere


OmegaConf.register_new_resolver("if_rank_zero", _if_rank_zero, replace=True)
OmegaConf.register_new_resolver("devnull", lambda: os.devnull, replace=True)


@dataclass(frozen=True)
class Context:
    """This process's place in the run: rank, local rank (its GPU), world size, backend."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def setup(trainer: DictConfig, device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group when ``trainer.distributed`` and a launcher started several processes.

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
    if world == 1:
        log.info("trainer=ddp in a single process (no torchrun/SLURM tasks): training without DDP")
        return SINGLE, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":  # one GPU per local rank (SLURM may already show each task just its own GPU)
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    spec = str(trainer.ddp.backend)
    backend = ("nccl" if device.type == "cuda" else "gloo") if spec == "auto" else spec
    dist.init_process_group(backend, timeout=timedelta(minutes=float(trainer.ddp.timeout_min)),
                            **({"device_id": device} if backend == "nccl" else {}))
    if rank != 0:  # only rank 0 speaks; the others report warnings and errors
        logging.getLogger("npair").setLevel(logging.WARNING)
    return Context(rank, local_rank, world, backend), device


def teardown(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------- collectives
def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


@contextlib.contextmanager
def main_process_first(ctx: Context) -> Iterator[None]:
    """Rank 0 runs the block first (downloads, caches), then the others (reading what it wrote)."""
    if not ctx.is_main:
        barrier(ctx)
    yield
    if ctx.is_main:
        barrier(ctx)


def broadcast_object(obj: Any, ctx: Context) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], Any], ctx: Context) -> Any:
    """``fn()`` computed on rank 0 and its result, or its exception (re-raised), on every rank."""
    if not ctx.enabled:
        return fn()
    outcome: tuple[str, Any] | None = None
    if ctx.is_main:
        try:
            outcome = ("ok", fn())
        except Exception as err:  # noqa: BLE001  (handed to every rank, then raised)
            outcome = ("error", err)
    kind, value = broadcast_object(outcome, ctx)
    if kind == "error":
        raise value
    return value


def gather_objects(obj: Any, ctx: Context) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, ctx: Context, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (so all ranks take the same branch)."""
    if not ctx.enabled:
        return bool(flag)
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(value: Tensor, ctx: Context) -> Tensor:
    """The mean over ranks of a per-rank scalar (for logging a per-rank loss as the global batch's)."""
    if not ctx.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / ctx.world_size


# ------------------------------------------------------------------------------ the training
def loss_scale(loss_fn: nn.Module, ctx: Context) -> float:
    """W when every rank computes the same gathered loss (DDP then averages W partial gradients), else 1."""
    return float(ctx.world_size) if ctx.enabled and getattr(loss_fn, "gather_across_ranks", False) else 1.0


def gather_negatives(cfg: DictConfig, ctx: Context) -> None:
    """``trainer.ddp.gather_negatives``: set ``loss.gather_across_ranks`` (if the loss has it) under DDP."""
    if ctx.enabled and cfg.trainer.ddp.gather_negatives and "gather_across_ranks" in cfg.loss:
        cfg.loss.gather_across_ranks = True


class _SumOverRanks(torch.autograd.Function):
    """y = Σ_ranks x; its backward sums the incoming gradients over ranks (every rank's loss depends on y)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d normalising with the statistics of the global batch (all ranks) in training mode.

    For gloo/CPU, where ``torch.nn.SyncBatchNorm`` refuses to run. y = (x − μ)/√(σ² + ε)·γ + β with
    μ = Σx / n and σ² = Σ(x − μ)² / n summed over all ranks' batches (n = the global count) by two
    differentiable all-reduces (their backward sums the gradients of every rank's loss, as
    SyncBatchNorm's does); the running statistics use the unbiased σ²·n/(n − 1), as nn.BatchNorm2d.
    Outside training or outside a process group it is exactly nn.BatchNorm2d (same state_dict keys).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and npd.is_distributed()):
            return super().forward(x)
        dims = [0, 2, 3]
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = float(count.item())
        mean = _SumOverRanks.apply(x.sum(dims)) / n
        centred = x - mean.view(1, -1, 1, 1)
        var = _SumOverRanks.apply(centred.square().sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * n / max(n - 1.0, 1.0), factor)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Training-mode BatchNorm over the global batch: SyncBatchNorm on CUDA, GlobalBatchNorm2d elsewhere.

    Parameters and buffers are moved, not copied, so call it before building the optimiser.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global_batchnorm(model)


def _to_global_batchnorm(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        replaced = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats, device=None)
        if module.affine:
            replaced.weight, replaced.bias = module.weight, module.bias
        if module.track_running_stats:
            replaced.running_mean, replaced.running_var = module.running_mean, module.running_var
            replaced.num_batches_tracked = module.num_batches_tracked
        replaced.train(module.training)
        return replaced
    return replace_children(module, _to_global_batchnorm)


def wrap(module: nn.Module, ctx: Context, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` under DDP when it has trainable parameters, else itself."""
    if not ctx.enabled or not any(p.requires_grad for p in module.parameters()):
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


class SilentLogger:
    """What ranks other than 0 log: nothing (no files, no W&B). Mirrors npair.loggers.RunLogger."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {"history": []}
        self.start = 0.0

    def log_train(self, row: dict[str, Any]) -> None:
        pass

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def finish(self, status: str, final: dict[str, float], extra: dict[str, Any] | None = None) -> None:
        pass
