"""Collectives: what one rank exchanges with the others under ``torch.distributed`` (each a no-op, or the
identity, in a single process).

Two kinds:

* **Tensors for the losses and BatchNorm**, read from the initialised process group:
  :func:`gather_with_grad`, :func:`gather_no_grad`, :func:`sum_with_grad`.
* **Objects and flags for the training loop**, given the run's :class:`npair.run_context.Context`:
  :func:`broadcast_object`, :func:`on_main`, :func:`gather_objects`, :func:`any_rank`,
  :func:`mean_over_ranks`, :func:`barrier`, :func:`main_process_first`.

N-pair-mc / N-pair-ovo with ``gather_across_ranks: true`` use :func:`gather_with_grad` so that
every rank sees the embeddings of the whole global batch (N = the global number of classes)
while gradient flows only into the local slice.

Gradient bookkeeping. Every rank then computes the *same* global loss L. On rank r the backward
pass yields dL/d(e_r) exactly (the other ranks' embeddings are constants there, which is what a
partial derivative needs), so the concatenation over ranks of the local embedding gradients is
the single-process gradient on the concatenated batch (tested in ``tests/test_collectives.py``).
DistributedDataParallel then *averages* parameter gradients over ranks, i.e. the parameter
gradient is (1/W)·dL/dθ; multiply the loss by :func:`world_size` before ``backward()`` (or scale
the learning rate) if the single-process gradient is wanted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from npair.run_context import Context


# ------------------------------------------------------------------------- the process group
def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 outside ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# ------------------------------------------------------------------------- tensors
def gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (same shape on every rank) from all ranks along dim 0, rank-major.

    No gradient flows through the result. Returns ``tensor`` itself outside distributed runs.
    """
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_with_grad(tensor: Tensor) -> Tensor:
    """All-gather ``tensor`` along dim 0 (rank-major), keeping the autograd graph of the local slice.

    ``all_gather`` returns detached copies; the own rank's copy is replaced by ``tensor`` itself so
    the loss's gradient reaches the local embeddings (and through them the local model). Every rank
    must pass a tensor of the same shape.
    """
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[dist.get_rank()] = tensor
    return torch.cat(parts, dim=0)


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


def sum_with_grad(tensor: Tensor) -> Tensor:
    """Σ over ranks of ``tensor``, differentiable: the backward sums the gradients of every rank's loss."""
    return _SumOverRanks.apply(tensor)


# ------------------------------------------------------------------------- objects and flags
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
