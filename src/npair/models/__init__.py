"""Backbone + linear embedding head.

``build_model(cfg.backbone, embedding_dim)`` instantiates ``cfg.backbone.net`` (any module mapping
images to (B, F) features with an ``out_features`` attribute) and puts a linear head on top.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from torch import Tensor, nn

HEAD_INITS = ("default", "kaiming", "xavier", "orthogonal")


class EmbeddingModel(nn.Module):
    """f(x) = W·backbone(x) + b: the embedding the losses and the evaluator see (unnormalised)."""

    def __init__(self, backbone: nn.Module, embedding_dim: int, head_init: str = "default") -> None:
        super().__init__()
        if not hasattr(backbone, "out_features"):
            raise TypeError(f"backbone {type(backbone).__name__} has no `out_features` attribute")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.out_features), int(embedding_dim))
        init_head(self.head, head_init)

    @property
    def embedding_dim(self) -> int:
        return self.head.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def init_head(layer: nn.Linear, how: str) -> None:
    """Initialise the embedding head.

    ``default`` keeps PyTorch's own init (uniform ±1/√fan_in): the Proxy-Anchor authors report it was
    critical for reproducing N-pair (their issue #19), and it keeps initial inner products small.
    """
    if how == "default":
        return
    if how == "kaiming":
        nn.init.kaiming_normal_(layer.weight, mode="fan_out")
    elif how == "xavier":
        nn.init.xavier_uniform_(layer.weight)
    elif how == "orthogonal":
        nn.init.orthogonal_(layer.weight)
    else:
        raise ValueError(f"backbone.head_init={how!r} is not one of {HEAD_INITS}")
    nn.init.zeros_(layer.bias)


def build_model(backbone_cfg: Any, embedding_dim: int) -> EmbeddingModel:
    """Instantiate ``backbone_cfg.net`` and add the embedding head (``backbone_cfg.head_init``)."""
    net = instantiate(backbone_cfg.net)
    return EmbeddingModel(net, embedding_dim, head_init=backbone_cfg.get("head_init", "default"))


__all__ = ["HEAD_INITS", "EmbeddingModel", "build_model", "init_head"]
