"""A test set searched against itself: the rank of every query's first same-class
neighbour (Recall@K for every K at once) and the same-class flags of its first R
neighbours (MAP@R, R-precision), each query excluded by index.

Ranking rule, whatever the backend: decreasing float64 similarity of the prepared
embeddings, exact ties in increasing index (:mod:`npair.evaluation.exact`; the query is
excluded by its index, ``docs/metrics.md`` §4.8 item 1).

**The symmetric block algorithm** (``backend="torch"``, CPU or CUDA). When the queries
are the reference set, the similarity matrix is symmetric, so each pair of items needs
one product, not two. The items are reordered so that every class is contiguous and
grouped into *class-aligned blocks* of about ``block`` items (a class never straddles
two blocks). Then

1. each diagonal block ``X_I X_Iᵀ`` holds every positive (same-class item) of its rows:
   it gives each query's best positive score ``β`` (decided in float64 among the
   positives within the float32 error of the largest) and its index, and the row
   counts of that block;
2. each tile of the upper triangle ``X_I X_Jᵀ`` (``J > I``, ``tile_cols`` columns at a
   time) holds only negatives; it is computed once and counted twice: along its rows
   for the queries of ``I`` and along its columns for the queries of ``J``.

*Recall@K.* A query's first-hit rank is the number of negatives scoring above ``β``:
float32 counts decide every item farther than the error bound ``e`` from ``β``; the few
within ``±e`` are collected where they are found and decided in float64 (ties: lower
index first). No top-k over ``n`` columns: Recall@1000 costs what Recall@1 costs.

*MAP@R.* A query's R positives (and their float64 scores) are all in its diagonal
block. Only its best R negatives can move a positive within the first R ranks, so each
tile hands over the negatives at or above the query's *extraction threshold*: at first
just below its lowest positive, then, once R negatives are held, ``2e`` below the R-th
of them (a negative below that is beaten exactly by R others). The positives' ranks
follow from comparing them with those negatives, near scores in float64. A query whose
list is too full to be sure (a near tie at its last slot) is searched on its own
(:func:`~npair.evaluation.knn.iter_knn`).

Cost: ``n²/2 + n·block/2`` products instead of ``n²`` (0.55 n² at n = 5,000) and, per
tile, a few comparisons of each score while the tile is in cache. On CPU the tiles are
shared among worker threads, each running single-threaded products (so no thread of a
parallel product spins while the comparisons run); on CUDA one stream runs them, with
the comparisons in torch.

The faiss backend searches ``max(K, R)`` neighbours per query
(:func:`~npair.evaluation.knn.iter_candidates`) and decides the same ranks from them;
so does the torch backend for classes so large that ``n × R`` lists would not fit
(:data:`MAX_LIST_ENTRIES`).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .exact import error_bound, full_precision_matmul, max_norm, order_exactly, pair_scores
from .knn import _check_k, iter_candidates, iter_knn, resolve_backend

DEFAULT_BLOCK = 512  # items per class-aligned diagonal block; a larger class is a block of its own
DEFAULT_TILE_COLS = 4096  # columns per upper-triangle tile: block × tile_cols float32 (8 MiB) stays in cache
MAX_LIST_ENTRIES = 2**24  # n × R above this (huge classes): MAP@R from per-query candidate lists instead


@dataclass
class SelfRanks:
    """Result of :func:`search_self`, in the original item order.

    ``first_hit (n,)`` int64: 0-based rank of each query's first same-class neighbour
    (exact; ``n - 1`` for a query without any positive; the faiss backend reports
    ``k_first_hit`` for ranks at or beyond it; -1 everywhere when not asked for).
    ``matches_at_r (n, R_max)`` bool: the same-class flags of each query's first ``R``
    neighbours, ``R`` its number of positives (False beyond ``R``), what MAP@R and
    R-precision read. ``backend``: what ran.
    """

    first_hit: np.ndarray
    matches_at_r: np.ndarray
    backend: str


def search_self(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    k_first_hit: int,
    at_r: bool = False,
    similarity: str = "cosine",
    backend: str = "auto",
    device: str = "cpu",
    block: int = DEFAULT_BLOCK,
    tile_cols: int = DEFAULT_TILE_COLS,
    chunk_size: int | None = None,
) -> SelfRanks:
    """Rank the prepared set ``x`` (:func:`~npair.evaluation.knn.prepare_embeddings`)
    against itself, each query excluded by index.

    ``k_first_hit``: first-hit ranks must be exact below this value (0: not needed; the
    faiss backend searches that many neighbours, the torch backend is exact
    everywhere). ``at_r``: also the same-class flags of each query's first R neighbours.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(x)
    r_max = int(np.unique(labels, return_counts=True)[1].max(initial=1)) - 1 if at_r else 0
    k_search = max(r_max, k_first_hit, 1)
    _check_k(k_search, n, exclude_self=True)
    used = resolve_backend(backend, device, k_search + 1)
    with full_precision_matmul():
        if used != "torch" or n * max(r_max, 1) > MAX_LIST_ENTRIES:
            return _from_candidate_lists(
                x, labels, k_first_hit, r_max, similarity, backend, device, chunk_size, used
            )
        first, matches = _symmetric_self(x, labels, k_first_hit, at_r, similarity, device, block, tile_cols)
    return SelfRanks(first, matches, "torch")


# --------------------------------------------------------------------------------------
# from candidate lists (faiss; very large classes)


def _from_candidate_lists(x, labels, k_first_hit, r_max, similarity, backend, device, chunk_size, used):
    n = len(x)
    k_search = max(r_max, k_first_hit, 1)
    positives = np.unique(labels, return_inverse=True, return_counts=True)
    r = positives[2][positives[1]] - 1
    first = np.full(n, -1, dtype=np.int64)
    matches = np.zeros((n, r_max), dtype=bool)
    for start, values, index, err in iter_candidates(
        x, x, k_search, similarity=similarity, backend=backend, device=device,
        exclude_self=True, chunk_size=chunk_size, prepared=True,
    ):  # fmt: skip
        rows = np.arange(start, start + len(values))
        if k_first_hit:
            first[rows] = _first_hit_in_lists(x, labels, rows, values, index, err, k_search, similarity)
        if r_max:
            _, idx = order_exactly(values, index, rows, r_max, err, x, x, similarity)
            flags = labels[idx] == labels[rows, None]
            matches[rows] = flags & (np.arange(r_max)[None, :] < r[rows, None])
    return SelfRanks(first, matches, used)


def _first_hit_in_lists(x, labels, rows, values, index, err, cap, similarity) -> np.ndarray:
    """First-hit rank from complete candidate lists: negatives above the best positive,
    near ones decided in float64; ``cap`` when no positive is in the list."""
    valid = index >= 0
    same = valid & (labels[np.maximum(index, 0)] == labels[rows, None])
    has = same.any(axis=1)
    v64 = values.astype(np.float64)
    top_positive = np.where(same, v64, -np.inf).max(axis=1)
    # the best positive: in float64 among positives within 2e of the largest float32 one
    r, c = np.nonzero(same & (v64 >= (top_positive - 2 * err)[:, None]))
    beta, best = _best_by_float64(x, rows, r, index[r, c], similarity, len(labels))
    first = np.full(len(rows), cap, dtype=np.int64)
    negative = valid & ~same
    e = err[:, None]
    above = negative & (v64 > beta[:, None] + e)
    near_r, near_c = np.nonzero(negative & (np.abs(v64 - beta[:, None]) <= e))
    count = above.sum(axis=1)
    if near_r.size:
        s64 = pair_scores(x, rows[near_r], index[near_r, near_c], similarity)
        wins = (s64 > beta[near_r]) | ((s64 == beta[near_r]) & (index[near_r, near_c] < best[near_r]))
        np.add.at(count, near_r[wins], 1)
    first[has] = np.minimum(count[has], cap)
    return first


def _best_by_float64(x, queries, r, c_orig, similarity, n) -> tuple[np.ndarray, np.ndarray]:
    """For candidate pairs ``(queries[r], c_orig)``, per query row the largest float64
    score and its lowest index; ``(+inf, n)`` for rows without candidates."""
    beta = np.full(len(queries), np.inf)
    best = np.full(len(queries), n, dtype=np.int64)
    if r.size == 0:
        return beta, best
    s64 = pair_scores(x, queries[r], c_orig, similarity)
    order = np.lexsort((c_orig, -s64, r))
    first = order[np.r_[True, r[order][1:] != r[order][:-1]]]
    beta[r[first]] = s64[first]
    best[r[first]] = c_orig[first]
    return beta, best


# --------------------------------------------------------------------------------------
# the symmetric block algorithm


def class_aligned_blocks(sorted_labels: np.ndarray, block: int) -> list[tuple[int, int]]:
    """Split label-sorted positions into consecutive ``[start, end)`` blocks of whole
    classes, each at most ``block`` items unless one class alone is larger.

    >>> class_aligned_blocks(np.array([0, 0, 1, 1, 1, 2, 3, 3]), 4)
    [(0, 2), (2, 6), (6, 8)]
    """
    n = len(sorted_labels)
    if n == 0:
        return []
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ends = np.r_[starts[1:], n]
    blocks = []
    begin = 0
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if e - begin > block and s > begin:
            blocks.append((begin, s))
            begin = s
    blocks.append((begin, n))
    return blocks


def _round_down(v: np.ndarray) -> np.ndarray:
    """float64 → the largest float32 <= v."""
    f = v.astype(np.float32)
    return np.where(f > v, np.nextafter(f, np.float32(-np.inf)), f).astype(np.float32)


def _round_up(v: np.ndarray) -> np.ndarray:
    """float64 → the smallest float32 >= v."""
    f = v.astype(np.float32)
    return np.where(f < v, np.nextafter(f, np.float32(np.inf)), f).astype(np.float32)


class _Counter:
    """Per query, how many scores of a tile are above (``gt``) or at least (``ge``) its
    thresholds, along the tile's rows and along its columns, in one pass over the tile.

    On CPU in numpy: the tile is cut into pieces of 128 rows, each compared with every
    threshold while it is in cache, with uint16 partial sums (uint32 for a tile wider
    than 65,535). On CUDA in torch."""

    PIECE = 128

    def __init__(self, device: torch.device):
        self.cpu = device.type == "cpu"
        self._buffer = np.empty((self.PIECE, 0), dtype=bool)

    def tile(self, s: torch.Tensor, rows: list, cols: list):
        """``rows``/``cols``: ``(kind, thresholds)`` with kind ``"gt"``, ``"ge"`` or
        ``"take"`` (``>=``, and the entries are returned) and one threshold per row /
        column. Returns, per side, the int64 counts per threshold and, for a ``"take"``
        threshold, ``(row, col, score)`` of the entries at or above it (numpy; tile
        positions)."""
        if not self.cpu:
            return self._tile_torch(s, rows, 1), self._tile_torch(s, cols, 0)
        sn = s.numpy()
        height, width = sn.shape
        if self._buffer.shape[1] < width:
            self._buffer = np.empty((self.PIECE, width), dtype=bool)
        row_t = [(kind, t.numpy()[:, None]) for kind, t in rows]
        col_t = [(kind, t.numpy()[None, :]) for kind, t in cols]
        row_counts = [np.zeros(height, dtype=np.int64) for _ in rows]
        col_counts = [np.zeros(width, dtype=np.int64) for _ in cols]
        taken: dict[tuple[int, int], list] = {}
        sum_type = np.uint16 if width < 2**16 else np.uint32  # (a class of > 65,535 items: a wide diagonal)
        for r0 in range(0, height, self.PIECE):
            piece = sn[r0 : r0 + self.PIECE]
            buf = self._buffer[: len(piece), :width]
            for side, thresholds, counts in ((1, row_t, row_counts), (0, col_t, col_counts)):
                for k, ((kind, t), out) in enumerate(zip(thresholds, counts, strict=True)):
                    _NUMPY[kind](piece, t[r0 : r0 + self.PIECE] if side == 1 else t, out=buf)
                    partial = buf.view(np.uint8).sum(side, dtype=sum_type)
                    if side == 1:
                        out[r0 : r0 + len(piece)] = partial
                    else:
                        out += partial
                    if kind == "take" and partial.any():
                        flat = np.flatnonzero(buf)  # (2-D np.nonzero is ~20x slower here)
                        r, c = np.divmod(flat, width)
                        taken.setdefault((side, k), []).append((r + r0, c, piece.reshape(-1)[flat]))
        return (
            ([torch.from_numpy(c) for c in row_counts], _joined(taken, 1, len(rows))),
            ([torch.from_numpy(c) for c in col_counts], _joined(taken, 0, len(cols))),
        )

    @staticmethod
    def _tile_torch(s: torch.Tensor, thresholds: list, side: int):
        counts, taken = [], {}
        for k, (kind, t) in enumerate(thresholds):
            mask = _compare(kind, s, t[:, None] if side == 1 else t[None, :])
            counts.append(mask.sum(side))
            if kind == "take":
                r, c = torch.nonzero(mask, as_tuple=True)
                taken[k] = (r.cpu().numpy(), c.cpu().numpy(), s[r, c].cpu().numpy())
        return counts, taken


def _joined(taken: dict, side: int, count: int) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    for k in range(count):
        parts = taken.get((side, k))
        if parts:
            out[k] = tuple(np.concatenate(a) for a in zip(*parts, strict=True))
    return out


_NUMPY = {"gt": np.greater, "ge": np.greater_equal, "take": np.greater_equal}


def _compare(kind: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return s > t if kind == "gt" else s >= t


def _scores(q: torch.Tensor, r: torch.Tensor, q_sq, r_sq, similarity: str, out=None) -> torch.Tensor:
    s = torch.matmul(q, r.T, out=out)
    if similarity == "euclidean":  # -‖q - r‖² = 2 q·r - ‖q‖² - ‖r‖²
        s.mul_(2).sub_(q_sq[:, None]).sub_(r_sq[None, :])
    return s


def _pairs_at_or_above(s: torch.Tensor, thr: torch.Tensor, hi: torch.Tensor | None, flagged, axis: int):
    """``(query, item, score)`` of the entries ``thr <= s`` (``<= hi`` when given) of the
    flagged queries along ``axis``; positions local to the tile, as numpy arrays."""
    which = torch.nonzero(flagged).flatten()
    if which.numel() == 0:
        return None
    sub = s[which] if axis == 1 else s[:, which].T
    mask = sub >= thr[which, None]
    if hi is not None:
        mask &= sub <= hi[which, None]
    r, c = torch.nonzero(mask, as_tuple=True)
    return which[r].cpu().numpy(), c.cpu().numpy(), sub[r, c].cpu().numpy()


class _TopNegatives:
    """Per query, the best negatives found so far (float32 scores, original indices,
    ``width`` slots: the query's own R first), and its extraction threshold: a negative
    below it can no longer change a rank within the first R (module docstring)."""

    MARGIN = 8  # slots beyond R: a list is exact unless its last slot is within 2e of the R-th

    def __init__(self, r: np.ndarray, lowest_positive: np.ndarray, err: np.ndarray, dev: torch.device):
        self.r = r
        self.err = err
        self.dev = dev
        self.width = int(r.max(initial=0)) + self.MARGIN
        n = len(r)
        self.values = np.full((n, self.width), -np.inf, dtype=np.float32)
        self.index = np.full((n, self.width), -1, dtype=np.int64)
        start = np.where(r > 0, _round_down(lowest_positive - 3 * err), np.inf)
        self._set_threshold(start.astype(np.float32))

    def _set_threshold(self, t: np.ndarray) -> None:
        self.threshold_np = t
        self.threshold = torch.from_numpy(t) if self.dev.type == "cpu" else torch.from_numpy(t).to(self.dev)

    def empty_copy(self) -> _TopNegatives:
        """No candidates yet, the same thresholds (each is justified by this list, which
        is merged with the copy's in the end)."""
        other = object.__new__(_TopNegatives)
        other.r, other.err, other.dev, other.width = self.r, self.err, self.dev, self.width
        other.values = np.full_like(self.values, -np.inf)
        other.index = np.full_like(self.index, -1)
        other._set_threshold(self.threshold_np.copy())
        return other

    def merge(self, other: _TopNegatives) -> None:
        """Add every candidate ``other`` holds."""
        q, slot = np.nonzero(other.index >= 0)
        self.add(q, other.index[q, slot], other.values[q, slot])

    def add(self, queries: np.ndarray, items_orig: np.ndarray, values: np.ndarray) -> None:
        """Merge candidates ``(query position, original index, float32 score)``."""
        if queries.size == 0:
            return
        order = np.lexsort((-values, queries))
        queries, items_orig, values = queries[order], items_orig[order], values[order]
        touched, first, counts = np.unique(queries, return_index=True, return_counts=True)
        slot = np.arange(queries.size) - np.repeat(first, counts)
        take = slot < self.width
        group = np.repeat(np.arange(touched.size), counts)[take]
        v = np.full((touched.size, 2 * self.width), -np.inf, dtype=np.float32)
        i = np.full((touched.size, 2 * self.width), -1, dtype=np.int64)
        v[:, : self.width], i[:, : self.width] = self.values[touched], self.index[touched]
        v[group, self.width + slot[take]] = values[take]
        i[group, self.width + slot[take]] = items_orig[take]
        keep = np.argsort(-v, axis=1, kind="stable")[:, : self.width]
        self.values[touched] = np.take_along_axis(v, keep, axis=1)
        self.index[touched] = np.take_along_axis(i, keep, axis=1)
        r = self.r[touched]
        rth = self.values[touched, np.maximum(r - 1, 0)].astype(np.float64)
        raised = np.where(
            (r > 0) & np.isfinite(rth),
            np.maximum(self.threshold_np[touched], _round_down(rth - 2 * self.err[touched])),
            self.threshold_np[touched],
        ).astype(np.float32)
        self.threshold_np[touched] = raised
        if self.dev.type != "cpu":
            self.threshold[torch.from_numpy(touched).to(self.dev)] = torch.from_numpy(raised).to(self.dev)

    def saturated(self) -> np.ndarray:
        """Queries whose last slot may have pushed out a negative within 2e of the R-th."""
        last = self.values[:, -1].astype(np.float64)
        rth = self.values[np.arange(len(self.r)), np.maximum(self.r - 1, 0)].astype(np.float64)
        return (self.r > 0) & np.isfinite(last) & (last >= rth - 2 * self.err)


def _positive_lists(x, order, sorted_labels, similarity):
    """Every query's positives (sorted positions), float64 scores in decreasing order,
    ties by original index: ``(scores (n, Rmax), index (n, Rmax) original, r (n,))``."""
    n = len(order)
    _, start, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    size = np.repeat(counts, counts)
    first = np.repeat(start, counts)
    r = size - 1
    width = int(r.max(initial=0))
    scores = np.full((n, width), -np.inf)
    index = np.full((n, width), -1, dtype=np.int64)
    if width == 0:
        return scores, index, r
    q = np.repeat(np.arange(n), size)
    item = np.repeat(first, size) + (np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size))
    keep = item != q
    q, item = q[keep], item[keep]
    s64 = pair_scores(x, order[q], order[item], similarity)
    o = np.lexsort((order[item], -s64, q))
    q, item, s64 = q[o], item[o], s64[o]
    slot = np.arange(q.size) - np.repeat(np.cumsum(r) - r, r)
    scores[q, slot] = s64
    index[q, slot] = order[item]
    return scores, index, r


def _ranks_within_r(x, order, positives, pos_index, r, top: _TopNegatives, err, similarity) -> np.ndarray:
    """``(n, Rmax)`` bool: same-class flags of each query's first R neighbours (R its
    number of positives), from its positives and its best negatives, near scores decided
    in float64 (ties by index)."""
    n, width = positives.shape
    matches = np.zeros((n, width), dtype=bool)
    step = max(1, 2**22 // max(1, width * top.width))
    for a in range(0, n, step):
        b = min(n, a + step)
        p = positives[a:b, :, None]  # (m, R, 1)
        v, vi = top.values[a:b, None, :].astype(np.float64), top.index[a:b, None, :]  # (m, 1, W)
        e = err[a:b, None, None]
        valid = (vi >= 0) & np.isfinite(p)
        above = valid & (v > p + e)
        near = valid & ~above & (v >= p - e)
        qr, jr, lr = np.nonzero(near)
        if qr.size:
            items = top.index[a + qr, lr]
            s64 = pair_scores(x, order[a + qr], items, similarity)
            pj, pij = positives[a + qr, jr], pos_index[a + qr, jr]
            above[qr, jr, lr] = (s64 > pj) | ((s64 == pj) & (items < pij))
        rank = np.arange(1, width + 1)[None, :] + above.sum(axis=2)  # 1-based rank of positive j
        inside = (rank <= r[a:b, None]) & (np.arange(width)[None, :] < r[a:b, None])
        qi, ji = np.nonzero(inside)
        matches[a + qi, rank[qi, ji] - 1] = True
    return matches


class _Partial:
    """What one worker thread accumulates over the tiles it computes."""

    def __init__(self, n: int, dev: torch.device, top: _TopNegatives | None):
        self.above = torch.zeros(n, dtype=torch.int64, device=dev)
        self.near_q: list[np.ndarray] = []
        self.near_i: list[np.ndarray] = []
        self.top = top.empty_copy() if top is not None else None
        self.counter = _Counter(dev)


class _SymmetricSearch:
    """The symmetric block algorithm (module docstring) over label-sorted positions."""

    def __init__(self, x, labels, k_first_hit, at_r, similarity, device, block, tile_cols):
        self.x, self.labels, self.similarity = x, labels, similarity
        self.dev = torch.device(device)
        self.n = n = len(x)
        self.order = np.argsort(labels, kind="stable")  # position p of the sorted set holds item order[p]
        self.sorted_labels = labels[self.order]
        self.xs = torch.from_numpy(np.ascontiguousarray(x[self.order])).to(self.dev)
        self.sq = (self.xs * self.xs).sum(1) if similarity == "euclidean" else None
        self.lab = torch.from_numpy(self.sorted_labels).to(self.dev)
        self.err = error_bound(x, max_norm(x), similarity)[self.order]
        self.blocks = class_aligned_blocks(self.sorted_labels, block)
        self.block, self.tile_cols = block, tile_cols
        self.count_ranks, self.at_r = k_first_hit > 0, at_r
        self.beta = np.full(n, np.inf)  # best positive (float64); +inf: none
        self.best = np.full(n, n, dtype=np.int64)  # its original index
        self.top = None
        if at_r:
            self.positives, self.pos_index, self.r = _positive_lists(
                x, self.order, self.sorted_labels, similarity
            )
            if self.positives.shape[1]:
                has = self.r > 0
                self.beta = np.where(has, self.positives[:, 0], np.inf)
                self.best = np.where(has, self.pos_index[:, 0], n)
                lowest = self.positives[np.arange(n), np.maximum(self.r - 1, 0)]
            else:
                lowest = np.full(n, np.inf)
            self.top = _TopNegatives(self.r, lowest, self.err, self.dev)
        self.lo, self.hi = _window(self.beta, self.err, self.dev)

    # ------------------------------------------------------------------ per tile
    def _thresholds(self, part: _Partial, q: slice) -> list:
        out = [("gt", self.hi[q]), ("ge", self.lo[q])] if self.count_ranks else []
        return out + ([("take", part.top.threshold[q])] if self.at_r else [])

    def _use(self, part: _Partial, result, s, axis: int, q: slice, other0: int) -> None:
        """Counts of the queries ``q`` along ``axis`` of tile ``s`` (whose other side starts
        at sorted position ``other0``): ranks, near pairs, candidate negatives."""
        counts, taken = result
        if self.count_ranks:
            g, ge = counts[0].to(self.dev), counts[1].to(self.dev)
            part.above[q] += g
            found = _pairs_at_or_above(s, self.lo[q], self.hi[q], ge > g, axis)
            if found is not None:
                part.near_q.append(found[0] + q.start)
                part.near_i.append(found[1] + other0)
        if self.at_r and taken:
            r, c, v = taken[len(counts) - 1]
            query, item = (r, c) if axis == 1 else (c, r)
            part.top.add(query + q.start, self.order[item + other0], v)

    def diagonal(self, b0: int, b1: int, part: _Partial) -> None:
        """Block ``[b0, b1)`` against itself: best positives, then its rows' counts."""
        xs, sq, dev, n = self.xs, self.sq, self.dev, self.n
        step = max(1, (self.tile_cols * self.block) // (b1 - b0))
        for r0 in range(b0, b1, step):
            r1 = min(b1, r0 + step)
            s = _scores(xs[r0:r1], xs[b0:b1], _part(sq, r0, r1), _part(sq, b0, b1), self.similarity)
            local = torch.arange(r1 - r0, device=dev)
            s[local, local + (r0 - b0)] = -math.inf  # the query itself, by index
            same = self.lab[r0:r1, None] == self.lab[None, b0:b1]
            if self.count_ranks and not self.at_r:  # best positive: float64 among those within 2e of the top
                top_positive = torch.where(same, s, -math.inf).max(dim=1).values.cpu().numpy()
                cut = torch.from_numpy(_round_down(top_positive - 2 * self.err[r0:r1])).to(dev)
                rr, cc = torch.nonzero(same & (s >= cut[:, None]) & (s > -math.inf), as_tuple=True)
                rr, cc = rr.cpu().numpy(), cc.cpu().numpy()
                order = self.order
                b, bo = _best_by_float64(self.x, order[r0:r1], rr, order[b0 + cc], self.similarity, n)
                self.beta[r0:r1], self.best[r0:r1] = b, bo
                self.lo[r0:r1], self.hi[r0:r1] = _window(b, self.err[r0:r1], dev)
            negatives = torch.where(same, -math.inf, s).contiguous()
            q = slice(r0, r1)
            rows, _ = part.counter.tile(negatives, self._thresholds(part, q), [])
            self._use(part, rows, negatives, 1, q, b0)

    def upper(self, b0: int, b1: int, part: _Partial) -> None:
        """Block ``[b0, b1)`` against every column after it, counted along rows and columns."""
        xs, sq, n, w = self.xs, self.sq, self.n, self.tile_cols
        out = torch.empty((b1 - b0, w), device=self.dev)
        for c0 in range(b1, n, w):
            c1 = min(n, c0 + w)
            buf = out if c1 - c0 == w else None
            s = _scores(xs[b0:b1], xs[c0:c1], _part(sq, b0, b1), _part(sq, c0, c1), self.similarity, out=buf)
            rows, cols = slice(b0, b1), slice(c0, c1)
            by_row, by_col = part.counter.tile(s, self._thresholds(part, rows), self._thresholds(part, cols))
            self._use(part, by_row, s, 1, rows, c0)
            self._use(part, by_col, s, 0, cols, b0)

    # ------------------------------------------------------------------ the whole search
    def run(self, workers: int) -> tuple[np.ndarray, np.ndarray]:
        phases = [
            (self.diagonal, self.blocks),
            (self.upper, sorted(self.blocks[:-1], key=lambda b: b[0])),  # largest first: best balance
        ]
        parts: list[_Partial] = []
        with torch.no_grad():
            for work, blocks in phases:
                phase_parts = _run_parallel(work, blocks, workers, self._new_part)
                if self.at_r:  # every worker starts the next phase from all the candidates found so far
                    for p in phase_parts:
                        self.top.merge(p.top)
                parts.extend(phase_parts)
        return self._finish(parts)

    def _new_part(self) -> _Partial:
        return _Partial(self.n, self.dev, self.top)

    def _finish(self, parts: list[_Partial]) -> tuple[np.ndarray, np.ndarray]:
        n, order = self.n, self.order
        first_hit = np.full(n, -1, dtype=np.int64)
        if self.count_ranks:
            first = sum(p.above for p in parts).cpu().numpy()
            near_q = [a for p in parts for a in p.near_q]
            if near_q:  # negatives within ±e of β: float64 decides, ties to the lower index
                q_pos = np.concatenate(near_q)
                item_pos = np.concatenate([a for p in parts for a in p.near_i])
                s64 = pair_scores(self.x, order[q_pos], order[item_pos], self.similarity)
                beta, best = self.beta[q_pos], self.best[q_pos]
                wins = (s64 > beta) | ((s64 == beta) & (order[item_pos] < best))
                np.add.at(first, q_pos[wins], 1)
            first[self.best == n] = n - 1  # no positive at all
            first_hit[order] = first
        matches = np.zeros((n, 0), dtype=bool)
        if self.at_r:
            sorted_matches = _ranks_within_r(
                self.x, order, self.positives, self.pos_index, self.r, self.top, self.err, self.similarity
            )
            redo = np.flatnonzero(self.top.saturated())
            if redo.size:  # a full list may have pushed out a near-tie: those queries are searched alone
                sorted_matches[redo] = _matches_by_search(
                    self.x, self.labels, order[redo], self.r[redo], sorted_matches.shape[1],
                    self.similarity, str(self.dev),
                )  # fmt: skip
            matches = np.zeros_like(sorted_matches)
            matches[order] = sorted_matches
        return first_hit, matches


def _run_parallel(work, blocks, workers: int, new_part) -> list[_Partial]:
    """``work(b0, b1, part)`` for every block, on ``workers`` threads with one ``_Partial``
    each (1: in this thread)."""
    if workers <= 1 or len(blocks) < 2:
        part = new_part()
        for b0, b1 in blocks:
            work(b0, b1, part)
        return [part]
    local = threading.local()
    parts: list[_Partial] = []
    lock = threading.Lock()

    def run(block: tuple[int, int]) -> None:
        part = getattr(local, "part", None)
        if part is None:
            part = local.part = new_part()
            with lock:
                parts.append(part)
        work(*block, part)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, blocks))
    return parts


def _symmetric_self(x, labels, k_first_hit, at_r, similarity, device, block, tile_cols):
    """See :class:`_SymmetricSearch`. On CPU the tiles are shared among as many threads as
    torch may use, each running single-threaded products and comparisons (no thread
    of a parallel product spins while the comparisons run); on CUDA one stream."""
    search = _SymmetricSearch(x, labels, k_first_hit, at_r, similarity, device, block, tile_cols)
    if search.dev.type != "cpu":
        return search.run(workers=1)
    workers = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return search.run(workers)
    finally:
        torch.set_num_threads(workers)


def _window(beta: np.ndarray, err: np.ndarray, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``[lo, hi]`` containing ``[β - e, β + e]`` (+inf where β is +inf)."""
    finite = np.isfinite(beta)
    lo = np.where(finite, _round_down(beta - err), np.inf).astype(np.float32)
    hi = np.where(finite, _round_up(beta + err), np.inf).astype(np.float32)
    return torch.from_numpy(lo).to(dev), torch.from_numpy(hi).to(dev)


def _matches_by_search(x, labels, queries, r, width, similarity, device) -> np.ndarray:
    out = np.zeros((len(queries), width), dtype=bool)
    k = int(r.max())
    for start, _, idx in iter_knn(
        x[queries], x, k, similarity=similarity, backend="torch", device=device,
        exclude_self=True, prepared=True, query_index=queries,
    ):  # fmt: skip
        rows = np.arange(start, start + len(idx))
        flags = labels[idx] == labels[queries[rows], None]
        flags &= np.arange(k)[None, :] < r[rows, None]
        out[rows, :k] = flags
    return out


def _part(sq: torch.Tensor | None, a: int, b: int) -> torch.Tensor | None:
    return None if sq is None else sq[a:b]
