"""configs/dataset/*.yaml (real datasets + folder) instantiate on the tiny fake_data; backbone configs
build."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from npair.data.base import DatasetSplits
from npair.data.sources import SOURCES

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MINE = ["cub200", "cars196", "sop", "webface_lfw", "flowers102", "car333", "flower610", "folder"]


def _compose(name: str, data_dir: Path, **overrides) -> OmegaConf:
    cfg = OmegaConf.create(
        {
            "paths": {"data_dir": str(data_dir)},
            "dataset": OmegaConf.load(CONFIGS / "dataset" / f"{name}.yaml"),
        }
    )
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


@pytest.mark.parametrize("name", MINE)
def test_dataset_config_has_contract_keys(name):
    cfg = OmegaConf.load(CONFIGS / "dataset" / f"{name}.yaml")
    for key in ("name", "channels", "image_size", "embedding_dim", "root", "transform", "build"):
        assert key in cfg or OmegaConf.is_missing(cfg, key), f"{name}.yaml lacks {key}"
    assert cfg.name == name and cfg.build._target_.startswith("npair.data.")
    assert cfg.transform.kind in ("paper", "face")
    if name != "folder":
        assert name in SOURCES or cfg.name == "webface_lfw"


def _build(cfg) -> DatasetSplits:
    splits = instantiate(cfg.dataset.build)
    assert isinstance(splits, DatasetSplits)
    image, _ = splits.train[0]
    assert image.shape == (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    return splits


@pytest.mark.parametrize(
    "name, maker, counts",
    [
        ("cub200", "cub", {"train_images": 7, "test_images": 11, "train_classes": 2, "test_classes": 2}),
        ("cars196", "cars", {"train_images": 5, "test_images": 6}),
        ("sop", "sop", {"train_images": 7, "test_images": 6}),
        ("flowers102", "flowers102", {"train_images": 6, "test_images": 3}),
    ],
)
def test_image_dataset_configs_instantiate(tmp_path, fake_data, name, maker, counts):
    fake_data[maker](tmp_path)
    cfg = _compose(name, tmp_path, **{"dataset.image_size": 32, "dataset.verify_counts": counts})
    splits = _build(cfg)
    assert len(splits.train) == counts["train_images"] and len(splits.test) == counts["test_images"]
    with pytest.raises(Exception, match="expected"):
        instantiate(
            _compose(name, tmp_path, **{"dataset.image_size": 32}).dataset.build
        )  # the published counts


def test_webface_lfw_config_instantiates_with_face_pipeline(tmp_path, fake_data):
    fake_data["lfw"](tmp_path)
    fake_data["casia"](tmp_path)
    splits = _build(_compose("webface_lfw", tmp_path, **{"dataset.verify_counts": False}))
    assert splits.extras["pairs"].shape == (8, 4) and len(splits.extras["gallery"]) == 2
    assert splits.test[0][0].shape == (1, 100, 100)


def test_listfile_config(tmp_path, fake_data):
    root = tmp_path / "car333"
    for k in range(4):
        fake_data["image"](root / f"{k}.jpg", seed=k)
    (root / "list.txt").write_text("0.jpg 1 train\n1.jpg 2 train\n2.jpg 1 test\n3.jpg 2 test\n")
    splits = _build(_compose("car333", tmp_path, **{"dataset.image_size": 32}))
    assert splits.protocol == "seen" and splits.name == "car333"
    with pytest.raises(Exception, match="expected 157023"):
        instantiate(_compose("car333", tmp_path, **{"dataset.verify_counts": True}).dataset.build)


def test_folder_config_requires_root_and_builds(tmp_path, fake_data):
    cfg = _compose("folder", tmp_path)
    with pytest.raises(Exception, match="Missing mandatory value"):
        instantiate(cfg.dataset.build)
    tree = fake_data["folder"](tmp_path / "tree", {f"c{i}": 3 for i in range(4)})
    splits = _build(_compose("folder", tmp_path, **{"dataset.root": str(tree), "dataset.image_size": 32}))
    assert splits.protocol == "unseen" and splits.num_train_classes == 2 and splits.num_test_classes == 2


@pytest.mark.parametrize(
    "name, channels, size, features",
    [("googlenet", 3, 64, 1024), ("resnet50", 3, 64, 2048), ("casia_net", 1, 100, 320)],
)
def test_backbone_configs_build(name, channels, size, features):
    import torch

    cfg = OmegaConf.create(
        {"dataset": {"channels": channels}, "backbone": OmegaConf.load(CONFIGS / "backbone" / f"{name}.yaml")}
    )
    assert cfg.backbone.name == name and cfg.backbone.head_init == "default"
    assert "pretrained" in cfg.backbone.net and "frozen_bn" in cfg.backbone.net
    OmegaConf.update(cfg, "backbone.net.pretrained", False)
    net = instantiate(cfg.backbone.net).eval()
    with torch.no_grad():
        assert net(torch.randn(1, channels, size, size)).shape == (1, features)
