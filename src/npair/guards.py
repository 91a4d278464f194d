"""Guards: settings out of range and impossible configurations fail before training with a message naming
the values; a non-finite loss or gradient stops the run naming the step.

:data:`SETTINGS` is the one table of the loop's settings and their allowed ranges, checked by
:func:`validate_settings` before anything of the run is built or written. The other pre-flight checks
need the data: they run after the dataset is built and before the sampler, the logger or any file of the
run exists (the samplers check again, in their own terms).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from npair.collectives import any_rank
from npair.data.base import DatasetSplits

if TYPE_CHECKING:
    from npair.run_context import Context


# ------------------------------------------------------------------------------ settings and their ranges
@dataclass(frozen=True)
class Allowed:
    """The values a setting may take: ``kind`` int (not bool), number (int or float) or bool, at least
    ``low`` (above it when ``strict``), or one of ``choices``; ``null`` also allows null."""

    kind: str = "int"
    low: float | None = None
    strict: bool = False
    null: bool = False
    choices: tuple[str, ...] = ()

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.null
        if self.choices:
            return str(value).lower() in self.choices
        if self.kind == "bool":
            return isinstance(value, bool)
        numeric = (int,) if self.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or not math.isfinite(value):
            return False
        return self.low is None or (value > self.low if self.strict else value >= self.low)

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "bool":
            text = "true or false"
        else:
            text = "an integer" if self.kind == "int" else "a number"
            if self.low is not None:
                text += f" {'>' if self.strict else '>='} {self.low:g}"
        return text + (", or null" if self.null else "")


def _at_least(low: float, kind: str = "int", null: bool = False) -> Allowed:
    return Allowed(kind, low, null=null)


def _above(low: float, null: bool = False) -> Allowed:
    return Allowed("number", low, strict=True, null=null)


_BOOL, _AUTO_BOOL = Allowed("bool"), Allowed(choices=("auto", "true", "false"))
# Every setting of the loop that a config or the command line can set to a value it cannot run with, and
# what it allows (a key a config does not have, e.g. optimizer.momentum for Adam, is not checked).
SETTINGS: dict[str, tuple[Allowed, str]] = {
    "seed": (_at_least(0), "seeds python, numpy, torch, the sampler and k-means"),
    "trainer.max_steps": (_at_least(1), "optimiser steps"),
    "trainer.eval_every": (_at_least(0), "steps between evaluations; 0 = only at the end"),
    "trainer.log_every": (_at_least(1), "steps between train_log.csv rows"),
    "trainer.checkpoint_every": (_at_least(0, null=True), "steps between checkpoints (0: at evaluations)"),
    "trainer.eval_batch_size": (_at_least(1), "images per batch when embedding for evaluation"),
    "trainer.num_workers": (_at_least(0), "DataLoader worker processes"),
    "trainer.threads": (_at_least(1, null=True), "torch CPU threads; null = torch's default"),
    "trainer.probe_classes": (_at_least(0), "classes of the training-curve probe; 0 = off"),
    "trainer.grad_clip": (_above(0, null=True), "max gradient norm; null = no clipping"),
    "trainer.precision": (Allowed(choices=("auto", "32", "fp32", "bf16", "fp16", "16")), "autocast dtype"),
    "trainer.channels_last": (_AUTO_BOOL, "channels_last memory format"),
    "trainer.pin_memory": (_AUTO_BOOL, "page-locked host batches"),
    "trainer.deterministic": (_BOOL, "deterministic torch algorithms"),
    "trainer.eval_at_start": (_BOOL, "evaluate the untrained model"),
    "trainer.progress_bar": (_BOOL, "the tqdm bar"),
    "trainer.save_checkpoint": (_BOOL, "write checkpoint.pt"),
    "trainer.compile": (_BOOL, "torch.compile the forward"),
    "trainer.distributed": (_BOOL, "DistributedDataParallel (trainer=ddp)"),
    "trainer.ddp.timeout_min": (_above(0), "collective timeout in minutes"),
    "optimizer.lr": (_above(0), "learning rate"),
    "optimizer.weight_decay": (_at_least(0, "number"), "weight decay"),
    "optimizer.momentum": (_at_least(0, "number"), "SGD momentum"),
    "scheduler.gamma": (_above(0), "learning-rate decay factor"),
    "sampler.n_classes": (_at_least(2), "N classes per batch (the global batch)"),
    "sampler.n_per_class": (_at_least(2), "M images per class"),
    "sampler.n_triplets": (_at_least(1), "triplets per batch"),
    "sampler.n_pairs": (_at_least(1), "pairs per batch"),
    "dataset.embedding_dim": (_at_least(1), "embedding dimension"),
    "eval.kmeans_seeds": (_at_least(1), "k-means runs averaged for NMI and F1"),
    "logger.init_timeout_s": (_above(0), "seconds W&B may take to start"),
}


class SettingsError(ValueError):
    """Settings out of their allowed range (:data:`SETTINGS`), each named with its value and the range."""


def validate_settings(cfg: DictConfig) -> None:
    """Check every setting of :data:`SETTINGS` that ``cfg`` has; one error listing all that are out of range.

    Call before anything of the run is built or written (npair.train calls it first)."""
    problems = []
    for key, (allowed, meaning) in SETTINGS.items():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, (DictConfig, dict)) else _ABSENT
        if node is _ABSENT or allowed.admits(node):
            continue
        problems.append(f"{key}={node!r}: must be {allowed.describe()} ({meaning})")
    for k in (cfg.get("eval") or {}).get("ks") or []:
        if not _at_least(1).admits(k):
            problems.append(f"eval.ks contains {k!r}: each K must be an integer >= 1 (Recall@K)")
    if problems:
        raise SettingsError(
            "settings out of range; nothing of the run was written:\n  " + "\n  ".join(problems)
        )


_ABSENT = object()

# The sampler keys that size a batch. They count the GLOBAL batch; under W ranks each rank draws 1/W.
BATCH_KEYS = ("n_classes", "n_triplets", "n_pairs")


def per_rank_batch(sampler_cfg: DictConfig, world_size: int) -> dict[str, int]:
    """The sampler kwargs for one rank: each batch key divided by ``world_size`` (which must divide it)."""
    out = {}
    for key in BATCH_KEYS:
        if key in sampler_cfg:
            value = int(sampler_cfg[key])
            if value % world_size:
                raise ValueError(
                    f"sampler.{key}={value} does not divide across {world_size} ranks: "
                    "the global batch is split evenly between ranks; "
                    f"use a multiple of {world_size} (e.g. sampler.{key}="
                    f"{max(world_size, value - value % world_size)})"
                )
            out[key] = value // world_size
    return out


def check_sampler_fits_data(cfg: DictConfig, splits: DatasetSplits) -> None:
    """N (classes per batch) must not exceed the training classes, M (images per class) the smallest class."""
    labels = np.asarray(splits.train.labels)
    classes, counts = np.unique(labels, return_counts=True)
    s, where = cfg.sampler, f"the training split of dataset={cfg.dataset.name}"
    policy = str(s.get("small_class_policy", "error"))
    m = int(s.get("n_per_class", 2))
    usable = int((counts >= m).sum()) if policy == "drop" else len(classes)
    if "n_classes" in s and int(s.n_classes) > usable:
        dropped = (
            f" ({len(classes) - usable} dropped by small_class_policy=drop)" if usable < len(classes) else ""
        )
        raise ValueError(
            f"sampler.n_classes={int(s.n_classes)} (N classes per batch) is larger than "
            f"the {usable} classes of {where}{dropped}; lower sampler.n_classes to at most {usable}"
        )
    if policy == "error" and m > counts.min():
        smallest, have = int(classes[np.argmin(counts)]), int(counts.min())
        what = (
            f"sampler.n_per_class={m} (M images per class) is larger than the smallest class of {where}"
            if "n_per_class" in s
            else f"sampler={s.name} needs {m} images of every class, more than the smallest class of {where}"
        )
        raise ValueError(
            f"{what}: class {smallest} has {have} image(s); lower sampler.n_per_class or set "
            "sampler.small_class_policy=drop (leave such classes out) or =replace (sample with replacement)"
        )


def check_eval_fits_data(cfg: DictConfig, evaluator: Any, splits: DatasetSplits) -> None:
    """Recall@K needs K other test items for each query (the query itself is excluded)."""
    ks = tuple(getattr(evaluator, "ks", ()) or ())
    if "recall" in getattr(evaluator, "metrics", ()) and ks and max(ks) > len(splits.test) - 1:
        raise ValueError(
            f"eval.ks={list(ks)}: Recall@{max(ks)} needs more than {max(ks)} test images, "
            f"but the test split of dataset={cfg.dataset.name} has {len(splits.test)}; "
            f"lower eval.ks (at most {len(splits.test) - 1})"
        )


# ------------------------------------------------------------------------------ during training
class NonFiniteError(FloatingPointError):
    """The loss or the gradient became inf/NaN; the run stops and keeps its last good checkpoint."""


def require_finite_loss(
    loss: Tensor, step: int, kept: Callable[[], str], ctx: Context, device: torch.device
) -> None:
    """Stop every rank when the loss is inf/NaN on any (``kept()`` says which checkpoint stays)."""
    if any_rank(not torch.isfinite(loss), ctx, device):
        raise NonFiniteError(
            f"non-finite loss ({loss.item()}) at step {step}; the run stopped and {kept()}. "
            "Lower optimizer.lr, set trainer.grad_clip, or use trainer.precision=32"
        )


def gradient_norm(modules: list[nn.Module]) -> Tensor:
    """The global L2 norm of all gradients (inf/NaN when any gradient is)."""
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def require_finite_grad(norm: Tensor | float, step: int, kept: str) -> None:
    value = float(norm)
    if not math.isfinite(value):
        raise NonFiniteError(
            f"non-finite gradient (norm {value}) at step {step}; the run stopped and {kept}. "
            "Lower optimizer.lr or set trainer.grad_clip"
        )
