"""What builds a run from a config: compose it, instantiate its parts, its loss, evaluate a model, and
rebuild a trained run from its checkpoint (:func:`load_run`).

The library half of ``python -m npair.train``: the training loop (npair.train), the table runner
(npair.tables), the evaluation command (npair.evaluate), the figures (npair.plots) and the tests build
runs with these functions.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from npair import checkpoint as ckpt
from npair.configuration import CONFIG_DIR, register_resolvers
from npair.data.base import DatasetSplits
from npair.data.validation import carve_validation
from npair.evaluation import EmbeddingSet
from npair.evaluation.embed import embed_dataset
from npair.identity import hashes
from npair.models import build_model
from npair.models.batchnorm import sync_batchnorm
from npair.probe import Probe
from npair.runio import CHECKPOINT_FILE, git_commit, locate_data_dir, rebase_data_dir
from npair.sampler_defaults import register_default_samplers
from npair.samplers import current_model_embedder
from npair.stream import BatchStream, SkippingBatchSampler


def compose_train(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config ``python -m npair.train <overrides>`` runs (configs/train.yaml), composed in-process."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        register_default_samplers(overrides)  # sampler: ${loss} for every loss (npair.sampler_defaults)
        return compose("train", overrides=list(overrides))


def make(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a config-group node (its ``_target_``), dropping the descriptive ``name`` key."""
    container = OmegaConf.to_container(node, resolve=True)
    container.pop("name", None)
    return instantiate(container, **kwargs)


def build_loss(cfg: DictConfig, splits: DatasetSplits) -> nn.Module:
    """The configured loss; ``loss.num_classes: null`` (a classifier) becomes the number of training
    classes."""
    kwargs = {"num_classes": splits.num_train_classes} if cfg.loss.get("num_classes", 0) is None else {}
    return make(cfg.loss, **kwargs)


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={spec!r} but CUDA is not available; use trainer.device=cpu or auto")
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


def build_splits(cfg: DictConfig) -> DatasetSplits:
    """The dataset's splits; with ``dataset.validation`` set, the test split is replaced by validation
    classes carved from the training classes (npair.data.validation), for hyperparameter selection."""
    splits: DatasetSplits = instantiate(cfg.dataset.build)
    return carve_validation(splits, cfg.dataset.get("validation"))


def build_probe(cfg: DictConfig, train: Dataset) -> Probe | None:
    """The training-curve probe (``trainer.probe_classes`` classes × 2 images; none when 0), scored on
    ``trainer.probe_similarity`` (inner_product: the paper's figure; cosine: for normalised models)."""
    trainer = cfg.trainer
    if not trainer.probe_classes:
        return None
    similarity = str(trainer.get("probe_similarity", "inner_product"))
    return Probe(train, int(trainer.probe_classes), int(cfg.seed), similarity)


def build_train_model(cfg: DictConfig, device: torch.device, sync_bn: bool) -> tuple[nn.Module, bool]:
    """The embedding model on ``device`` (BatchNorm over the global batch when ``sync_bn``), and whether
    it runs channels_last (``trainer.channels_last``: auto = on CUDA)."""
    model = build_model(cfg.backbone, int(cfg.dataset.embedding_dim))
    if sync_bn:
        model = sync_batchnorm(model, device)
    model = model.to(device)
    trainer = cfg.trainer
    channels_last = device.type == "cuda" if trainer.channels_last == "auto" else bool(trainer.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def build_sampler(
    cfg: DictConfig, splits: DatasetSplits, per_rank_batch: dict[str, int], world_size: int, rank: int
) -> Any:
    """This rank's batch sampler over the training split (``per_rank_batch``: npair.guards.per_rank_batch)."""
    return make(
        cfg.sampler,
        labels=np.asarray(splits.train.labels),
        seed=int(cfg.seed),
        **per_rank_batch,
        num_replicas=world_size,
        rank=rank,
    )


def attach_embedder(
    sampler: Any, model: nn.Module, dataset: Dataset, trainer: DictConfig, device: torch.device
) -> None:
    """Hard negative class mining embeds its candidates with the live model: give the sampler that
    function (other samplers have no ``set_embedder``); no DataLoader is built per refresh."""
    if hasattr(sampler, "set_embedder"):
        sampler.set_embedder(current_model_embedder(model, dataset, device, int(trainer.eval_batch_size)))


def batch_stream(
    dataset: Dataset, sampler: Any, trainer: DictConfig, device: torch.device, seed: int
) -> BatchStream:
    """The training batches: a DataLoader over ``sampler``'s batches, resumable at any batch
    (npair.stream)."""
    batch_sampler = SkippingBatchSampler(sampler)
    pin_memory = device.type == "cuda" if trainer.pin_memory == "auto" else bool(trainer.pin_memory)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=int(trainer.num_workers),
        pin_memory=pin_memory,
        persistent_workers=int(trainer.num_workers) > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    return BatchStream(loader, batch_sampler)


def run_header(
    cfg: DictConfig,
    splits: DatasetSplits,
    evaluator: Any,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    probe: Probe | None,
    world_size: int,
    resumed_from_step: int | None,
) -> dict[str, Any]:
    """What metrics.json records about a run before its results: provenance, data, setting."""
    return {
        "name": cfg.name,
        "seed": int(cfg.seed),
        **hashes(cfg),
        "git": git_commit(),
        "similarity": getattr(evaluator, "similarity", None),
        "device": describe_device(device),
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "dataset": cfg.dataset.name,
        "loss": cfg.loss.name,
        "sampler": cfg.sampler.name,
        "n_train": len(splits.train),
        "n_test": len(splits.test),
        "protocol": splits.protocol,
        "probe_classes": probe.n if probe else 0,
        "tags": list(cfg.get("tags", [])),
        "torch": torch.__version__,
        "world_size": world_size,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "resumed_from_step": resumed_from_step,
    }


def check_compatible(loss_fn: nn.Module, sampler: Any, cfg: DictConfig) -> None:
    """The sampler must produce the batch layout the loss reads (see npair.losses)."""
    want, have = getattr(loss_fn, "layout", "any"), getattr(sampler, "layout", None)
    if want != "any" and want != have:
        raise ValueError(
            f"loss={cfg.loss.name} reads {want!r} batches but sampler={cfg.sampler.name} makes {have!r} "
            f"batches; choose a sampler with layout {want!r} (e.g. the one its experiment configs use)"
        )


def evaluate_model(
    model: nn.Module,
    loss_fn: nn.Module,
    splits: DatasetSplits,
    evaluator: Any,
    cfg: DictConfig,
    device: torch.device,
) -> dict[str, float]:
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
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'' if threads == 1 else 's'})"


# ------------------------------------------------------------------------------ a trained run
@dataclass
class LoadedRun:
    """A trained run rebuilt from its checkpoint: the config, the data, the model and the loss (a classifier
    loss holds the softmax baseline's weights) with the saved states, on one device, in eval mode."""

    cfg: DictConfig
    splits: DatasetSplits
    model: nn.Module
    loss_fn: nn.Module
    step: int
    checkpoint: Path


# What a config read back from a run directory may instantiate without --trust-config: the project's own
# classes and functions, and torch's optimisers and learning-rate schedulers.
TRUSTED_TARGETS = ("npair.", "torch.optim.")


class UntrustedConfigError(RuntimeError):
    """A config read from a run directory names code outside :data:`TRUSTED_TARGETS` to instantiate."""


def check_targets(config: Any, source: str | Path) -> None:
    """Refuse every ``_target_`` in ``config`` (a stored run config, at any depth) outside
    :data:`TRUSTED_TARGETS`, naming each with its key and ``source``, before anything is instantiated."""
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{prefix}.{key}" if prefix else str(key)
                if key == "_target_" and not (isinstance(value, str) and value.startswith(TRUSTED_TARGETS)):
                    found.append(f"{where}: {value!r}")
                walk(value, where)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{prefix}[{i}]")

    walk(OmegaConf.to_container(config, resolve=False) if isinstance(config, DictConfig) else config, "")
    if found:
        raise UntrustedConfigError(
            f"{source}: its config would instantiate code outside npair and torch.optim "
            f"({'; '.join(found)}). "
            "A config read from a run directory runs only the project's own targets; if you trust this run "
            "directory and the code it names, pass --trust-config (load_run(..., trust_config=True))"
        )


def load_run(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    cfg: DictConfig | None = None,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    trust_config: bool = False,
) -> LoadedRun:
    """The one loader of trained runs (evaluation, re-evaluated table rows, embedding figures).

    Reads ``checkpoint`` (default ``run_dir/checkpoint.pt``) with :func:`npair.checkpoint.load` (weights
    only, format and version checked, errors naming the file) and rebuilds data, model and loss from
    ``cfg``, by default the resolved config the checkpoint holds. That stored config instantiates only
    :data:`TRUSTED_TARGETS` unless ``trust_config`` (:func:`check_targets`). With the checkpoint's config,
    the data are looked for in ``data_dir`` when given, else where the run's outputs tree says when the
    recorded relative path does not exist from here (:func:`npair.runio.locate_data_dir`); a given ``cfg``
    (the caller's own, e.g. composed from the configs) is used as it is.
    """
    run_dir = Path(run_dir)
    path = Path(checkpoint) if checkpoint is not None else run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no checkpoint (trainer.save_checkpoint=false, or the run stopped "
            "before its first checkpoint); re-run the experiment, or name a checkpoint file"
        )
    state = ckpt.load(path, advice="pass the checkpoint.pt of an npair training run")
    if cfg is None:
        if not trust_config:
            check_targets(state["config"], path)
        cfg = OmegaConf.create(state["config"])
        cfg = rebase_data_dir(cfg, data_dir if data_dir is not None else locate_data_dir(cfg, run_dir))
    splits = build_splits(cfg)
    model = build_model(cfg.backbone, int(cfg.dataset.embedding_dim))
    loss_fn = build_loss(cfg, splits)
    for module, key in ((model, "model"), (loss_fn, "loss")):
        ckpt.load_module(module, state[key], path, key)
        module.to(device).eval()
    return LoadedRun(cfg, splits, model, loss_fn, int(state["step"]), path)
