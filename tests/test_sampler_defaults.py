"""Each loss gets a sampler without naming one: its own sampler/<loss>.yaml, else its layout's default."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from npair.build import compose_train
from npair.configuration import CONFIG_DIR
from npair.sampler_defaults import SAMPLER_OF_LAYOUT, loss_target, register_default_samplers, search_dirs


class TripletsLoss(torch.nn.Module):
    """A user's loss reading triplet batches."""

    layout = "triplets"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return embeddings.sum() * 0


class OddLayoutLoss(TripletsLoss):
    layout = "quadruplets"


TRIPLETS = f"{__name__}.TripletsLoss"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_every_default_sampler_makes_its_layout() -> None:
    for layout, sampler in SAMPLER_OF_LAYOUT.items():
        target = OmegaConf.load(CONFIG_DIR / "sampler" / f"{sampler}.yaml")._target_
        made = get_class(target).layout
        assert made == layout or (layout == "any" and made == "class_blocks"), (layout, sampler, made)


def test_the_package_losses_train_on_their_layouts_default_sampler() -> None:
    registered = register_default_samplers()
    # triplet and tuplet name their own sampler (sampler/triplet.yaml, sampler/tuplet.yaml)
    assert registered == {
        "contrastive": "pair",
        "npair_mc": "npair",
        "npair_mc_cosine": "npair",
        "npair_ovo": "npair",
        "softmax": "npair",
        "triplet_nm": "npair",
    }
    for loss in sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml")):
        cfg = compose_train([f"loss={loss}"])
        layout = get_class(cfg.loss._target_).layout
        named = (CONFIG_DIR / "sampler" / f"{loss}.yaml").is_file()
        expected = loss if named else SAMPLER_OF_LAYOUT[layout]
        assert cfg.sampler == compose_train([f"loss={loss}", f"sampler={expected}"]).sampler, loss


def test_a_users_loss_gets_its_layouts_sampler_and_may_name_its_own(tmp_path: Path) -> None:
    mine = tmp_path / "my_configs"
    target = f"_target_: {TRIPLETS}\n"
    write(mine / "loss" / "user_triplets.yaml", f"name: user_triplets\n{target}")
    write(mine / "loss" / "user_inherits.yaml", "defaults: [user_triplets, _self_]\nname: user_inherits\n")
    write(mine / "loss" / "user_named.yaml", f"name: user_named\n{target}")
    write(mine / "sampler" / "user_named.yaml", "defaults: [npair, _self_]\nn_classes: 7\n")
    searchpath = f"hydra.searchpath=[file://{mine}]"
    assert loss_target("user_inherits", search_dirs([searchpath])) == TRIPLETS

    cfg = compose_train([searchpath, "loss=user_triplets"])
    assert cfg.sampler._target_ == "npair.samplers.TripletSampler" and cfg.sampler.name == "triplet"
    assert compose_train([searchpath, "loss=user_inherits"]).sampler.name == "triplet"
    named = compose_train([searchpath, "loss=user_named"]).sampler
    assert (named._target_, named.n_classes) == ("npair.samplers.NPairSampler", 7)  # its own sampler config
    overridden = compose_train([searchpath, "loss=user_triplets", "sampler=pair", "sampler.n_pairs=5"])
    overridden = overridden.sampler
    assert (overridden.name, overridden.n_pairs) == ("pair", 5)


def test_a_loss_without_a_usable_layout_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mine = tmp_path / "odd_configs"
    write(mine / "loss" / "odd_layout.yaml", "_target_: tests.test_sampler_defaults.OddLayoutLoss\n")
    write(mine / "loss" / "odd_import.yaml", "_target_: no_such_module.Loss\n")
    with caplog.at_level(logging.WARNING, logger="npair.sampler_defaults"):
        registered = register_default_samplers([f"hydra.searchpath=[file://{mine}]"])
    assert "odd_layout" not in registered and "odd_import" not in registered
    text = caplog.text
    assert "loss/odd_layout.yaml: tests.test_sampler_defaults.OddLayoutLoss reads 'quadruplets'" in text
    assert "loss/odd_import.yaml: cannot import no_such_module.Loss" in text
    assert "name a sampler for loss=odd_import with sampler=..., or add a sampler/odd_import.yaml" in text


def test_search_dirs_follow_hydras_order() -> None:
    dirs = search_dirs(["loss=x", "hydra.searchpath=[file://a,pkg://npair]", "--config-dir", "b"])
    assert dirs[0] == CONFIG_DIR
    assert dirs[1] == Path("a") and dirs[2].name == "npair" and dirs[3] == Path("b")
