"""Embed a dataset split with a model: eval mode, no gradient, original item order."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .embedding_set import EmbeddingSet


def embed_dataset(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EmbeddingSet:
    """Embed every item of ``dataset`` (in index order) and return an :class:`EmbeddingSet`.

    The model runs in ``eval()`` mode under ``torch.no_grad()``; its previous training
    mode is restored afterwards. ``logits_fn`` (optional, e.g. the softmax loss'
    classifier) maps a batch of embeddings to class logits, stored as ``logits``.
    Labels come from the batches and, when the dataset exposes ``labels``, are checked
    against it (a mismatch means a broken dataset and raises ``ValueError``).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    embeddings: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for images, batch_labels in loader:
                out = model(images.to(device))
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"model returned {type(out).__name__}; embed_dataset expects a (B, D) tensor"
                    )
                embeddings.append(out.float().cpu().numpy())
                labels.append(torch.as_tensor(batch_labels).cpu().numpy())
                if logits_fn is not None:
                    logits.append(logits_fn(out).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not embeddings:
        raise ValueError("embed_dataset: the dataset is empty")
    result = EmbeddingSet(
        embeddings=np.concatenate(embeddings),
        labels=np.concatenate(labels).astype(np.int64),
        logits=np.concatenate(logits) if logits else None,
    )
    expected = getattr(dataset, "labels", None)
    if expected is not None and not np.array_equal(np.asarray(expected, dtype=np.int64), result.labels):
        raise ValueError(
            f"embed_dataset: labels yielded by {type(dataset).__name__}.__getitem__ "
            "differ from its .labels array"
        )
    return result
