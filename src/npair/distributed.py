"""Helpers for computing losses over the batches of all ranks under ``torch.distributed``.

N-pair-mc / N-pair-ovo with ``gather_across_ranks: true`` use :func:`gather_with_grad` so that
every rank sees the embeddings of the whole global batch (N = the global number of classes)
while gradient flows only into the local slice.

Gradient bookkeeping. Every rank then computes the *same* global loss L. On rank r the backward
pass yields dL/d(e_r) exactly (the other ranks' embeddings are constants there, which is what a
partial derivative needs), so the concatenation over ranks of the local embedding gradients is
the single-process gradient on the concatenated batch (tested in ``tests/test_distributed.py``).
DistributedDataParallel then *averages* parameter gradients over ranks, i.e. the parameter
gradient is (1/W)·dL/dθ; multiply the loss by :func:`world_size` before ``backward()`` (or scale
the learning rate) if the single-process gradient is wanted.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 outside ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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
