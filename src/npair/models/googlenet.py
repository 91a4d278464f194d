"""GoogLeNet (Szegedy et al. 2015, Inception v1) as the image backbone: 1024-d pool5 features.

The paper's image experiments use GoogLeNet pretrained on ImageNet (docs/paper.md §4.2, the usual
reading; "(c) not confirmed" from the paper itself). torchvision's port (with batch norm) is
used through the weights API; the auxiliary classifiers are dropped and the 1000-way ``fc``
replaced by the identity, so ``forward`` returns the global-average-pooled features.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from npair.models.batchnorm import freeze_batchnorm
from npair.models.pretrained import load_pretrained


class GoogLeNetBackbone(nn.Module):
    """Images (B, 3, H, W) -> pooled features (B, 1024).

    Args:
        pretrained: load ``weights`` (ImageNet) via torchvision; ``False`` trains from scratch.
        weights: torchvision weight name (``IMAGENET1K_V1``, the only GoogLeNet weights).
        frozen_bn: replace BatchNorm by frozen BatchNorm (running statistics fixed).
        in_channels: 3, or 1 (grayscale input is repeated to 3 channels).
        dropout: dropout on the pooled features (torchvision's classifier uses 0.2; default 0).
        transform_input: torchvision's re-normalisation of ImageNet-normalised input for the
            ported weights; ``None`` = on exactly when pretrained (torchvision's own default).
    """

    out_features = 1024

    def __init__(
        self,
        pretrained: bool = True,
        weights: str = "IMAGENET1K_V1",
        frozen_bn: bool = False,
        in_channels: int = 3,
        dropout: float = 0.0,
        transform_input: bool | None = None,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"GoogLeNet takes 1 or 3 input channels, got in_channels={in_channels}")
        self.in_channels = in_channels
        kwargs = {} if transform_input is None else {"transform_input": transform_input}
        if pretrained:
            # torchvision loads the aux heads' weights, then drops them (aux_logits defaults to off).
            enum = torchvision.models.GoogLeNet_Weights[weights]
            net = load_pretrained(torchvision.models.googlenet, "googlenet", enum, **kwargs)
        else:
            net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True, **kwargs)
        net.fc = nn.Identity()
        net.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.net = freeze_batchnorm(net) if frozen_bn else net

    def forward(self, x: Tensor) -> Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x)
