"""What builds a run from a config: compose it, instantiate its parts, its loss, evaluate a model.

The library half of ``python -m npair.train``: the training loop (npair.train), the table runner
(npair.tables), the evaluation command (npair.evaluate) and the tests build runs with these functions.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from npair.configuration import CONFIG_DIR, register_resolvers
from npair.data.base import DatasetSplits
from npair.evaluation import EmbeddingSet
from npair.evaluation.embed import embed_dataset


def compose_train(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config ``python -m npair.train <overrides>`` runs (configs/train.yaml), composed in-process."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def make(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a config-group node (its ``_target_``), dropping the descriptive ``name`` key."""
    container = OmegaConf.to_container(node, resolve=True)
    container.pop("name", None)
    return instantiate(container, **kwargs)


def build_loss(cfg: DictConfig, splits: DatasetSplits) -> nn.Module:
    """The configured loss; ``loss.num_classes: null`` (a classifier) becomes the number of training classes."""
    kwargs = {"num_classes": splits.num_train_classes} if cfg.loss.get("num_classes", 0) is None else {}
    return make(cfg.loss, **kwargs)


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={spec!r} but CUDA is not available; use trainer.device=cpu or auto")
    return device


def autocast_dtype(precision: str | int, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``trainer.precision`` (None = full fp32)."""
    precision = str(precision)
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    choices = {"32": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "16": torch.float16}
    if precision not in choices:
        raise ValueError(f"trainer.precision={precision!r}: use auto, 32, bf16 or fp16")
    if choices[precision] is torch.float16 and device.type != "cuda":
        raise ValueError("trainer.precision=fp16 needs CUDA; use bf16 or 32 on CPU")
    return choices[precision]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def check_compatible(loss_fn: nn.Module, sampler: Any, cfg: DictConfig) -> None:
    """The sampler must produce the batch layout the loss reads (see npair.losses)."""
    want, have = getattr(loss_fn, "layout", "any"), getattr(sampler, "layout", None)
    if want != "any" and want != have:
        raise ValueError(
            f"loss={cfg.loss.name} reads {want!r} batches but sampler={cfg.sampler.name} makes {have!r} batches; "
            f"choose a sampler with layout {want!r} (e.g. the one its experiment configs use)"
        )


def evaluate_model(model: nn.Module, loss_fn: nn.Module, splits: DatasetSplits, evaluator: Any,
             cfg: DictConfig, device: torch.device) -> dict[str, float]:
    """Embed the test split (and the training split when the protocol needs it) and run the evaluator."""
    bs, workers = int(cfg.trainer.eval_batch_size), int(cfg.trainer.num_workers)
    test = embed_dataset(model, splits.test, batch_size=bs, device=device, num_workers=workers)
    if hasattr(loss_fn, "logits"):  # a softmax classifier: its own predictions give the † accuracy
        with torch.no_grad():
            test.logits = loss_fn.logits(torch.from_numpy(test.embeddings).to(device)).float().cpu().numpy()
    reference: EmbeddingSet | None = None
    if evaluator.needs_reference:
        reference = embed_dataset(model, splits.train, batch_size=bs, device=device, num_workers=workers)
    model.train()
    return {k: float(v) for k, v in evaluator(test, reference, extras=splits.extras).items()}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
