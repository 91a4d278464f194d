"""The training-curve measures: the batch accuracy on constructed batches."""

from __future__ import annotations

import torch

from npair.probe import batch_accuracy


def test_batch_accuracy_on_constructed_batches() -> None:
    # Two classes, anchors equal to their own positives: N-way accuracy 1; swapped positives: 0.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    right = torch.stack([a[0], a[0], a[1], a[1]])
    wrong = torch.stack([a[0], a[1], a[1], a[0]])
    assert batch_accuracy(right, "class_blocks", 2) == 1.0
    assert batch_accuracy(wrong, "class_blocks", 2) == 0.0
    triplets = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    assert batch_accuracy(triplets, "triplets", 2) == 0.5
