"""Evaluation of embeddings: retrieval (Recall@K, MAP@R), clustering (NMI, F1),
recognition (kNN, softmax †), verification (VRF neg=k) and face protocols (LFW).

Public interface (docs/design.md §1):

* :class:`EmbeddingSet` (:mod:`.embedding_set`) — embeddings ``(n, D)`` float32, labels ``(n,)`` int64,
  optional logits;
* :class:`Evaluator` — ``Evaluator(metrics=[...], ks=[...], similarity=..., backend=...)``,
  called as ``evaluator(test, reference=None, extras=None) -> dict[str, float]``;
* :func:`npair.evaluation.embed.embed_dataset` — embed a dataset split.

Metric functions live in :mod:`.metrics` (pure), :mod:`.clustering`, :mod:`.verification`
and :mod:`.faces`; neighbour search backends in :mod:`.knn`.
"""

from __future__ import annotations

from .embedding_set import EmbeddingSet
from .evaluator import EvalResult, Evaluator

__all__ = ["EmbeddingSet", "EvalResult", "Evaluator"]
