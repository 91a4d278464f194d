"""A test set searched against itself: the rank of every query's first same-class
neighbour (Recall@K for every K at once) and the same-class flags of its top-R list
(MAP@R, R-precision), each query excluded by index.

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

A query's first-hit rank is the number of negatives scoring above ``β``: float32
counts decide every item farther than the error bound ``e`` from ``β``; the few within
``±e`` are collected where they are found and decided in float64 (ties: lower index
first). The top-R lists for MAP@R are kept the same way: each tile contributes its best
R along rows and along columns to a running top-R per query, which also remembers the
best score it dropped; a query whose cut at R is then within ``2e`` of a dropped score
is searched again on its own (:func:`~npair.evaluation.knn.iter_knn`).

The work is ``n²/2 + n·block/2`` products instead of ``n²`` (0.55 n² at n = 5,000), and
no top-k over ``n`` columns for Recall@1000: the counts give every rank exactly. On CPU
the comparisons run in numpy on each product tile while it is still in cache; on CUDA
in torch.

The faiss backend searches ``max(K, R)`` neighbours per query
(:func:`~npair.evaluation.knn.iter_candidates`) and decides the same ranks from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .exact import error_bound, full_precision_matmul, max_norm, order_exactly, pair_scores
from .knn import _check_k, iter_candidates, iter_knn, resolve_backend

DEFAULT_BLOCK = 512  # items per class-aligned diagonal block; a larger class is a block of its own
DEFAULT_TILE_COLS = 4096  # columns per upper-triangle tile: block × tile_cols float32 (8 MiB) stays in cache


@dataclass
class SelfRanks:
    """Result of :func:`search_self`, in the original item order.

    ``first_hit (n,)`` int64: 0-based rank of the first same-class neighbour (exact;
    ``n - 1`` for a query without any positive; the faiss backend reports
    ``k_first_hit`` for ranks at or beyond it). ``top_matches (n, k_top)`` bool:
    same-class flags of the ``k_top`` nearest neighbours. ``backend``: what ran.
    """

    first_hit: np.ndarray
    top_matches: np.ndarray
    backend: str


def search_self(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    k_top: int,
    k_first_hit: int,
    similarity: str = "cosine",
    backend: str = "auto",
    device: str = "cpu",
    block: int = DEFAULT_BLOCK,
    tile_cols: int = DEFAULT_TILE_COLS,
    chunk_size: int | None = None,
) -> SelfRanks:
    """Rank the prepared set ``x`` (:func:`~npair.evaluation.knn.prepare_embeddings`)
    against itself, each query excluded by index.

    ``k_first_hit``: first-hit ranks must be exact below this value (the faiss backend
    searches that many neighbours; the torch backend is exact everywhere). ``k_top``:
    length of the top list whose same-class flags are returned (0: none).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(x)
    k_search = max(k_top, k_first_hit, 1)
    _check_k(k_search, n, exclude_self=True)
    used = resolve_backend(backend, device, k_search + 1)
    with full_precision_matmul():
        if used != "torch":
            return _faiss_self(x, labels, k_top, k_search, similarity, backend, device, chunk_size, used)
        first, top = _symmetric_self(x, labels, k_top, similarity, device, block, tile_cols)
    return SelfRanks(first, top, "torch")


# --------------------------------------------------------------------------------------
# from candidate lists (faiss)


def _faiss_self(x, labels, k_top, k_search, similarity, backend, device, chunk_size, used) -> SelfRanks:
    n = len(x)
    first = np.empty(n, dtype=np.int64)
    top = np.zeros((n, k_top), dtype=bool)
    for start, values, index, err in iter_candidates(
        x, x, k_search, similarity=similarity, backend=backend, device=device,
        exclude_self=True, chunk_size=chunk_size, prepared=True,
    ):  # fmt: skip
        rows = np.arange(start, start + len(values))
        first[rows] = _first_hit_in_lists(x, labels, rows, values, index, err, k_search, similarity)
        if k_top:
            _, idx = order_exactly(values, index, rows, k_top, err, x, x, similarity)
            top[rows] = labels[idx] == labels[rows, None]
    return SelfRanks(first, top, used)


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
    """Per query, how many scores of a tile are above ``hi`` and at least ``lo``, along
    the tile's rows or its columns. On CPU in numpy, 128 rows at a time so that each
    piece is compared twice while in cache, with uint16 partial sums (a tile is at most
    65,535 wide); on CUDA in torch."""

    PIECE = 128

    def __init__(self, device: torch.device):
        self.cpu = device.type == "cpu"
        self._buffer = np.empty(0, dtype=bool)

    def _bool(self, width: int) -> np.ndarray:
        size = self.PIECE * width
        if self._buffer.size < size:
            self._buffer = np.empty(size, dtype=bool)
        return self._buffer[:size].reshape(self.PIECE, width)

    def count(self, s: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, axis: int):
        """``(#(s > hi), #(s >= lo))`` along ``axis`` (1: rows, thresholds per row;
        0: columns, thresholds per column), as int64 tensors."""
        shape = (-1, 1) if axis == 1 else (1, -1)
        if not self.cpu:
            return (s > hi.view(shape)).sum(axis), (s >= lo.view(shape)).sum(axis)
        sn = s.numpy()
        lo_n, hi_n = lo.numpy().reshape(shape), hi.numpy().reshape(shape)
        rows, width = sn.shape
        buffer = self._bool(width)
        size = rows if axis == 1 else width
        gt = np.zeros(size, dtype=np.int64)
        ge = np.zeros(size, dtype=np.int64)
        for r0 in range(0, rows, self.PIECE):
            piece = sn[r0 : r0 + self.PIECE]
            buf = buffer[: len(piece)].view(np.uint8)
            lo_p, hi_p = (
                (lo_n[r0 : r0 + self.PIECE], hi_n[r0 : r0 + self.PIECE]) if axis == 1 else (lo_n, hi_n)
            )
            out = slice(r0, r0 + len(piece)) if axis == 1 else slice(None)
            np.greater(piece, hi_p, out=buf.view(bool))
            gt[out] += buf.sum(axis, dtype=np.uint16)
            np.greater_equal(piece, lo_p, out=buf.view(bool))
            ge[out] += buf.sum(axis, dtype=np.uint16)
        return torch.from_numpy(gt), torch.from_numpy(ge)


def _scores(q: torch.Tensor, r: torch.Tensor, q_sq, r_sq, similarity: str, out=None) -> torch.Tensor:
    s = torch.matmul(q, r.T, out=out)
    if similarity == "euclidean":  # -‖q - r‖² = 2 q·r - ‖q‖² - ‖r‖²
        s.mul_(2).sub_(q_sq[:, None]).sub_(r_sq[None, :])
    return s


class _Near:
    """(query position, item position) pairs whose score lies in the query's window
    ``[lo, hi]``, collected tile by tile (positions in the sorted order)."""

    def __init__(self) -> None:
        self.query: list[np.ndarray] = []
        self.item: list[np.ndarray] = []

    def collect(self, s, lo, hi, flagged, row0, col0, axis: int) -> None:
        """Queries along ``axis`` (1: the tile's rows, 0: its columns) flagged as having
        scores in their window: record those pairs."""
        which = torch.nonzero(flagged).flatten()
        if which.numel() == 0:
            return
        if axis == 1:
            sub, lo_w, hi_w = s[which], lo[which, None], hi[which, None]
        else:
            sub, lo_w, hi_w = s[:, which].T, lo[which, None], hi[which, None]
        r, c = torch.nonzero((sub >= lo_w) & (sub <= hi_w), as_tuple=True)
        queries, items = which[r], c
        q0, i0 = (row0, col0) if axis == 1 else (col0, row0)
        self.query.append(queries.cpu().numpy() + q0)
        self.item.append(items.cpu().numpy() + i0)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.query:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self.query), np.concatenate(self.item)


def _symmetric_self(
    x: np.ndarray,
    labels: np.ndarray,
    k_top: int,
    similarity: str,
    device: str,
    block: int,
    tile_cols: int,
) -> tuple[np.ndarray, np.ndarray]:
    dev = torch.device(device)
    n = len(x)
    order = np.argsort(labels, kind="stable")  # position p of the sorted set holds item order[p]
    sorted_labels = labels[order]
    xs = torch.from_numpy(np.ascontiguousarray(x[order])).to(dev)
    sq = (xs * xs).sum(1) if similarity == "euclidean" else None
    lab = torch.from_numpy(sorted_labels).to(dev)
    err = error_bound(x, max_norm(x), similarity)[order]  # per sorted position
    blocks = class_aligned_blocks(sorted_labels, block)
    counter = _Counter(dev)
    near = _Near()

    beta = np.full(n, np.inf)  # +inf: no positive (counts nothing)
    best = np.full(n, n, dtype=np.int64)  # original index of the best positive
    lo = torch.full((n,), math.inf, device=dev)
    hi = torch.full((n,), math.inf, device=dev)
    above = torch.zeros(n, dtype=torch.int64, device=dev)
    top = _RunningTop(n, k_top, dev) if k_top else None
    orig = torch.from_numpy(order).to(dev)

    with torch.no_grad():
        # 1. diagonal blocks: best positive, then the rows of the block
        for b0, b1 in blocks:
            step = max(1, (tile_cols * block) // (b1 - b0))
            for r0 in range(b0, b1, step):
                r1 = min(b1, r0 + step)
                s = _scores(xs[r0:r1], xs[b0:b1], _part(sq, r0, r1), _part(sq, b0, b1), similarity)
                local = torch.arange(r1 - r0, device=dev)
                s[local, local + (r0 - b0)] = -math.inf  # the query itself, by index
                same = lab[r0:r1, None] == lab[None, b0:b1]
                top_positive = torch.where(same, s, -math.inf).max(dim=1).values.cpu().numpy()
                cut = torch.from_numpy(_round_down(top_positive - 2 * err[r0:r1])).to(dev)
                r, c = torch.nonzero(same & (s >= cut[:, None]) & (s > -math.inf), as_tuple=True)
                r, c = r.cpu().numpy(), c.cpu().numpy()
                b, bo = _best_by_float64(x, order[r0:r1], r, order[b0 + c], similarity, n)
                beta[r0:r1], best[r0:r1] = b, bo
                finite = np.isfinite(b)
                lo_r = np.where(finite, _round_down(b - err[r0:r1]), np.inf).astype(np.float32)
                hi_r = np.where(finite, _round_up(b + err[r0:r1]), np.inf).astype(np.float32)
                lo[r0:r1] = torch.from_numpy(lo_r).to(dev)
                hi[r0:r1] = torch.from_numpy(hi_r).to(dev)
                g, ge = counter.count(s, lo[r0:r1], hi[r0:r1], axis=1)
                above[r0:r1] += g.to(dev)
                near.collect(s, lo[r0:r1], hi[r0:r1], ge - g > 1, r0, b0, axis=1)  # 1: the best itself
                if top is not None:
                    top.add(s, r0, orig[b0:b1], axis=1)
        # 2. upper triangle: each block against the columns after it, counted both ways
        for b0, b1 in blocks:
            out = torch.empty((b1 - b0, tile_cols), device=dev)
            for c0 in range(b1, n, tile_cols):
                c1 = min(n, c0 + tile_cols)
                buf = out if c1 - c0 == tile_cols else None
                s = _scores(xs[b0:b1], xs[c0:c1], _part(sq, b0, b1), _part(sq, c0, c1), similarity, out=buf)
                g, ge = counter.count(s, lo[b0:b1], hi[b0:b1], axis=1)
                above[b0:b1] += g.to(dev)
                near.collect(s, lo[b0:b1], hi[b0:b1], ge > g, b0, c0, axis=1)
                g, ge = counter.count(s, lo[c0:c1], hi[c0:c1], axis=0)
                above[c0:c1] += g.to(dev)
                near.collect(s, lo[c0:c1], hi[c0:c1], ge > g, b0, c0, axis=0)
                if top is not None:
                    top.add(s, b0, orig[c0:c1], axis=1)
                    top.add(s, c0, orig[b0:b1], axis=0)

    first = above.cpu().numpy()
    q_pos, item_pos = near.arrays()
    if q_pos.size:  # negatives within ±e of β: float64 decides, ties to the lower index
        negative = sorted_labels[item_pos] != sorted_labels[q_pos]
        q_pos, item_pos = q_pos[negative], item_pos[negative]
        s64 = pair_scores(x, order[q_pos], order[item_pos], similarity)
        wins = (s64 > beta[q_pos]) | ((s64 == beta[q_pos]) & (order[item_pos] < best[q_pos]))
        np.add.at(first, q_pos[wins], 1)
    first[best == n] = n - 1  # no positive at all
    first_hit = np.empty(n, dtype=np.int64)
    first_hit[order] = first
    top_matches = np.zeros((n, k_top), dtype=bool)
    if top is not None:
        neighbours = top.finish(x, order, err, similarity, device)  # (n, k_top), original indices
        top_matches[order] = labels[neighbours] == sorted_labels[:, None]
    return first_hit, top_matches


def _part(sq: torch.Tensor | None, a: int, b: int) -> torch.Tensor | None:
    return None if sq is None else sq[a:b]


class _RunningTop:
    """Running top-``k`` per query (float32 scores, original indices) and the best
    score left out of it (``spill``)."""

    def __init__(self, n: int, k: int, dev: torch.device):
        self.k = k
        self.values = torch.full((n, k), -math.inf, device=dev)
        self.index = torch.full((n, k), -1, dtype=torch.int64, device=dev)
        self.spill = torch.full((n,), -math.inf, device=dev)

    def add(self, s: torch.Tensor, q0: int, other_orig: torch.Tensor, axis: int) -> None:
        """Merge the best ``k`` of each row (``axis=1``) or column (``axis=0``) of tile
        ``s`` into the queries ``q0, q0 + 1, ...``."""
        s = s if axis == 1 else s.T
        width = s.shape[1]
        kk = min(self.k + 1, width)
        v, local = torch.topk(s, kk, dim=1)
        rows = slice(q0, q0 + len(s))
        if kk > self.k:
            self.spill[rows] = torch.maximum(self.spill[rows], v[:, self.k])
            v, local = v[:, : self.k], local[:, : self.k]
        merged_v = torch.cat([self.values[rows], v], dim=1)
        merged_i = torch.cat([self.index[rows], other_orig[local]], dim=1)
        mv, pick = torch.topk(merged_v, min(self.k + 1, merged_v.shape[1]), dim=1)
        if mv.shape[1] > self.k:
            self.spill[rows] = torch.maximum(self.spill[rows], mv[:, self.k])
            mv, pick = mv[:, : self.k], pick[:, : self.k]
        self.values[rows] = mv
        self.index[rows] = merged_i.gather(1, pick)

    def finish(self, x: np.ndarray, order: np.ndarray, err: np.ndarray, similarity: str, device: str):
        """Top-``k`` original indices per sorted position, in the exact order."""
        values = self.values.cpu().numpy()
        index = self.index.cpu().numpy()
        spill = self.spill.cpu().numpy().astype(np.float64)
        kth = values[:, -1].astype(np.float64)
        redo = spill >= kth - 2 * err  # something left out may belong to the exact top-k
        out = np.empty_like(index)
        keep = ~redo
        if keep.any():
            _, idx = order_exactly(
                values[keep], index[keep], order[keep], self.k, err[keep], x, x, similarity
            )
            out[keep] = idx
        rows = np.flatnonzero(redo)
        if rows.size:
            queries = order[rows]
            found = np.empty((rows.size, self.k), dtype=np.int64)
            for start, _, idx in iter_knn(
                x[queries], x, self.k, similarity=similarity, backend="torch", device=device,
                exclude_self=True, prepared=True, query_index=queries,
            ):  # fmt: skip
                found[start : start + len(idx)] = idx
            out[rows] = found
        return out
