"""GoogLeNet, ResNet-50 and the CASIA network: build, forward/backward on CPU, feature sizes,
frozen BatchNorm, and the offline pretrained-weights error."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from npair.models.batchnorm import count_batchnorm, freeze_batchnorm
from npair.models.casia_net import CasiaNet
from npair.models.googlenet import GoogLeNetBackbone
from npair.models.pretrained import PretrainedWeightsUnavailable, checkpoint_path
from npair.models.resnet import ResNet50Backbone


def _forward_backward(net: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    net.train()
    x = torch.randn(*shape)
    out = net(x)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    return out


@pytest.fixture(scope="module")
def googlenet() -> GoogLeNetBackbone:
    torch.manual_seed(0)
    return GoogLeNetBackbone(pretrained=False)


@pytest.fixture(scope="module")
def resnet50() -> ResNet50Backbone:
    torch.manual_seed(0)
    return ResNet50Backbone(pretrained=False)


@pytest.mark.parametrize(
    "name, shape, features",
    [
        ("googlenet", (2, 3, 224, 224), 1024),
        ("resnet50", (2, 3, 224, 224), 2048),
        ("casia_net", (2, 1, 100, 100), 320),
    ],
)
def test_backbone_forward_backward_and_feature_size(request, name, shape, features):
    net = CasiaNet() if name == "casia_net" else request.getfixturevalue(name)
    assert net.out_features == features
    out = _forward_backward(net, shape)
    assert out.shape == (shape[0], features)


def test_googlenet_has_no_aux_heads_or_classifier(googlenet):
    net = googlenet
    assert net.net.aux1 is None and net.net.aux2 is None and isinstance(net.net.fc, nn.Identity)
    assert not net.net.transform_input  # only for the ported ImageNet weights
    net.train()
    assert isinstance(net(torch.randn(1, 3, 64, 64)), torch.Tensor)  # no (logits, aux2, aux1) tuple


def test_grayscale_input_is_repeated_for_imagenet_backbones(googlenet):
    googlenet.in_channels = 1
    try:
        googlenet.eval()
        x = torch.randn(1, 1, 64, 64)
        assert torch.allclose(googlenet(x), googlenet.net(x.expand(-1, 3, -1, -1)))
    finally:
        googlenet.in_channels = 3
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        GoogLeNetBackbone(pretrained=False, in_channels=4)


def test_casia_net_architecture_follows_yi_et_al():
    net = CasiaNet()
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64, 128, 96, 192, 128, 256, 160, 320]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.features) == 4
    assert isinstance(net.features[-1], nn.Conv2d)  # no ReLU after conv52
    assert sum(isinstance(m, nn.ReLU) for m in net.features) == 9
    maps = torch.randn(1, 1, 100, 100)
    sizes = []
    for layer in net.features:
        maps = layer(maps)
        if isinstance(layer, nn.MaxPool2d):
            sizes.append(maps.shape[-1])
    assert sizes == [50, 25, 13, 7] and maps.shape == (1, 320, 7, 7)
    assert sum(isinstance(m, nn.ReLU) for m in CasiaNet(relu_after_conv52=True).features) == 10
    with pytest.raises(ValueError, match="from scratch"):
        CasiaNet(pretrained=True)


def test_frozen_batchnorm_keeps_statistics_and_affine_fixed():
    torch.manual_seed(0)
    net = CasiaNet(batch_norm=True)
    bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bn:  # non-trivial statistics to carry over
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(2, 1, 48, 48)
    reference = net(x)
    frozen = freeze_batchnorm(net)
    assert count_batchnorm(frozen) == (0, len(bn))
    frozen.train()  # train mode must not switch to batch statistics
    assert torch.allclose(frozen(x), reference, atol=1e-5)
    buffers = {k: v.clone() for k, v in frozen.state_dict().items() if "running" in k}
    frozen(torch.randn(4, 1, 48, 48)).sum().backward()
    assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in buffers.items())
    assert not any("bn" in n or "running" in n for n, _ in frozen.named_parameters())


def test_frozen_bn_option_on_imagenet_backbones(googlenet, resnet50):
    assert count_batchnorm(googlenet) == (57, 0) and count_batchnorm(resnet50) == (53, 0)
    assert count_batchnorm(GoogLeNetBackbone(pretrained=False, frozen_bn=True)) == (0, 57)
    assert count_batchnorm(ResNet50Backbone(pretrained=False, frozen_bn=True)) == (0, 53)


def _offline(monkeypatch, tmp_path):
    """Empty TORCH_HOME and no network: every download attempt fails like an offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(url, *args, **kwargs):
        raise URLError(f"network blocked in tests: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize(
    "factory, arch, filename",
    [
        (lambda: GoogLeNetBackbone(pretrained=True), "googlenet", "googlenet-1378be20.pth"),
        (lambda: ResNet50Backbone(pretrained=True), "resnet50", "resnet50-0676ba61.pth"),
    ],
    ids=["googlenet", "resnet50"],
)
def test_pretrained_offline_without_cache_fails_with_instructions(
    monkeypatch, tmp_path, factory, arch, filename
):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        factory()
    msg = str(err.value)
    assert f"torchvision.models.{arch}(weights='IMAGENET1K_V1')" in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / filename) in msg
    assert "backbone.net.pretrained=false" in msg and "network blocked" in msg


def test_pretrained_loads_cached_weights_offline(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    weights = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1
    path = checkpoint_path(weights)
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    source = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    torch.save(source.state_dict(), path)
    net = GoogLeNetBackbone(pretrained=True)
    assert torch.equal(net.net.conv1.conv.weight, source.conv1.conv.weight)
    assert net.net.transform_input  # torchvision's input re-normalisation for the ported weights
    path.write_bytes(b"truncated")
    with pytest.raises(PretrainedWeightsUnavailable, match="corrupt or truncated"):
        GoogLeNetBackbone(pretrained=True)
