"""The training-curve measures: the batch accuracy on constructed batches; the probe scores models on inner
products or, for normalised-embedding models, cosines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npair.data.embedded import InMemoryImages
from npair.probe import Probe, batch_accuracy


def test_batch_accuracy_on_constructed_batches() -> None:
    # Two classes, anchors equal to their own positives: N-way accuracy 1; swapped positives: 0.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    right = torch.stack([a[0], a[0], a[1], a[1]])
    wrong = torch.stack([a[0], a[1], a[1], a[0]])
    assert batch_accuracy(right, "class_blocks", 2) == 1.0
    assert batch_accuracy(wrong, "class_blocks", 2) == 0.0
    triplets = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    assert batch_accuracy(triplets, "triplets", 2) == 0.5


def test_cosine_probe_scores_the_normalised_embeddings() -> None:
    images = torch.randint(
        0, 256, (12, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    dataset = InMemoryImages(images, np.repeat(np.arange(6), 2))
    # features scaled from 0.1 to 10: output norms differ, so inner products and cosines rank differently
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    model[0].register_forward_hook(lambda _m, _i, out: out * torch.linspace(0.1, 10, out.shape[1]))
    inner = Probe(dataset, n_classes=6, seed=0)(model, torch.device("cpu"))
    cosine = Probe(dataset, n_classes=6, seed=0, similarity="cosine")(model, torch.device("cpu"))
    probe = Probe(dataset, n_classes=6, seed=0)
    emb = torch.nn.functional.normalize(model(probe.images).view(6, 2, -1), dim=-1)
    scores = emb[:, 0] @ emb[:, 1].T
    assert cosine["probe_nway_acc"] == pytest.approx(
        (scores.argmax(1) == torch.arange(6)).float().mean().item()
    )
    assert cosine["probe_nway_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(scores, torch.arange(6)).item(), rel=1e-6
    )
    assert inner != cosine
    with pytest.raises(ValueError, match="probe_similarity='dot'"):
        Probe(dataset, n_classes=6, seed=0, similarity="dot")
