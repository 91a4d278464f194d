"""The batch stream resumes at its position with DataLoader workers too (trainer=gpu uses 8).

torch's multi-process DataLoader iterator calls ``iter()`` on the batch sampler twice when it starts
(once in its base class, once in its first reset); the skip of the consumed batches must survive that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npair.samplers import NPairSampler
from npair.stream import BatchStream, SkippingBatchSampler


def _stream(labels: np.ndarray, workers: int) -> BatchStream:
    sampler = SkippingBatchSampler(NPairSampler(labels, seed=3, n_classes=2, epoch_length=3))
    data = torch.utils.data.TensorDataset(torch.arange(len(labels)), torch.from_numpy(labels))
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0, generator=torch.Generator().manual_seed(5))
    return BatchStream(loader, sampler)


@pytest.mark.parametrize("consumed", [2, 7])
def test_a_resumed_stream_with_worker_processes_continues_with_the_same_batches(consumed: int) -> None:
    labels = np.repeat(np.arange(6), 4)  # 3 batches per epoch
    straight = _stream(labels, workers=2)
    expected = [(e, b[0].tolist()) for e, b in (next(straight) for _ in range(consumed + 4))]
    first = _stream(labels, workers=0)
    for _ in range(consumed):
        next(first)
    resumed = _stream(labels, workers=2)
    resumed.load_state_dict(first.state_dict())
    assert [(e, b[0].tolist()) for e, b in (next(resumed) for _ in range(4))] == expected[consumed:]


def test_the_skip_holds_for_every_iteration_of_the_same_pass() -> None:
    sampler = SkippingBatchSampler(NPairSampler(np.repeat(np.arange(6), 4), seed=3, n_classes=2, epoch_length=3))
    sampler.skip_next(2)
    assert len(list(iter(sampler))) == len(list(iter(sampler))) == 1
    sampler.skip_next(0)
    assert len(list(iter(sampler))) == 3
