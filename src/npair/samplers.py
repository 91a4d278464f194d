"""Batch samplers producing the layouts the losses consume (paper §3).

Every sampler is a ``torch.utils.data.Sampler[list[int]]`` built as
``Sampler(labels=np.ndarray, seed=int, **cfg)``, with a class attribute ``layout``, ``__iter__``
yielding the batches of one epoch, ``__len__`` = batches per epoch, ``set_epoch(epoch)`` and
``state_dict()`` / ``load_state_dict()``. Batches depend only on (seed, epoch) — and, for the
mining sampler, on the embedder.

Shared machinery:

* **Class passes.** Classes are visited in successive random permutations ("passes"). A batch
  takes the next classes of the current pass; when fewer remain than a batch needs, it is topped
  up with classes of the next pass that are not already in the batch (those count as visited in
  that next pass). So with ``epoch_length: classes`` (ceil(C / N) batches) every class appears in
  an epoch, exactly once when N divides C and at most twice otherwise.
* **Image pools.** Each class hands out its images from a shuffled list, reshuffled when
  exhausted, so the M images of a class slot are distinct and, over an epoch, a class's images
  are used evenly.
* **Epoch length** (``epoch_length``): ``classes`` = one pass over the classes;
  ``images`` = ceil(#images / batch size) batches (at least one pass over the classes), i.e. about
  one look at every training image; an ``int`` = that many batches.
* **Small classes** (``small_class_policy``) for classes with fewer images than a slot needs:
  ``error`` (fail at construction naming the classes and counts), ``drop`` (leave them out of
  sampling), ``replace`` (draw that class's images with replacement; its slot may repeat images).
* **Distributed** (``num_replicas``, ``rank``; default: from ``torch.distributed`` if initialised,
  else 1 and 0): all ranks build the same global batches of ``num_replicas`` × the per-rank
  classes and each keeps its contiguous slice, so the gathered batch is again a valid layout
  with distinct classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler, default_collate

from npair import collectives as npd
from npair.stream import fetch_batch

SmallClassPolicy = Literal["error", "drop", "replace"]
EpochLength = Literal["classes", "images"] | int

__all__ = [
    "HardNegativeClassSampler",
    "NPairSampler",
    "PairSampler",
    "TripletSampler",
    "TupletSampler",
    "current_model_embedder",
]


class _ImagePools:
    """Per-class shuffled image lists, handed out without replacement and reshuffled when used up."""

    def __init__(self, by_class: dict[int, np.ndarray], rng: np.random.Generator) -> None:
        self.by_class = by_class
        self.rng = rng
        self._queue: dict[int, list[int]] = {}

    def draw(self, cls: int, k: int) -> list[int]:
        """k images of class ``cls``, distinct when the class has at least k images."""
        items = self.by_class[cls]
        if len(items) < k:  # only reachable with small_class_policy="replace"
            return self.rng.choice(items, size=k, replace=True).tolist()
        queue = self._queue.get(cls, [])
        if len(queue) < k:
            held = set(queue)
            fresh = [i for i in self.rng.permutation(items).tolist() if i not in held]
            queue = queue + fresh  # queue[:k] then holds k distinct images
        out, self._queue[cls] = queue[:k], queue[k:]
        return out


class _ClassPasses:
    """Hands out groups of distinct classes from successive random permutations of the classes."""

    def __init__(self, classes: np.ndarray, rng: np.random.Generator) -> None:
        self.classes = classes
        self.rng = rng
        self.pending: list[int] = []

    def take(self, n: int) -> list[int]:
        if n > len(self.classes):
            raise ValueError(f"cannot take {n} distinct classes out of {len(self.classes)}")
        if len(self.pending) >= n:
            out, self.pending = self.pending[:n], self.pending[n:]
            return out
        out = self.pending
        have = set(out)
        perm = self.rng.permutation(self.classes).tolist()
        fill = [c for c in perm if c not in have][: n - len(out)]
        used = set(fill)
        self.pending = [c for c in perm if c not in used]
        return out + fill

    def take_many(self, n: int) -> list[int]:
        """n classes, distinct within each run of len(classes) (so all distinct when n <= #classes)."""
        out: list[int] = []
        while len(out) < n:
            out += self.take(min(n - len(out), len(self.classes)))
        return out


class _BaseBatchSampler(Sampler[list[int]]):
    """Common state: labels by class, seed/epoch, small-class policy, epoch length, sharding."""

    layout: str = "any"

    def __init__(
        self,
        labels: np.ndarray | Sequence[int] | Tensor,
        seed: int = 0,
        *,
        images_per_class_needed: int,
        classes_per_rank_batch: int,
        rank_batch_size: int,
        small_class_policy: SmallClassPolicy = "error",
        epoch_length: EpochLength = "images",
        num_replicas: int | None = None,
        rank: int | None = None,
        class_visits_per_rank_batch: int | None = None,
    ) -> None:
        labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).astype(np.int64).ravel()
        if labels.size == 0:
            raise ValueError(f"{type(self).__name__}: labels is empty")
        self.labels = labels
        self.seed = int(seed)
        self.epoch = 0
        self.num_replicas = int(num_replicas) if num_replicas is not None else npd.world_size()
        self.rank = int(rank) if rank is not None else npd.rank()
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(
                f"{type(self).__name__}: rank={self.rank} not in [0, num_replicas={self.num_replicas})"
            )
        if small_class_policy not in ("error", "drop", "replace"):
            raise ValueError(f"small_class_policy={small_class_policy!r} must be one of error|drop|replace")
        self.small_class_policy = small_class_policy

        classes, counts = np.unique(labels, return_counts=True)
        small = counts < images_per_class_needed
        if small.any():
            listing = ", ".join(
                f"class {int(c)}: {int(k)} images" for c, k in zip(classes[small][:10], counts[small][:10])
            )
            more = f" (and {int(small.sum()) - 10} more)" if small.sum() > 10 else ""
            if small_class_policy == "error":
                raise ValueError(
                    f"{type(self).__name__}: {int(small.sum())} class(es) have fewer than the "
                    f"{images_per_class_needed} images a batch slot needs — {listing}{more}. "
                    "Set sampler.small_class_policy=drop (leave them out) "
                    "or =replace (sample with replacement)."
                )
            if small_class_policy == "drop":
                classes = classes[~small]
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], classes)
        ends = np.searchsorted(labels[order], classes, side="right")
        self.by_class: dict[int, np.ndarray] = {int(c): order[b:e] for c, b, e in zip(classes, bounds, ends)}
        self.classes = np.asarray(classes, dtype=np.int64)

        self.classes_per_rank_batch = int(classes_per_rank_batch)
        self.classes_per_batch = self.classes_per_rank_batch * self.num_replicas  # global
        if self.classes_per_batch > len(self.classes):
            raise ValueError(
                f"{type(self).__name__}: a batch needs {self.classes_per_batch} distinct classes "
                f"({self.classes_per_rank_batch} per rank × {self.num_replicas} rank(s)) but only "
                f"{len(self.classes)} classes are available"
                + (" after dropping small classes" if small_class_policy == "drop" and small.any() else "")
            )
        self.rank_batch_size = int(rank_batch_size)
        # classes a batch advances the class passes by (default: its distinct classes)
        visits = class_visits_per_rank_batch or self.classes_per_rank_batch
        self.class_visits_per_batch = int(visits) * self.num_replicas
        self.epoch_length = epoch_length
        self._len = self._compute_len()

    def _compute_len(self) -> int:
        n_classes = len(self.classes)
        one_pass = math.ceil(n_classes / self.class_visits_per_batch)
        if self.epoch_length == "classes":
            return one_pass
        if self.epoch_length == "images":
            n_images = sum(len(v) for v in self.by_class.values())
            return max(one_pass, math.ceil(n_images / (self.rank_batch_size * self.num_replicas)))
        is_int = isinstance(self.epoch_length, (int, np.integer)) and not isinstance(self.epoch_length, bool)
        if is_int and self.epoch_length > 0:
            return int(self.epoch_length)
        raise ValueError(f"epoch_length={self.epoch_length!r} must be 'classes', 'images' or a positive int")

    # --- epoch / state -------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])

    def __len__(self) -> int:
        return self._len

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _shard(self, global_slots: list[list[int]]) -> list[int]:
        """Keep this rank's contiguous share of the global batch's slots and flatten it."""
        per = len(global_slots) // self.num_replicas
        mine = global_slots[self.rank * per : (self.rank + 1) * per]
        return [i for slot in mine for i in slot]


class NPairSampler(_BaseBatchSampler):
    """N-pair batches (paper §3.1; N×M variant §3.2), layout "class_blocks".

    Each batch: N distinct classes × M distinct images of each, class-major
    ``[c1_1..c1_M, c2_1..c2_M, ...]``. M = 2 is the paper's N-pair batch (anchor, positive).
    """

    layout = "class_blocks"

    def __init__(
        self,
        labels: np.ndarray,
        seed: int = 0,
        n_classes: int = 60,
        n_per_class: int = 2,
        small_class_policy: SmallClassPolicy = "error",
        epoch_length: EpochLength = "images",
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if n_classes < 2 or n_per_class < 2:
            raise ValueError(
                f"NPairSampler: n_classes={n_classes} and n_per_class={n_per_class} must both be >= 2"
            )
        self.n_classes = int(n_classes)
        self.n_per_class = int(n_per_class)
        super().__init__(
            labels,
            seed,
            images_per_class_needed=self.n_per_class,
            classes_per_rank_batch=self.n_classes,
            rank_batch_size=self.n_classes * self.n_per_class,
            small_class_policy=small_class_policy,
            epoch_length=epoch_length,
            num_replicas=num_replicas,
            rank=rank,
        )

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        passes, pools = _ClassPasses(self.classes, rng), _ImagePools(self.by_class, rng)
        for _ in range(len(self)):
            classes = passes.take(self.classes_per_batch)
            yield self._shard([pools.draw(c, self.n_per_class) for c in classes])


class TripletSampler(_BaseBatchSampler):
    """Triplet batches, layout "triplets": ``[a1, p1, n1, a2, p2, n2, ...]``, ``n_triplets`` per batch.

    Anchor classes follow the class passes and are distinct within a batch (unless ``n_triplets``
    exceeds the number of classes); a and p are two distinct images of the anchor class; the
    negative is an image of a class drawn uniformly from the others.
    """

    layout = "triplets"

    def __init__(
        self,
        labels: np.ndarray,
        seed: int = 0,
        n_triplets: int = 40,
        small_class_policy: SmallClassPolicy = "error",
        epoch_length: EpochLength = "images",
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if n_triplets < 1:
            raise ValueError(f"TripletSampler: n_triplets={n_triplets} must be >= 1")
        self.n_triplets = int(n_triplets)
        super().__init__(
            labels,
            seed,
            images_per_class_needed=2,
            classes_per_rank_batch=1,  # anchor classes repeat only when n_triplets > #classes
            class_visits_per_rank_batch=self.n_triplets,
            rank_batch_size=3 * self.n_triplets,
            small_class_policy=small_class_policy,
            epoch_length=epoch_length,
            num_replicas=num_replicas,
            rank=rank,
        )
        if len(self.classes) < 2:
            raise ValueError("TripletSampler: need at least 2 classes")

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        passes, pools = _ClassPasses(self.classes, rng), _ImagePools(self.by_class, rng)
        n_cls = len(self.classes)
        for _ in range(len(self)):
            slots = []
            for c in passes.take_many(self.n_triplets * self.num_replicas):
                k = int(rng.integers(n_cls - 1))  # uniform over the n_cls - 1 other classes
                neg = int(self.classes[k if k < np.searchsorted(self.classes, c) else k + 1])
                slots.append(pools.draw(c, 2) + pools.draw(neg, 1))
            yield self._shard(slots)


class PairSampler(_BaseBatchSampler):
    """Pair batches for the contrastive loss, layout "pairs": ``[x1, x1', x2, x2', ...]``.

    A fraction ``positive_fraction`` of the ``n_pairs`` pairs (rounded) are positive (two distinct
    images of one class; classes follow the class passes), the rest negative (one image each of
    two different classes); positive and negative pairs are interleaved in a random order.
    """

    layout = "pairs"

    def __init__(
        self,
        labels: np.ndarray,
        seed: int = 0,
        n_pairs: int = 60,
        positive_fraction: float = 0.5,
        small_class_policy: SmallClassPolicy = "error",
        epoch_length: EpochLength = "images",
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if n_pairs < 1 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(
                f"PairSampler: n_pairs={n_pairs} must be >= 1 "
                f"and positive_fraction={positive_fraction} in [0, 1]"
            )
        self.n_pairs = int(n_pairs)
        self.n_positive = int(round(self.n_pairs * positive_fraction))
        super().__init__(
            labels,
            seed,
            images_per_class_needed=2,
            classes_per_rank_batch=1,  # positive-pair classes repeat only when n_positive > #classes
            class_visits_per_rank_batch=max(1, self.n_positive),
            rank_batch_size=2 * self.n_pairs,
            small_class_policy=small_class_policy,
            epoch_length=epoch_length,
            num_replicas=num_replicas,
            rank=rank,
        )
        if len(self.classes) < 2:
            raise ValueError("PairSampler: need at least 2 classes")

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        passes, pools = _ClassPasses(self.classes, rng), _ImagePools(self.by_class, rng)
        for _ in range(len(self)):
            slots: list[list[int]] = []
            for _r in range(self.num_replicas):
                pos = [pools.draw(c, 2) for c in passes.take_many(self.n_positive)] if self.n_positive else []
                neg = []
                for _k in range(self.n_pairs - self.n_positive):
                    c1, c2 = rng.choice(self.classes, size=2, replace=False).tolist()
                    neg.append(pools.draw(c1, 1) + pools.draw(c2, 1))
                pairs = pos + neg
                slots.extend(pairs[i] for i in rng.permutation(len(pairs)))
            yield self._shard(slots)


class TupletSampler(_BaseBatchSampler):
    """Naive (N+1)-tuplet batches (paper Eq. 3, figure panel b), layout "tuplets", N(N+1) images.

    N distinct classes per batch (following the class passes). Row i is
    ``[a_i, p_i, n_{i,1}..n_{i,N-1}]``: two distinct images of class i, then one image of each of
    the other N-1 classes of the batch — each anchor has its *own* negative examples (each class
    supplies N+1 distinct images per batch: its a, p and one negative for every other row; a class
    with fewer than N+1 images repeats negatives), which is why the naive construction needs
    N(N+1) embeddings against N-pair's 2N for the same classes.
    """

    layout = "tuplets"

    def __init__(
        self,
        labels: np.ndarray,
        seed: int = 0,
        n_classes: int = 8,
        small_class_policy: SmallClassPolicy = "error",
        epoch_length: EpochLength = "images",
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if n_classes < 2:
            raise ValueError(f"TupletSampler: n_classes={n_classes} must be >= 2")
        self.n_classes = int(n_classes)
        super().__init__(
            labels,
            seed,
            images_per_class_needed=2,
            classes_per_rank_batch=self.n_classes,
            rank_batch_size=self.n_classes * (self.n_classes + 1),
            small_class_policy=small_class_policy,
            epoch_length=epoch_length,
            num_replicas=num_replicas,
            rank=rank,
        )

    def _class_images(self, pools: _ImagePools, cls: int, k: int) -> list[int]:
        """k images of a class: all distinct if it has >= k, else a distinct (a, p) + repeated negatives."""
        if len(self.by_class[cls]) >= k:
            return pools.draw(cls, k)
        return pools.draw(cls, 2) + [pools.draw(cls, 1)[0] for _ in range(k - 2)]

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        passes, pools = _ClassPasses(self.classes, rng), _ImagePools(self.by_class, rng)
        n = self.n_classes
        for _ in range(len(self)):
            slots: list[list[int]] = []
            for _r in range(self.num_replicas):  # each rank's rows form complete tuplets on their own
                classes = passes.take(n)
                # each class supplies N+1 images: a and p of its own row, one negative for each other row
                imgs = [self._class_images(pools, c, n + 1) for c in classes]
                for i in range(n):
                    row = imgs[i][:2] + [imgs[j][2 + (i if i < j else i - 1)] for j in range(n) if j != i]
                    slots.append(row)
            yield self._shard(slots)


class HardNegativeClassSampler(_BaseBatchSampler):
    """Hard negative class mining (paper §3.3), layout "class_blocks" (N classes × M images).

    For each batch:

    1. *Evaluate embeddings.* Every ``refresh_every`` batches, draw ``n_candidates`` = C classes (from
       the class passes) and embed ``n_candidate_examples`` (1 or 2) random images of each with the
       current model via the function given to :meth:`set_embedder` (no gradient, in chunks of
       ``embed_batch_size``). Between refreshes the candidates and their embeddings are reused.
    2. *Select classes greedily.* Start from a candidate class chosen at random; then repeatedly add
       the candidate c that most violates the triplet constraint against the classes S selected so
       far, with the score

           v(c) = max_{s ∈ S} max_k ( e_{s,1}ᵀ e_{c,k} − e_{s,1}ᵀ e_{s,2} )

       i.e. how much c's example beats the positive of a selected anchor s under the training
       similarity (inner product; ``similarity: cosine`` normalises first). With one example per
       class, e_{s,2} = e_{s,1}. Ties are broken uniformly at random.
    3. *Finalise.* Draw M fresh images of each selected class (from the class pools, as
       :class:`NPairSampler`).

    Works with every "class_blocks" loss (N-pair-mc, N-pair-ovo, triplet-nm — the paper's "-nm"
    rows). Iterating before :meth:`set_embedder` raises ``RuntimeError``. Batches depend on seed,
    epoch and the model. ``needs_current_model = True`` tells :class:`npair.stream.BatchStream` to draw each
    batch only when the step that uses it asks for it, so the candidates are embedded with the model of that
    step (no DataLoader prefetch lag; :func:`current_model_embedder` is the embedder the training loop sets).
    Unlike :class:`NPairSampler` an epoch does not promise to show every class
    in a batch (every class is a *candidate* at least once per epoch when ``len(self)·C /
    refresh_every`` ≥ the number of classes). Under DDP the ranks must compute identical candidate
    embeddings (same model, deterministic kernels) or their class slices may overlap.
    """

    layout = "class_blocks"
    needs_current_model = True

    def __init__(
        self,
        labels: np.ndarray,
        seed: int = 0,
        n_classes: int = 60,
        n_per_class: int = 2,
        n_candidates: int = 600,
        n_candidate_examples: int = 2,
        refresh_every: int = 1,
        similarity: Literal["inner_product", "cosine"] = "inner_product",
        embed_batch_size: int = 256,
        small_class_policy: SmallClassPolicy = "error",
        epoch_length: EpochLength = "images",
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if n_classes < 2 or n_per_class < 2:
            raise ValueError(
                f"HardNegativeClassSampler: n_classes={n_classes}, n_per_class={n_per_class} must be >= 2"
            )
        if n_candidate_examples not in (1, 2):
            raise ValueError(
                f"HardNegativeClassSampler: n_candidate_examples={n_candidate_examples} must be 1 or 2"
            )
        if refresh_every < 1 or embed_batch_size < 1:
            raise ValueError(
                f"refresh_every={refresh_every} and embed_batch_size={embed_batch_size} must be >= 1"
            )
        if similarity not in ("inner_product", "cosine"):
            raise ValueError(f"similarity={similarity!r} must be 'inner_product' or 'cosine'")
        self.n_classes = int(n_classes)
        self.n_per_class = int(n_per_class)
        self.n_candidate_examples = int(n_candidate_examples)
        self.refresh_every = int(refresh_every)
        self.similarity = similarity
        self.embed_batch_size = int(embed_batch_size)
        self._embedder: Callable[[np.ndarray], Tensor] | None = None
        super().__init__(
            labels,
            seed,
            images_per_class_needed=max(self.n_per_class, self.n_candidate_examples),
            classes_per_rank_batch=self.n_classes,
            rank_batch_size=self.n_classes * self.n_per_class,
            small_class_policy=small_class_policy,
            epoch_length=epoch_length,
            num_replicas=num_replicas,
            rank=rank,
        )
        self.n_candidates = min(int(n_candidates), len(self.classes))
        if self.n_candidates < self.classes_per_batch:
            raise ValueError(
                f"HardNegativeClassSampler: n_candidates={n_candidates} must be >= the "
                f"{self.classes_per_batch} classes a batch needs"
            )

    def set_embedder(self, fn: Callable[[np.ndarray], Tensor]) -> None:
        """``fn(indices) -> (n, D)`` embeds dataset items with the current model (no gradient)."""
        self._embedder = fn

    def _embed(self, indices: np.ndarray) -> Tensor:
        assert self._embedder is not None
        chunks = []
        with torch.no_grad():
            for start in range(0, len(indices), self.embed_batch_size):
                out = self._embedder(indices[start : start + self.embed_batch_size])
                chunks.append(torch.as_tensor(out).detach().float().cpu())
        emb = torch.cat(chunks)
        if emb.ndim != 2 or emb.shape[0] != len(indices):
            raise ValueError(
                f"embedder returned shape {tuple(emb.shape)} for {len(indices)} indices; expected (n, D)"
            )
        if self.similarity == "cosine":
            emb = torch.nn.functional.normalize(emb, dim=1)
        return emb

    def select_classes(self, emb: Tensor, n: int, rng: np.random.Generator) -> list[int]:
        """Greedy selection of ``n`` candidate positions from ``emb`` (C, K, D); see the class docstring."""
        c = emb.shape[0]
        anchors = emb[:, 0].double()  # e_{s,1}
        pos_sim = (anchors * emb[:, -1].double()).sum(1)  # e_{s,1}ᵀ e_{s,2}  (= ‖e_s‖² when K = 1)
        all_ex = emb.double()  # (C, K, D)
        score = torch.full((c,), -math.inf, dtype=torch.float64)
        chosen = torch.zeros(c, dtype=torch.bool)
        first = int(rng.integers(c))
        selected = [first]
        chosen[first] = True
        while len(selected) < n:
            s = selected[-1]
            viol = torch.einsum("ckd,d->ck", all_ex, anchors[s]).amax(dim=1) - pos_sim[s]
            score = torch.maximum(score, viol)
            masked = score.masked_fill(chosen, -math.inf)
            best = masked.max()
            ties = torch.nonzero(masked == best).flatten().numpy()
            pick = int(ties[rng.integers(len(ties))]) if len(ties) > 1 else int(ties[0])
            selected.append(pick)
            chosen[pick] = True
        return selected

    def __iter__(self) -> Iterator[list[int]]:
        if self._embedder is None:
            raise RuntimeError(
                "HardNegativeClassSampler: call sampler.set_embedder(fn) before iterating; fn(indices) must "
                "return the current model's embeddings (n, D) of those dataset items, without gradient"
            )
        rng = self._rng()
        passes, pools = _ClassPasses(self.classes, rng), _ImagePools(self.by_class, rng)
        cand_classes: list[int] = []
        cand_emb: Tensor | None = None
        for b in range(len(self)):
            if b % self.refresh_every == 0 or cand_emb is None:
                cand_classes = passes.take(self.n_candidates)
                k = self.n_candidate_examples
                idx = np.asarray([i for c in cand_classes for i in pools.draw(c, k)], dtype=np.int64)
                cand_emb = self._embed(idx).view(len(cand_classes), self.n_candidate_examples, -1)
            picks = self.select_classes(cand_emb, self.classes_per_batch, rng)
            yield self._shard([pools.draw(cand_classes[p], self.n_per_class) for p in picks])


def current_model_embedder(
    model: torch.nn.Module, dataset: Any, device: torch.device | str, batch_size: int = 512
) -> Callable[[np.ndarray], Tensor]:
    """``fn(indices) -> (n, D)`` for :meth:`HardNegativeClassSampler.set_embedder`: the dataset items embedded
    by ``model`` as it is when ``fn`` is called (eval mode, no gradient, chunks of ``batch_size``; the
    training mode is restored). Items are loaded in this process: no DataLoader is built per refresh."""

    def embed(indices: np.ndarray) -> Tensor:
        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.no_grad():
                for start in range(0, len(indices), int(batch_size)):
                    chunk = [int(i) for i in indices[start : start + int(batch_size)]]
                    images, _ = fetch_batch(dataset, chunk, default_collate)
                    out.append(model(images.to(device)).float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(out)

    return embed
