"""The paper's training-curve measures: the accuracy of the current batch and the fixed probe batch
(docs/paper.md §5.5)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


@torch.no_grad()
def batch_accuracy(embeddings: Tensor, layout: str, n_per_class: int) -> float | None:
    """The paper's training-curve accuracy on the current batch (inner product, docs/paper.md §5.5).

    class_blocks: the N-way accuracy — an anchor (image 1 of its class block) is right when its own
    positive (image 2) is the most similar of the N positives. triplets: the 2-way accuracy f·f⁺ > f·f⁻.
    """
    emb = embeddings.detach().float()
    if layout == "class_blocks" and n_per_class >= 2:
        blocks = emb.view(-1, n_per_class, emb.shape[1])
        scores = blocks[:, 0] @ blocks[:, 1].T
        return (scores.argmax(1) == torch.arange(len(scores), device=emb.device)).float().mean().item()
    if layout == "triplets":
        a, p, n = emb.view(-1, 3, emb.shape[1]).unbind(1)
        return ((a * p).sum(1) > (a * n).sum(1)).float().mean().item()
    return None


class Probe:
    """A fixed batch of N training classes × 2 images, scored the way the paper's training-curve figure
    measures every model (docs/paper.md §5.5): N-way and 2-way ("triplet") accuracy and loss on inner products
    (``trainer.probe_similarity=cosine``: on cosines, for models trained on normalised embeddings).

    N-way: anchor i is right when its own positive is the most similar of the N positives; the N-way loss
    is the N-pair-mc loss without regulariser. 2-way: anchor i against its positive and the positive of
    class i+1 (mod N); the 2-way loss is log(1 + exp(f·f⁻ − f·f⁺)).
    """

    def __init__(self, dataset: Any, n_classes: int, seed: int, similarity: str = "inner_product") -> None:
        if similarity not in ("inner_product", "cosine"):
            raise ValueError(f"trainer.probe_similarity={similarity!r}: use inner_product or cosine")
        self.cosine = similarity == "cosine"
        labels = np.asarray(dataset.labels)
        rng = np.random.default_rng(seed + 7919)
        eligible = [c for c in np.unique(labels) if np.sum(labels == c) >= 2]
        chosen = rng.choice(eligible, size=min(n_classes, len(eligible)), replace=False)
        self.indices = [
            int(i) for c in chosen for i in rng.choice(np.flatnonzero(labels == c), 2, replace=False)
        ]
        self.images = torch.stack([dataset[i][0] for i in self.indices])
        self.n = len(chosen)

    @torch.no_grad()
    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        was_training = model.training
        model.eval()
        emb = model(self.images.to(device)).float().view(self.n, 2, -1)
        model.train(was_training)
        if self.cosine:
            emb = nn.functional.normalize(emb, dim=-1)
        scores = emb[:, 0] @ emb[:, 1].T
        target = torch.arange(self.n, device=scores.device)
        pos, neg = scores.diagonal(), scores[target, (target + 1) % self.n]
        return {
            "probe_nway_acc": (scores.argmax(1) == target).float().mean().item(),
            "probe_2way_acc": (pos > neg).float().mean().item(),
            "probe_nway_loss": nn.functional.cross_entropy(scores, target).item(),
            "probe_2way_loss": nn.functional.softplus(neg - pos).mean().item(),
        }
