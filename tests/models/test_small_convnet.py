"""The small conv net and the embedding head."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from npair.models import EmbeddingModel, build_model
from npair.models.small_convnet import SmallConvNet


@pytest.mark.parametrize("size", [8, 32])
def test_small_convnet_gives_configured_embedding(size: int) -> None:
    cfg = OmegaConf.create(
        {
            "net": {
                "_target_": "npair.models.small_convnet.SmallConvNet",
                "in_channels": 1,
                "widths": [4, 8, 8, 16],
            },
            "head_init": "default",
        }
    )
    model = build_model(cfg, embedding_dim=12)
    x = torch.randn(3, 1, size, size)
    out = model(x)
    assert out.shape == (3, 12)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("how", ["kaiming", "xavier", "orthogonal"])
def test_head_inits_change_the_weights_and_zero_the_bias(how: str) -> None:
    torch.manual_seed(0)
    default = EmbeddingModel(SmallConvNet(1, (4,)), 6, "default").head
    torch.manual_seed(0)
    other = EmbeddingModel(SmallConvNet(1, (4,)), 6, how).head
    assert not torch.equal(default.weight, other.weight)
    assert torch.count_nonzero(other.bias) == 0


def test_unknown_head_init_names_the_key() -> None:
    with pytest.raises(ValueError, match="backbone.head_init='bogus'"):
        EmbeddingModel(SmallConvNet(1, (4,)), 6, "bogus")
