"""Guards: impossible configurations fail before training with a message naming the values;
a non-finite loss or gradient stops the run naming the step.

The pre-flight checks run after the dataset is built and before the sampler, the logger or any
file of the run exists (the samplers check again, in their own terms).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from npair.collectives import any_rank
from npair.data.base import DatasetSplits

if TYPE_CHECKING:
    from npair.run_context import Context

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
                    f"sampler.{key}={value} does not divide across {world_size} ranks: the global batch is split "
                    f"evenly between ranks; use a multiple of {world_size} (e.g. sampler.{key}="
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
        dropped = f" ({len(classes) - usable} dropped by small_class_policy=drop)" if usable < len(classes) else ""
        raise ValueError(
            f"sampler.n_classes={int(s.n_classes)} (N classes per batch) is larger than the {usable} classes of "
            f"{where}{dropped}; lower sampler.n_classes to at most {usable}"
        )
    if policy == "error" and m > counts.min():
        smallest, have = int(classes[np.argmin(counts)]), int(counts.min())
        what = (f"sampler.n_per_class={m} (M images per class) is larger than the smallest class of {where}"
                if "n_per_class" in s else f"sampler={s.name} needs {m} images of every class, more than the "
                f"smallest class of {where}")
        raise ValueError(
            f"{what}: class {smallest} has {have} image(s); lower sampler.n_per_class or set "
            "sampler.small_class_policy=drop (leave such classes out) or =replace (sample with replacement)"
        )


def check_eval_fits_data(cfg: DictConfig, evaluator: Any, splits: DatasetSplits) -> None:
    """Recall@K needs K other test items for each query (the query itself is excluded)."""
    ks = tuple(getattr(evaluator, "ks", ()) or ())
    if "recall" in getattr(evaluator, "metrics", ()) and ks and max(ks) > len(splits.test) - 1:
        raise ValueError(
            f"eval.ks={list(ks)}: Recall@{max(ks)} needs more than {max(ks)} test images, but the test split of "
            f"dataset={cfg.dataset.name} has {len(splits.test)}; lower eval.ks (at most {len(splits.test) - 1})"
        )


# ------------------------------------------------------------------------------ during training
class NonFiniteError(FloatingPointError):
    """The loss or the gradient became inf/NaN; the run stops and keeps its last good checkpoint."""


def require_finite_loss(loss: Tensor, step: int, kept: Callable[[], str], ctx: Context, device: torch.device) -> None:
    """Stop every rank when the loss is inf/NaN on any (``kept()`` says which checkpoint stays)."""
    if any_rank(not torch.isfinite(loss), ctx, device):
        raise NonFiniteError(f"non-finite loss ({loss.item()}) at step {step}; the run stopped and {kept()}. "
                             "Lower optimizer.lr, set trainer.grad_clip, or use trainer.precision=32")


def gradient_norm(modules: list[nn.Module]) -> Tensor:
    """The global L2 norm of all gradients (inf/NaN when any gradient is)."""
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def require_finite_grad(norm: Tensor | float, step: int, kept: str) -> None:
    value = float(norm)
    if not math.isfinite(value):
        raise NonFiniteError(f"non-finite gradient (norm {value}) at step {step}; the run stopped and {kept}. "
                             "Lower optimizer.lr or set trainer.grad_clip")
