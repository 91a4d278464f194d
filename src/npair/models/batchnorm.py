"""Frozen BatchNorm: replace every ``BatchNorm2d`` by a fixed affine map of its running statistics.

With small N-pair batches (two images per class) per-batch statistics are noisy, and many DML
reproductions freeze BN of the ImageNet-pretrained backbone (e.g. Roth et al. 2020). A frozen
layer computes ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` with all
four tensors as buffers, so neither ``model.train()`` nor the optimiser changes it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


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
