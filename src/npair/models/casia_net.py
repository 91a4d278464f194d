"""The CASIA-WebFace network of Yi et al. 2014, "Learning Face Representation from Scratch".

Ten 3x3 convolutions in five stages, trained from scratch on 100x100 grayscale faces:

=========  ========  ============  =========================
stage      conv      channels      pooling after the stage
=========  ========  ============  =========================
1          11, 12    32, 64        max 2x2 / 2  -> 50x50
2          21, 22    64, 128       max 2x2 / 2  -> 25x25
3          31, 32    96, 192       max 2x2 / 2  -> 13x13
4          41, 42    128, 256      max 2x2 / 2  -> 7x7
5          51, 52    160, 320      average 7x7 (global) -> 320
=========  ========  ============  =========================

Stride 1, padding 1; max pooling uses ceil mode (Caffe's rounding: 25 -> 13 -> 7). ReLU follows
every convolution except Conv52, whose linear output is average-pooled into the 320-d
representation (``relu_after_conv52`` switches that on). Yi et al.'s dropout (0.4) and 10,575-way
softmax sit after pool5 and belong to the classifier, not to the features; the N-pair loss
puts the embedding head there instead. ``batch_norm`` (off by default, not in the 2014
design) adds BatchNorm after each convolution for easier training from scratch.
"""

from __future__ import annotations

from torch import Tensor, nn

from npair.models.batchnorm import freeze_batchnorm

STAGES: tuple[tuple[int, int], ...] = ((32, 64), (64, 128), (96, 192), (128, 256), (160, 320))


class CasiaNet(nn.Module):
    """Faces (B, C, 100, 100) -> pooled conv52 features (B, 320). Any input size >= 16 works
    (the final pooling is global)."""

    def __init__(
        self,
        in_channels: int = 1,
        batch_norm: bool = False,
        relu_after_conv52: bool = False,
        dropout: float = 0.0,
        pretrained: bool = False,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        if pretrained:
            raise ValueError(
                "the CASIA network is trained from scratch (Yi et al. 2014); no pretrained weights exist: "
                "set backbone.net.pretrained=false"
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, (mid, out) in enumerate(STAGES, start=1):
            for index, width in ((1, mid), (2, out)):
                layers.append(
                    nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=1, bias=not batch_norm)
                )
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                last = stage == len(STAGES) and index == 2
                if not last or relu_after_conv52:
                    layers.append(nn.ReLU(inplace=True))
                channels = width
            if stage < len(STAGES):
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # 7x7 average at the 100x100 input size
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = STAGES[-1][1]
        self._init_weights()
        if frozen_bn:
            freeze_batchnorm(self)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.pool(self.features(x)).flatten(1))
