"""Paper and face pipelines (torchvision.transforms.v2) and the config's transform node."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from npair.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformPair,
    build_transforms,
    face_transforms,
    paper_transforms,
)


def _solid(color=(200, 100, 50), size=(500, 375)):
    return Image.new("RGB", size, color)


def test_paper_pipeline_shapes_and_normalisation():
    pair = paper_transforms()
    img = _solid()
    for fn in (pair.train, pair.test):
        out = fn(img)
        assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    expected = (np.array([200, 100, 50]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    out = pair.test(img).double()
    assert np.allclose(out.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)


def test_paper_test_pipeline_is_resize_256_then_centre_crop():
    """Resize the shorter side to 256 (375 -> 256, 500 -> 341), then the central 224x224."""
    arr = np.zeros((375, 500, 3), dtype=np.uint8)
    arr[:, :250] = 255  # left half white: after resize, the central crop spans the boundary at x = 170.5
    out = paper_transforms(mean=(0.0,), std=(1.0,)).test(Image.fromarray(arr))
    row = out[0, 112].numpy()
    left = (341 - 224) // 2  # 58
    boundary = 341 / 2 - left  # ~112.5 in crop coordinates
    assert row[: int(boundary) - 2].min() > 0.99 and row[int(boundary) + 3 :].max() < 0.01


def test_train_pipeline_is_random_and_flips():
    arr = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    pair = paper_transforms(image_size=32)
    torch.manual_seed(0)
    outs = [pair.train(img) for _ in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert torch.equal(pair.test(img), pair.test(img))
    no_aug = paper_transforms(image_size=32, flip=False, resize=32)  # resize == crop on the short side
    square = Image.fromarray(arr[:, :375])
    assert torch.equal(no_aug.train(square), no_aug.test(square))


def test_resize_null_keeps_the_256_over_224_ratio():
    pair = paper_transforms(image_size=32, resize=None)
    resize = pair.test.transforms[0]
    assert resize.size == [37] or resize.size == 37
    with pytest.raises(ValueError, match="smaller than"):
        paper_transforms(image_size=64, resize=32)


def test_face_pipeline_grayscale_100():
    pair = face_transforms()
    img = _solid(size=(250, 250))
    assert pair.mode == "L"
    out = pair.train(img)
    assert out.shape == (1, 100, 100)
    gray = 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    assert abs(float(pair.test(img).mean()) - (gray / 255 - 0.5) / 0.5) < 0.01


def test_build_from_config_node():
    pair = build_transforms({"kind": "face", "image_size": 64, "face_crop": None})
    assert pair.test(_solid(size=(90, 120))).shape == (1, 64, 64)
    paper = build_transforms(None, image_size=48)
    assert isinstance(paper, TransformPair) and paper.test(_solid()).shape == (3, 48, 48)
    assert build_transforms(paper) is paper
    gray = build_transforms({"kind": "paper", "image_size": 16, "channels": 1})
    assert gray.mode == "L" and gray.test(_solid()).shape == (1, 16, 16)
    with pytest.raises(ValueError, match="transform.kind"):
        build_transforms({"kind": "fancy"})
