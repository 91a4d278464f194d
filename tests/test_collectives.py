"""Negatives across ranks: 2 gloo CPU processes equal one process on the concatenated batch."""

from __future__ import annotations

import os
import socket
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from npair.collectives import gather_no_grad, gather_with_grad, is_distributed, rank, world_size
from npair.losses import NPairMCLoss, NPairOVOLoss
from npair.samplers import NPairSampler

WORLD = 2
N_PER_RANK, M, D = 4, 2, 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = (torch.randperm(40, generator=g)[: WORLD * N_PER_RANK] + 3).repeat_interleave(M)
    emb = 3.0 * torch.randn(len(labels), D, generator=g, dtype=torch.float64)
    return emb, labels


def _losses() -> dict[str, torch.nn.Module]:
    return {
        "mc": NPairMCLoss(reg_weight=0.01, gather_across_ranks=True),
        "mc_sym": NPairMCLoss(reg_weight=0.01, symmetric=True, gather_across_ranks=True),
        "ovo": NPairOVOLoss(reg_weight=0.01, reg_form="mean_norm", gather_across_ranks=True),
    }


def _worker(r: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=WORLD)
    try:
        emb, labels = _global_batch()
        rows = slice(r * N_PER_RANK * M, (r + 1) * N_PER_RANK * M)
        result: dict[str, object] = {"world": world_size(), "rank": rank()}
        for name, loss in _losses().items():
            local = emb[rows].clone().requires_grad_(True)
            out = loss(local, labels[rows])
            out.backward()
            result[name] = (out.detach(), local.grad)
        # the sampler shards itself from the process group: rank r gets its slice of a global batch
        sampler_labels = np.repeat(np.arange(30), 3)
        result["batches"] = list(NPairSampler(sampler_labels, seed=4, n_classes=3, epoch_length=3))
        torch.save(result, os.path.join(out_dir, f"rank{r}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(_free_port(), tmp), nprocs=WORLD, join=True)
        yield [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["mc", "mc_sym", "ovo"])
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch(two_rank_results, name):
    emb, labels = _global_batch()
    single = _losses()[name]
    single.gather_across_ranks = False
    e = emb.clone().requires_grad_(True)
    expected = single(e, labels)
    expected.backward()
    for r, res in enumerate(two_rank_results):
        assert (res["world"], res["rank"]) == (WORLD, r)
        loss_r, _ = res[name]
        torch.testing.assert_close(loss_r, expected.detach(), rtol=1e-12, atol=1e-12)
    grads = torch.cat([res[name][1] for res in two_rank_results])
    torch.testing.assert_close(grads, e.grad, rtol=1e-12, atol=1e-12)


def test_sampler_shards_follow_the_process_group(two_rank_results):
    labels = np.repeat(np.arange(30), 3)
    for r, res in enumerate(two_rank_results):
        expected = list(NPairSampler(labels, seed=4, n_classes=3, epoch_length=3, num_replicas=WORLD, rank=r))
        assert res["batches"] == expected
    for b0, b1 in zip(two_rank_results[0]["batches"], two_rank_results[1]["batches"]):
        classes = labels[b0 + b1][::2]
        assert len(set(classes.tolist())) == 6, "global batch: distinct classes across ranks"


def test_helpers_are_identities_outside_torch_distributed():
    x = torch.randn(3, 2, requires_grad=True)
    assert not is_distributed() and world_size() == 1 and rank() == 0
    assert gather_with_grad(x) is x and gather_no_grad(x) is x
