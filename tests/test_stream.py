"""The batch stream: it resumes at its position with DataLoader workers too (trainer=gpu uses 8), and with a
mining sampler its candidates are embedded with the model of the step using them.

torch's multi-process DataLoader iterator calls ``iter()`` on the batch sampler twice when it starts
(once in its base class, once in its first reset); the skip of the consumed batches must survive that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from npair.data.embedded import InMemoryImages
from npair.evaluation.embed import embed_dataset
from npair.samplers import HardNegativeClassSampler, NPairSampler, current_model_embedder
from npair.stream import BatchStream, SkippingBatchSampler
from npair.train import run
from tests.helpers import TINY, compose_config


def _stream(labels: np.ndarray, workers: int) -> BatchStream:
    sampler = SkippingBatchSampler(NPairSampler(labels, seed=3, n_classes=2, epoch_length=3))
    data = torch.utils.data.TensorDataset(torch.arange(len(labels)), torch.from_numpy(labels))
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(5),
    )
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
    sampler = SkippingBatchSampler(
        NPairSampler(np.repeat(np.arange(6), 4), seed=3, n_classes=2, epoch_length=3)
    )
    sampler.skip_next(2)
    assert len(list(iter(sampler))) == len(list(iter(sampler))) == 1
    sampler.skip_next(0)
    assert len(list(iter(sampler))) == 3


def _images(n_classes: int = 12, per_class: int = 4, seed: int = 0) -> InMemoryImages:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_classes * per_class, 1, 6, 6), generator=g, dtype=torch.uint8)
    return InMemoryImages(images, np.repeat(np.arange(n_classes), per_class))


def _mining_stream(dataset: InMemoryImages, sampler, num_workers: int) -> BatchStream:
    batch_sampler = SkippingBatchSampler(sampler)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    return BatchStream(loader, batch_sampler)


@pytest.mark.parametrize("num_workers", [0, 2, 4])
def test_mining_lag_is_zero_steps_with_any_number_of_workers(num_workers: int) -> None:
    """Lag = (optimiser steps done when a batch is consumed) − (steps done when its candidates were embedded).

    A DataLoader with workers would prefetch 2 × num_workers batches, so the embedder would have run that
    many steps ahead of the model; the stream must draw each mined batch only when it is consumed.
    """
    dataset = _images()
    steps_done = [0]
    embedded_at: list[int] = []

    def embedder(indices: np.ndarray) -> torch.Tensor:
        embedded_at.append(steps_done[0])
        return torch.randn(len(indices), 3)

    sampler = HardNegativeClassSampler(
        dataset.labels, n_classes=3, n_per_class=2, n_candidates=6, refresh_every=1, epoch_length=5
    )
    sampler.set_embedder(embedder)
    stream = _mining_stream(dataset, sampler, num_workers)
    lags = []
    for step in range(12):  # crosses two epoch boundaries
        _epoch, (images, labels) = next(stream)
        assert images.shape == (6, 1, 6, 6) and len(labels) == 6
        lags.append(step - embedded_at[-1])
        assert len(embedded_at) == step + 1  # nothing embedded ahead of the consumed batch
        steps_done[0] += 1  # the optimiser step after this batch
    assert lags == [0] * 12


def test_a_sampler_that_needs_no_model_still_goes_through_the_dataloader() -> None:
    dataset = _images()
    stream = _mining_stream(
        dataset, NPairSampler(dataset.labels, n_classes=3, n_per_class=2, epoch_length=3), 2
    )
    assert not stream.in_step
    assert [len(next(stream)[1][1]) for _ in range(4)] == [6, 6, 6, 6]


def test_the_embedder_matches_embed_dataset_and_builds_no_dataloader(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _images()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 5), torch.nn.BatchNorm1d(5))
    model.train()
    indices = np.array([7, 3, 44, 12, 0, 9, 31])
    expected = embed_dataset(
        model, torch.utils.data.Subset(dataset, indices.tolist()), batch_size=4
    ).embeddings

    def no_loader(*args, **kwargs):
        raise AssertionError("the candidate embedder built a DataLoader")

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", no_loader)
    got = current_model_embedder(model, dataset, "cpu", batch_size=4)(indices)
    assert torch.equal(got, torch.from_numpy(expected))  # same chunks, same eval mode: bit for bit
    assert model.training  # the training mode is restored


def test_a_mining_run_gives_the_same_metrics_with_and_without_workers(tmp_path: Path) -> None:
    overrides = [
        *TINY,
        "sampler=npair_hard_class",
        "sampler.n_candidates=8",
        "trainer.max_steps=5",
        "trainer.eval_every=0",
    ]
    without = run(compose_config(overrides, tmp_path), tmp_path / "w0")
    with_workers = run(compose_config([*overrides, "trainer.num_workers=2"], tmp_path), tmp_path / "w2")
    assert without == with_workers
