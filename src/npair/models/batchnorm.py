"""BatchNorm variants: frozen (fixed running statistics) and global (statistics of all ranks' batches).

**Frozen**: replace every ``BatchNorm2d`` by a fixed affine map of its running statistics. With small
N-pair batches (two images per class) per-batch statistics are noisy, and many DML reproductions freeze
BN of the ImageNet-pretrained backbone (e.g. Roth et al. 2020). A frozen layer computes
``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` with all four tensors as buffers,
so neither ``model.train()`` nor the optimiser changes it.

**Global** (``trainer.ddp.sync_batchnorm``): training-mode BatchNorm normalising with the statistics of
the global batch under DDP, as one process would (:func:`sync_batchnorm`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from npair.collectives import is_distributed, sum_with_grad


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Return ``module`` with every ``nn.BatchNorm2d`` replaced, in place, by ``FrozenBatchNorm2d``.

    The frozen layer keeps the running statistics, affine parameters and ``eps`` of the original.
    """
    from torchvision.ops.misc import FrozenBatchNorm2d  # torchvision's import costs seconds: only when used

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats and module.running_mean is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    return replace_children(module, freeze_batchnorm)


def replace_children(module: nn.Module, fn: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Apply ``fn`` to every child of ``module`` (``fn`` recurses), putting back what it returns, in place."""
    for name, child in module.named_children():
        replaced = fn(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def count_batchnorm(module: nn.Module) -> tuple[int, int]:
    """``(trainable BatchNorm2d layers, FrozenBatchNorm2d layers)`` in ``module``."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    bn = sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in module.modules())
    return bn, frozen


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d normalising with the statistics of the global batch (all ranks) in training mode.

    For gloo/CPU, where ``torch.nn.SyncBatchNorm`` refuses to run. y = (x − μ)/√(σ² + ε)·γ + β with
    μ = Σx / n and σ² = Σ(x − μ)² / n summed over all ranks' batches (n = the global count) by two
    differentiable all-reduces (their backward sums the gradients of every rank's loss, as
    SyncBatchNorm's does); the running statistics use the unbiased σ²·n/(n − 1), as nn.BatchNorm2d.
    Outside training or outside a process group it is exactly nn.BatchNorm2d (same state_dict keys).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0, 2, 3]
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = float(count.item())
        mean = sum_with_grad(x.sum(dims)) / n
        centred = x - mean.view(1, -1, 1, 1)
        var = sum_with_grad(centred.square().sum(dims)) / n
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
        replaced = GlobalBatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            device=None,
        )
        if module.affine:
            replaced.weight, replaced.bias = module.weight, module.bias
        if module.track_running_stats:
            replaced.running_mean, replaced.running_var = module.running_mean, module.running_var
            replaced.num_batches_tracked = module.num_batches_tracked
        replaced.train(module.training)
        return replaced
    return replace_children(module, _to_global_batchnorm)
