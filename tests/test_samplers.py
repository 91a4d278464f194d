"""Batch samplers: layouts, epochs, determinism, small-class policies, sharding, class mining."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from npair.losses import split_class_blocks, split_triplets, split_tuplets
from npair.samplers import (
    HardNegativeClassSampler,
    NPairSampler,
    PairSampler,
    TripletSampler,
    TupletSampler,
)


def make_labels(n_classes: int = 20, per_class: int | list[int] = 6, seed: int = 0) -> np.ndarray:
    """Shuffled labels (so the samplers cannot rely on sorted input), class ids not 0..C-1."""
    sizes = [per_class] * n_classes if isinstance(per_class, int) else per_class
    labels = np.concatenate([np.full(k, 100 + 3 * c) for c, k in enumerate(sizes)])
    return np.random.default_rng(seed).permutation(labels)


def blocks_of(batch: list[int], m: int) -> list[list[int]]:
    return [batch[i : i + m] for i in range(0, len(batch), m)]


# ------------------------------------------------------------------------------------------
# NPairSampler
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [2, 3])
def test_npair_batches_are_class_blocks_of_distinct_classes_and_images(m):
    labels = make_labels(20, 7)
    s = NPairSampler(labels, seed=1, n_classes=5, n_per_class=m)
    batches = list(s)
    assert len(batches) == len(s) == math.ceil(len(labels) / (5 * m))
    for batch in batches:
        assert len(batch) == 5 * m
        blocks = blocks_of(batch, m)
        block_classes = [labels[b[0]] for b in blocks]
        assert len(set(block_classes)) == 5, "classes in a batch must be distinct"
        for b in blocks:
            assert len(set(labels[b])) == 1 and len(set(b)) == m, "M distinct images of one class per slot"
        split_class_blocks(torch.zeros(len(batch), 2), torch.as_tensor(labels[batch]))  # the loss accepts it


def test_npair_epoch_of_classes_visits_every_class_once():
    labels = make_labels(20, 4)
    s = NPairSampler(labels, seed=3, n_classes=5, epoch_length="classes")
    assert len(s) == 4
    seen = Counter(int(labels[b[0]]) for batch in s for b in blocks_of(batch, 2))
    assert set(seen) == set(np.unique(labels).tolist()) and set(seen.values()) == {1}


def test_npair_epoch_with_remainder_visits_every_class_at_most_twice():
    labels = make_labels(23, 4)
    s = NPairSampler(labels, seed=3, n_classes=5, epoch_length="classes")
    assert len(s) == 5
    seen = Counter(int(labels[b[0]]) for batch in s for b in blocks_of(batch, 2))
    assert set(seen) == set(np.unique(labels).tolist())
    assert sum(seen.values()) == 25 and max(seen.values()) <= 2


def test_npair_epoch_of_images_uses_every_image_once_when_sizes_allow():
    labels = make_labels(20, 6)  # 120 images, batch 10 -> 12 batches = 3 class passes × 2 images
    s = NPairSampler(labels, seed=5, n_classes=5, n_per_class=2, epoch_length="images")
    used = [i for batch in s for i in batch]
    assert len(s) == 12 and sorted(used) == list(range(len(labels)))


def test_npair_integer_epoch_length():
    s = NPairSampler(make_labels(), seed=0, n_classes=4, epoch_length=7)
    assert len(s) == len(list(s)) == 7
    with pytest.raises(ValueError, match="epoch_length"):
        NPairSampler(make_labels(), seed=0, n_classes=4, epoch_length="forever")


def test_npair_determinism_seed_and_epoch():
    labels = make_labels()
    a = NPairSampler(labels, seed=7, n_classes=5)
    b = NPairSampler(labels, seed=7, n_classes=5)
    assert list(a) == list(b) == list(a), "same seed and epoch -> same batches (and iterating twice repeats)"
    a.set_epoch(1)
    assert list(a) != list(b), "different epoch -> different batches"
    b.set_epoch(1)
    assert list(a) == list(b)
    c = NPairSampler(labels, seed=8, n_classes=5)
    c.set_epoch(1)
    assert list(c) != list(a), "different seed -> different batches"


def test_state_dict_round_trip():
    labels = make_labels()
    a = NPairSampler(labels, seed=7, n_classes=5)
    a.set_epoch(4)
    b = NPairSampler(labels, seed=0, n_classes=5)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == {"seed": 7, "epoch": 4} and list(a) == list(b)


def test_impossible_requests_fail_at_construction_with_names_and_counts():
    labels = make_labels(10, [5] * 8 + [1, 2])  # classes 124 (1 image) and 127 (2 images)
    with pytest.raises(ValueError, match=r"class 124: 1 images, class 127: 2 images.*small_class_policy"):
        NPairSampler(labels, seed=0, n_classes=4, n_per_class=3)
    with pytest.raises(ValueError, match=r"needs 11 distinct classes .* only 10 classes"):
        NPairSampler(labels, seed=0, n_classes=11, n_per_class=2, small_class_policy="replace")
    with pytest.raises(
        ValueError, match=r"needs 9 distinct classes .* only 8 classes are available after dropping"
    ):
        NPairSampler(labels, seed=0, n_classes=9, n_per_class=3, small_class_policy="drop")
    with pytest.raises(ValueError, match="small_class_policy"):
        NPairSampler(labels, seed=0, n_classes=4, small_class_policy="ignore")


def test_small_class_policies_drop_and_replace():
    labels = make_labels(10, [5] * 8 + [1, 2])
    dropped = NPairSampler(
        labels, seed=0, n_classes=4, n_per_class=3, small_class_policy="drop", epoch_length="classes"
    )
    seen = {int(labels[i]) for batch in dropped for i in batch}
    assert seen == set(np.unique(labels).tolist()) - {124, 127}
    replaced = NPairSampler(labels, seed=0, n_classes=10, n_per_class=3, small_class_policy="replace")
    for batch in replaced:
        blocks = blocks_of(batch, 3)
        assert {int(labels[b[0]]) for b in blocks} == set(np.unique(labels).tolist())
        for b in blocks:
            assert len(set(labels[b])) == 1
            if labels[b[0]] not in (124, 127):
                assert len(set(b)) == 3


def test_sharding_gives_disjoint_classes_and_concatenates_to_a_valid_batch():
    labels = make_labels(30, 4)
    shards = [NPairSampler(labels, seed=2, n_classes=5, num_replicas=2, rank=r) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    for b0, b1 in zip(*shards):
        glob = b0 + b1
        classes = [labels[b[0]] for b in blocks_of(glob, 2)]
        assert len(glob) == 20 and len(set(classes)) == 10
        split_class_blocks(torch.zeros(20, 2), torch.as_tensor(labels[glob]))
    with pytest.raises(ValueError, match="rank=2"):
        NPairSampler(labels, seed=2, n_classes=5, num_replicas=2, rank=2)


# ------------------------------------------------------------------------------------------
# Triplet, pair, tuplet samplers
# ------------------------------------------------------------------------------------------


def test_triplet_sampler_layout_and_determinism():
    labels = make_labels(15, 5)
    s = TripletSampler(labels, seed=0, n_triplets=6)
    batches = list(s)
    assert len(batches) == len(s) == math.ceil(len(labels) / 18)
    neg_classes = Counter()
    for batch in batches:
        assert len(batch) == 18
        split_triplets(torch.zeros(18, 2), torch.as_tensor(labels[batch]))
        trip = blocks_of(batch, 3)
        assert len({labels[t[0]] for t in trip}) == 6, "anchor classes distinct within a batch"
        assert all(t[0] != t[1] for t in trip), "anchor and positive are distinct images"
        neg_classes.update(int(labels[t[2]]) for t in trip)
    assert len(neg_classes) > 5, "negatives come from many classes"
    s2 = TripletSampler(labels, seed=0, n_triplets=6)
    assert list(s2) == batches
    s2.set_epoch(1)
    assert list(s2) != batches


def test_pair_sampler_half_positive_half_negative():
    labels = make_labels(15, 5)
    s = PairSampler(labels, seed=0, n_pairs=10)
    for batch in s:
        pairs = blocks_of(batch, 2)
        same = [labels[a] == labels[b] for a, b in pairs]
        assert len(batch) == 20 and sum(same) == 5
        assert all(a != b for a, b in pairs)
    assert list(PairSampler(labels, seed=0, n_pairs=10)) == list(s)


def test_tuplet_sampler_layout_own_negatives_and_size():
    labels = make_labels(12, 6)
    n = 4
    s = TupletSampler(labels, seed=0, n_classes=n)
    for batch in s:
        assert len(batch) == n * (n + 1)
        split_tuplets(torch.zeros(len(batch), 2), torch.as_tensor(labels[batch]))
        rows = blocks_of(batch, n + 1)
        anchor_classes = [labels[r[0]] for r in rows]
        assert len(set(anchor_classes)) == n
        for r in rows:
            assert r[0] != r[1]
            assert set(labels[r[2:]]) == set(anchor_classes) - {labels[r[0]]}, (
                "negatives: the other classes of the batch"
            )
        negatives = [i for r in rows for i in r[2:]]
        assert len(set(negatives)) == len(negatives), "each anchor has its own negative examples"


def test_sampler_configs_instantiate():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1] / "configs" / "sampler"
    labels = make_labels(80, 6)
    expected = {
        "npair": ("class_blocks", 120),
        "triplet": ("triplets", 120),
        "pair": ("pairs", 120),
        "tuplet": ("tuplets", 72),
        "npair_hard_class": ("class_blocks", 120),
    }
    assert {p.stem for p in root.glob("*.yaml")} >= set(expected)
    for name, (layout, size) in expected.items():
        cfg = OmegaConf.to_container(OmegaConf.load(root / f"{name}.yaml"))
        assert cfg.pop("name") == name
        if name == "npair_hard_class":
            cfg["n_candidates"] = 70
        s = instantiate(cfg, labels=labels, seed=0)
        assert s.layout == layout
        if name == "npair_hard_class":
            s.set_embedder(lambda idx: torch.randn(len(idx), 8))
        assert len(next(iter(s))) == size
    npair_cfg = OmegaConf.load(root / "npair.yaml")
    assert (npair_cfg.n_classes, npair_cfg.n_per_class) == (60, 2)
    assert OmegaConf.load(root / "triplet.yaml").n_triplets == 40


# ------------------------------------------------------------------------------------------
# Hard negative class mining
# ------------------------------------------------------------------------------------------


def mining_embedder(labels: np.ndarray, alpha: dict[int, float], d: int = 16, seed: int = 0):
    """Embedding of image i: α_{y_i}·g + small class-specific noise, g a fixed unit vector.

    Then e_sᵀe_c − e_sᵀe_s' ≈ α_s(α_c − α_s): for every selected s the candidates with the largest
    α violate most, so whatever the random start the miner must pick the largest-α classes.
    """
    gen = torch.Generator().manual_seed(seed)
    g = torch.zeros(d)
    g[0] = 1.0
    noise = 0.01 * torch.randn(len(labels), d, generator=gen)
    calls: list[tuple[int, bool]] = []

    def fn(idx: np.ndarray) -> torch.Tensor:
        calls.append((len(idx), torch.is_grad_enabled()))
        a = torch.tensor([alpha[int(labels[i])] for i in idx])
        return a[:, None] * g + noise[torch.as_tensor(idx)]

    return fn, calls


def test_mining_picks_the_most_violating_classes():
    labels = make_labels(30, 4)
    classes = np.unique(labels).tolist()
    rng = np.random.default_rng(0)
    alpha = {c: float(rng.uniform(0.1, 1.0)) for c in classes}
    hard = classes[3:8]
    for i, c in enumerate(hard):
        alpha[c] = 2.0 + 0.2 * i
    fn, calls = mining_embedder(labels, alpha)
    s = HardNegativeClassSampler(
        labels, seed=0, n_classes=6, n_candidates=30, embed_batch_size=16, epoch_length=10
    )
    s.set_embedder(fn)
    for epoch in range(3):
        s.set_epoch(epoch)
        for batch in s:
            chosen = [int(labels[b[0]]) for b in blocks_of(batch, 2)]
            assert set(hard) <= set(chosen), f"miner missed hard classes: chose {chosen}"
            split_class_blocks(torch.zeros(12, 2), torch.as_tensor(labels[batch]))
    assert calls and all(n <= 16 and not grad for n, grad in calls), "batched, no-grad embedding calls"
    assert sum(n for n, _ in calls) == 3 * 10 * 30 * 2, "refresh_every=1: C × 2 examples per batch"


def test_mining_greedy_steps_follow_the_documented_score():
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(12, 2, 5, generator=gen)
    s = HardNegativeClassSampler(make_labels(12, 4), seed=0, n_classes=5, n_candidates=12)
    picks = s.select_classes(emb, 5, np.random.default_rng(1))
    # independent loop reference of v(c) = max_s max_k (e_{s,1}·e_{c,k} − e_{s,1}·e_{s,2})
    for step in range(1, 5):
        chosen = picks[:step]
        best, best_c = -math.inf, None
        for c in range(12):
            if c in chosen:
                continue
            v = max(
                float(emb[sel, 0] @ emb[c, k] - emb[sel, 0] @ emb[sel, 1]) for sel in chosen for k in range(2)
            )
            if v > best:
                best, best_c = v, c
        assert picks[step] == best_c
    assert len(set(picks)) == 5


def test_mining_breaks_ties_at_random():
    emb = torch.ones(20, 2, 3)  # every candidate scores the same
    s = HardNegativeClassSampler(make_labels(20, 4), seed=0, n_classes=4, n_candidates=20)
    picks = {tuple(s.select_classes(emb, 4, np.random.default_rng(k))) for k in range(10)}
    assert len(picks) > 5


def test_mining_requires_an_embedder():
    s = HardNegativeClassSampler(make_labels(20, 4), seed=0, n_classes=4, n_candidates=10)
    with pytest.raises(RuntimeError, match="set_embedder"):
        next(iter(s))
    with pytest.raises(ValueError, match="n_candidates=3"):
        HardNegativeClassSampler(make_labels(20, 4), seed=0, n_classes=4, n_candidates=3)


def test_mining_refresh_period_reuses_candidates():
    labels = make_labels(20, 4)
    fn, calls = mining_embedder(labels, {c: 1.0 for c in np.unique(labels).tolist()})
    s = HardNegativeClassSampler(
        labels, seed=0, n_classes=4, n_candidates=10, n_candidate_examples=1, refresh_every=3, epoch_length=7
    )
    s.set_embedder(fn)
    assert len(list(s)) == 7
    assert sum(n for n, _ in calls) == math.ceil(7 / 3) * 10


def test_triplet_and_pair_samplers_work_with_fewer_classes_than_slots():
    labels = make_labels(10, 30)  # digits-like: 10 classes, 40 triplets per batch
    for batch in TripletSampler(labels, seed=0, n_triplets=40):
        split_triplets(torch.zeros(120, 2), torch.as_tensor(labels[batch]))
        anchors = Counter(int(labels[t[0]]) for t in blocks_of(batch, 3))
        assert len(anchors) == 10 and max(anchors.values()) == 4, (
            "anchor classes spread evenly over the classes"
        )
    for batch in PairSampler(labels, seed=0, n_pairs=60):
        assert sum(labels[a] == labels[b] for a, b in blocks_of(batch, 2)) == 30


def test_tuplet_sampler_with_a_class_smaller_than_n_plus_one():
    labels = make_labels(5, [2, 6, 6, 6, 6])  # N = 5 needs 6 images per class for distinct negatives
    for batch in TupletSampler(labels, seed=0, n_classes=5):
        split_tuplets(torch.zeros(30, 2), torch.as_tensor(labels[batch]))
        assert all(r[0] != r[1] for r in blocks_of(batch, 6)), "anchor and positive stay distinct"
