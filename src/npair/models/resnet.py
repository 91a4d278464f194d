"""ResNet-50 (He et al. 2016) as an alternative image backbone: 2048-d pooled features.

Not used by the paper (which uses GoogLeNet); offered because later DML work compares on it.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from npair.models.batchnorm import freeze_batchnorm
from npair.models.pretrained import load_pretrained


class ResNet50Backbone(nn.Module):
    """Images (B, 3, H, W) -> global-average-pooled features (B, 2048).

    Args:
        pretrained: load ImageNet ``weights`` via torchvision (``IMAGENET1K_V1`` is the classic
            76.1 % top-1 model most DML papers use; ``IMAGENET1K_V2`` the newer recipe).
        frozen_bn: replace BatchNorm by frozen BatchNorm.
        in_channels: 3, or 1 (grayscale input is repeated to 3 channels).
    """

    out_features = 2048

    def __init__(
        self,
        pretrained: bool = True,
        weights: str = "IMAGENET1K_V1",
        frozen_bn: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"ResNet-50 takes 1 or 3 input channels, got in_channels={in_channels}")
        self.in_channels = in_channels
        if pretrained:
            enum = torchvision.models.ResNet50_Weights[weights]
            net = load_pretrained(torchvision.models.resnet50, "resnet50", enum)
        else:
            net = torchvision.models.resnet50(weights=None)
        net.fc = nn.Identity()
        self.net = freeze_batchnorm(net) if frozen_bn else net

    def forward(self, x: Tensor) -> Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x)
