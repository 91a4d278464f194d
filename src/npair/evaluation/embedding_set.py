"""The evaluator's input: embeddings of one split with their labels (and optional logits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class EmbeddingSet:
    """Embeddings of one split: ``embeddings (n, D)`` float32, ``labels (n,)`` int64 and,
    for classifier models, ``logits (n, C)`` (or None).

    Accepts numpy arrays or torch tensors; converts and checks shapes on construction
    (raising ``ValueError`` naming the mismatch). NaN values are rejected at evaluation.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        emb = _to_numpy(self.embeddings)
        if emb.ndim != 2:
            raise ValueError(f"EmbeddingSet: embeddings must be 2-D (n, D), got shape {emb.shape}")
        self.embeddings = np.ascontiguousarray(emb, dtype=np.float32)
        labels = _to_numpy(self.labels)
        if labels.ndim != 1:
            raise ValueError(f"EmbeddingSet: labels must be 1-D (n,), got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
                raise ValueError(
                    f"EmbeddingSet: labels must be integers, got dtype {labels.dtype} "
                    "with non-integral values"
                )
        self.labels = labels.astype(np.int64)
        if len(self.labels) != len(self.embeddings):
            raise ValueError(
                f"EmbeddingSet: {len(self.embeddings)} embeddings but {len(self.labels)} labels; "
                "they must match one to one"
            )
        if self.logits is not None:
            logits = _to_numpy(self.logits)
            if logits.ndim != 2 or len(logits) != len(self.labels):
                raise ValueError(
                    f"EmbeddingSet: logits shape {logits.shape} does not match {len(self.labels)} items"
                )
            self.logits = np.ascontiguousarray(logits, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(np.unique(self.labels).size)
