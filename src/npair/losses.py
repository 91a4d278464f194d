"""The paper's losses (Sohn 2016, §2) and its baselines, one ``nn.Module`` each.

Every loss has a class attribute ``layout`` naming the batch layout it consumes (see the
samplers in :mod:`npair.samplers`) and ``forward(embeddings (B, D), labels (B,)) -> scalar``.
Layouts are validated from the labels; a malformed batch raises ``ValueError`` saying what is
wrong. Notation: f = anchor embedding, f⁺ = positive, f⁻ / f_j = negatives, s(u, v) = uᵀv.

All embedding losses carry the L2 embedding-norm regulariser (:class:`EmbeddingNormRegularizer`)
as a separate term, configured by ``reg_weight`` (λ) and ``reg_form``. After each forward pass
``loss.last_terms`` holds the detached parts ``{"loss": main term, "reg": regulariser}``
for logging.

Numerics: all softmax-type losses go through ``F.cross_entropy`` / ``F.softplus`` (log-sum-exp
formulations), so unnormalised embeddings with large norms give no inf/NaN in float32 or under
bf16 autocast.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from npair.collectives import gather_no_grad, gather_with_grad

RegForm = Literal["tf_npairs", "mean_squared", "mean_norm", "none"]

__all__ = [
    "ContrastiveLoss",
    "EmbeddingNormRegularizer",
    "NPairMCLoss",
    "NPairOVOLoss",
    "SoftmaxLoss",
    "TripletLoss",
    "TripletNMLoss",
    "TupletLoss",
    "split_class_blocks",
    "split_pairs",
    "split_triplets",
    "split_tuplets",
]


# --------------------------------------------------------------------------------------------
# Regulariser
# --------------------------------------------------------------------------------------------


class EmbeddingNormRegularizer(nn.Module):
    """L2 embedding-norm regulariser R(f) added to the metric loss (paper §2, "regularise the norm").

    Forms, for a batch of embeddings {f_b}_{b=1..B}:

    * ``tf_npairs`` (default, TF ``npairs_loss``): 0.25·λ·(mean_i ‖f_i‖² + mean_i ‖f_i⁺‖²).
      Written here as 0.5·λ·mean_b ‖f_b‖² over the whole batch, which is the same number whenever
      the batch holds as many anchors as positives (N-pair batches with M = 2).
    * ``mean_squared``: λ·mean_b ‖f_b‖² (ronekko's Chainer N-pair; PML ``LpRegularizer(power=2)``).
    * ``mean_norm``: λ·mean_b ‖f_b‖, not squared (Roth et al., Revisiting DML; PML ``LpRegularizer()``).
    * ``none``: 0.
    """

    FORMS = ("tf_npairs", "mean_squared", "mean_norm", "none")

    def __init__(self, weight: float = 0.002, form: RegForm = "tf_npairs") -> None:
        super().__init__()
        if form not in self.FORMS:
            raise ValueError(f"reg_form={form!r} is not one of {self.FORMS}")
        if weight < 0:
            raise ValueError(f"reg_weight={weight} must be >= 0")
        self.weight = float(weight)
        self.form = form

    def forward(self, embeddings: Tensor) -> Tensor:
        if self.form == "none" or self.weight == 0.0:
            return embeddings.new_zeros((), dtype=torch.float32)
        x = embeddings if embeddings.dtype == torch.float64 else embeddings.float()  # bf16/fp16 -> fp32
        sq_norms = x.pow(2).sum(dim=1)
        if self.form == "tf_npairs":
            return 0.5 * self.weight * sq_norms.mean()
        if self.form == "mean_squared":
            return self.weight * sq_norms.mean()
        # mean_norm: sqrt with a floor so the gradient at f = 0 is finite
        return self.weight * sq_norms.clamp_min(1e-12).sqrt().mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight}, form={self.form!r}"


class _EmbeddingLoss(nn.Module):
    """Base: main term (``_loss``) + regulariser, with optional gathering across ranks."""

    layout: str = "any"

    def __init__(
        self,
        reg_weight: float = 0.0,
        reg_form: RegForm = "tf_npairs",
        gather_across_ranks: bool = False,
    ) -> None:
        super().__init__()
        self.regularizer = EmbeddingNormRegularizer(reg_weight, reg_form)
        self.gather_across_ranks = bool(gather_across_ranks)
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.ndim != 2 or labels.ndim != 1 or embeddings.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: expected embeddings (B, D) and labels (B,), got "
                f"{tuple(embeddings.shape)} and {tuple(labels.shape)}"
            )
        if self.gather_across_ranks:
            embeddings = gather_with_grad(embeddings)
            labels = gather_no_grad(labels)
        main = self._loss(embeddings, labels)
        reg = self.regularizer(embeddings)
        self.last_terms = {"loss": main.detach(), "reg": reg.detach()}
        return main + reg

    def _loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Layout parsing / validation
# --------------------------------------------------------------------------------------------


def split_class_blocks(embeddings: Tensor, labels: Tensor, min_per_class: int = 2) -> Tensor:
    """View a "class_blocks" batch ``[c1_1..c1_M, c2_1..c2_M, ...]`` as (N, M, D).

    M is the length of the first run of equal labels. Raises ``ValueError`` unless the batch is
    N >= 2 blocks of exactly M equal labels with N distinct classes and M >= ``min_per_class``.
    """
    lab = labels.detach().to("cpu")
    b = lab.shape[0]
    changes = torch.nonzero(lab[1:] != lab[:-1]).flatten()
    m = int(changes[0]) + 1 if changes.numel() else b
    if m < min_per_class:
        raise ValueError(
            f"class_blocks layout: the first block has {m} image(s) of class {int(lab[0])}; "
            f"need at least {min_per_class} per class "
            f"(use an N-pair sampler with n_per_class >= {min_per_class})"
        )
    if b % m:
        raise ValueError(f"class_blocks layout: batch size {b} is not a multiple of the block size M={m}")
    blocks = lab.view(-1, m)
    bad = torch.nonzero((blocks != blocks[:, :1]).any(dim=1)).flatten()
    if bad.numel():
        k = int(bad[0])
        raise ValueError(
            f"class_blocks layout: block {k} (rows {k * m}..{k * m + m - 1}) mixes labels "
            f"{sorted(set(blocks[k].tolist()))}; expected M={m} images of one class per block"
        )
    block_labels = blocks[:, 0]
    n = block_labels.shape[0]
    if n < 2:
        raise ValueError(f"class_blocks layout: need at least 2 classes per batch, got {n}")
    uniq, counts = torch.unique(block_labels, return_counts=True)
    if uniq.numel() != n:
        dup = int(uniq[counts > 1][0])
        raise ValueError(
            f"class_blocks layout: class {dup} fills {int(counts[counts > 1][0])} blocks; "
            "the N classes of a batch must be distinct"
        )
    return embeddings.view(n, m, -1)


def split_triplets(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split a "triplets" batch ``[a1, p1, n1, a2, p2, n2, ...]`` into anchors, positives, negatives."""
    b = labels.shape[0]
    if b == 0 or b % 3:
        raise ValueError(f"triplets layout: batch size {b} is not a positive multiple of 3")
    lab = labels.detach().to("cpu").view(-1, 3)
    bad_pos = torch.nonzero(lab[:, 0] != lab[:, 1]).flatten()
    if bad_pos.numel():
        t = int(bad_pos[0])
        raise ValueError(
            f"triplets layout: triplet {t} has anchor class {int(lab[t, 0])} "
            f"but positive class {int(lab[t, 1])}"
        )
    bad_neg = torch.nonzero(lab[:, 0] == lab[:, 2]).flatten()
    if bad_neg.numel():
        t = int(bad_neg[0])
        raise ValueError(
            f"triplets layout: triplet {t} has a negative of the anchor's class {int(lab[t, 0])}"
        )
    e = embeddings.view(-1, 3, embeddings.shape[1])
    return e[:, 0], e[:, 1], e[:, 2]


def split_tuplets(embeddings: Tensor, labels: Tensor) -> Tensor:
    """View a "tuplets" batch (N rows of ``[a, p, n_1..n_{N-1}]``, N(N+1) images) as (N, N+1, D).

    Checks that a and p share a class and that each row's N-1 negatives come from N-1 distinct
    classes other than the anchor's.
    """
    b = labels.shape[0]
    n = int(round((math.sqrt(1 + 4 * b) - 1) / 2))
    if n < 2 or n * (n + 1) != b:
        raise ValueError(f"tuplets layout: batch size {b} is not N(N+1) for an integer N >= 2")
    lab = labels.detach().to("cpu").view(n, n + 1)
    for i in range(n):
        row = lab[i].tolist()
        if row[0] != row[1]:
            raise ValueError(f"tuplets layout: row {i} has anchor class {row[0]} but positive class {row[1]}")
        negs = row[2:]
        if row[0] in negs:
            raise ValueError(f"tuplets layout: row {i} has a negative of the anchor's class {row[0]}")
        if len(set(negs)) != len(negs):
            raise ValueError(
                f"tuplets layout: row {i} negatives {negs} are not from {n - 1} distinct classes"
            )
    return embeddings.view(n, n + 1, -1)


def split_pairs(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split a "pairs" batch ``[x1, x1', x2, x2', ...]``; returns (x, x', same_class bool)."""
    b = labels.shape[0]
    if b == 0 or b % 2:
        raise ValueError(f"pairs layout: batch size {b} is not a positive multiple of 2")
    e = embeddings.view(-1, 2, embeddings.shape[1])
    lab = labels.view(-1, 2)
    return e[:, 0], e[:, 1], lab[:, 0] == lab[:, 1]


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise squared Euclidean distance ‖a − b‖² (exact differences, not the expansion)."""
    return (a - b).pow(2).sum(dim=-1)


def _maybe_normalize(x: Tensor, normalize: bool) -> Tensor:
    return F.normalize(x, p=2, dim=-1) if normalize else x


def exact_distances(x: Tensor) -> Tensor:
    """(B, B) Euclidean distances ‖x_i − x_j‖ from float64 differences (no matrix-product expansion).

    Monotone in the squared distance, so it ranks candidates exactly as ‖x_i − x_j‖² does; for ranking only
    (no gradient).
    """
    xd = x.detach().double()
    return torch.cdist(xd, xd, compute_mode="donot_use_mm_for_euclid_dist")


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """Logits s/τ; τ = 1 returns ``logits`` itself, so the default computes exactly what it did without τ."""
    return logits if temperature == 1.0 else logits / temperature


def _check_temperature(temperature: float) -> float:
    value = float(temperature)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0 (1 = the paper's logits)")
    return value


# --------------------------------------------------------------------------------------------
# Pair / triplet baselines
# --------------------------------------------------------------------------------------------


class ContrastiveLoss(_EmbeddingLoss):
    """Contrastive loss (paper Eq. 1; Hadsell et al. 2006), layout "pairs".

        L = mean over pairs (i, j) of
            1{y_i = y_j}·‖f_i − f_j‖²  +  1{y_i ≠ y_j}·max(0, m − ‖f_i − f_j‖)²

    The margin m acts on the (non-squared) Euclidean distance. ``normalize_embeddings`` L2-normalises
    first. The distance uses a 1e-12 floor under the square root so the gradient is finite when f_i = f_j.
    """

    layout = "pairs"

    def __init__(
        self,
        margin: float = 1.0,
        normalize_embeddings: bool = True,
        reg_weight: float = 0.0,
        reg_form: RegForm = "tf_npairs",
    ) -> None:
        super().__init__(reg_weight, reg_form)
        self.margin = float(margin)
        self.normalize_embeddings = bool(normalize_embeddings)

    def _loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        x, x2, same = split_pairs(_maybe_normalize(embeddings, self.normalize_embeddings), labels)
        d2 = _sq_dist(x, x2)
        d = d2.clamp_min(1e-12).sqrt()
        neg = F.relu(self.margin - d).pow(2)
        return torch.where(same, d2, neg).mean()


class TripletLoss(_EmbeddingLoss):
    """Triplet loss (paper Eq. 2; Weinberger & Saul; FaceNet), layout "triplets".

        L = mean over triplets of max(0, ‖f − f⁺‖² − ‖f − f⁻‖² + m)

    Squared Euclidean distances; ``normalize_embeddings`` L2-normalises f, f⁺, f⁻ first (FaceNet).
    """

    layout = "triplets"

    def __init__(
        self,
        margin: float = 0.2,
        normalize_embeddings: bool = True,
        reg_weight: float = 0.0,
        reg_form: RegForm = "tf_npairs",
    ) -> None:
        super().__init__(reg_weight, reg_form)
        self.margin = float(margin)
        self.normalize_embeddings = bool(normalize_embeddings)

    def _loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        a, p, n = split_triplets(_maybe_normalize(embeddings, self.normalize_embeddings), labels)
        return F.relu(_sq_dist(a, p) - _sq_dist(a, n) + self.margin).mean()


class TripletNMLoss(_EmbeddingLoss):
    """Triplet loss with in-batch negative mining ("triplet-nm"), layout "class_blocks".

    Every ordered pair (a, p), a ≠ p, of images of the same class in the batch is an anchor-positive
    pair (FaceNet: "all anchor-positive pairs"). For each, one negative n is chosen among the images
    of the other classes, without gradient, from squared distances d(·,·) = ‖· − ·‖²:

    * ``semihard`` (default, FaceNet §3.2 as in TF ``triplet_semihard_loss``): the closest negative
      that is farther than the positive, argmin_{n: d(a,n) > d(a,p)} d(a,n); if none is, the farthest
      negative argmax_n d(a,n).
    * ``hardest``: argmin_n d(a,n).

    L = mean over (a, p) of max(0, d(a, p) − d(a, n) + m).

    Mining ranks exact distances (:func:`exact_distances`: float64 differences, not the float32 expansion
    ‖x‖² + ‖y‖² − 2xᵀy, which loses every digit of a distance between unnormalised embeddings whose norms
    are large compared with it), so the choice of negative does not change when a common offset, which
    changes no distance, is added to every embedding.
    """

    layout = "class_blocks"

    def __init__(
        self,
        margin: float = 0.2,
        normalize_embeddings: bool = True,
        mining: Literal["semihard", "hardest"] = "semihard",
        reg_weight: float = 0.0,
        reg_form: RegForm = "tf_npairs",
    ) -> None:
        super().__init__(reg_weight, reg_form)
        if mining not in ("semihard", "hardest"):
            raise ValueError(f"mining={mining!r} must be 'semihard' or 'hardest'")
        self.margin = float(margin)
        self.normalize_embeddings = bool(normalize_embeddings)
        self.mining = mining

    def _loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        split_class_blocks(embeddings, labels)  # validation only
        x = _maybe_normalize(embeddings, self.normalize_embeddings)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        a_idx, p_idx = torch.nonzero(same & ~eye, as_tuple=True)
        with torch.no_grad():
            dist = exact_distances(x.detach())
            d_an = dist[a_idx]  # (P, B)
            neg = ~same[a_idx]
            inf = torch.tensor(float("inf"), device=dist.device)
            if self.mining == "hardest":
                n_idx = torch.where(neg, d_an, inf).argmin(dim=1)
            else:
                d_ap = dist[a_idx, p_idx][:, None]
                outside = neg & (d_an > d_ap)
                semi = torch.where(outside, d_an, inf).argmin(dim=1)
                easiest = torch.where(neg, d_an, -inf).argmax(dim=1)
                n_idx = torch.where(outside.any(dim=1), semi, easiest)
        return F.relu(_sq_dist(x[a_idx], x[p_idx]) - _sq_dist(x[a_idx], x[n_idx]) + self.margin).mean()


# --------------------------------------------------------------------------------------------
# The paper's losses
# --------------------------------------------------------------------------------------------


class TupletLoss(_EmbeddingLoss):
    """(N+1)-tuplet loss (paper Eq. 3), built naively: layout "tuplets", N(N+1) embeddings per update.

    Row i of the batch is [f_i, f_i⁺, f⁻_{i,1}, ..., f⁻_{i,N-1}] with its own N-1 negative examples:

        L = (1/N) Σ_i log(1 + Σ_{k=1}^{N-1} exp((f_iᵀf⁻_{i,k} − f_iᵀf_i⁺)/τ))
          = (1/N) Σ_i CE(logits [f_iᵀf_i⁺, f_iᵀf⁻_{i,1}, ...]/τ, target 0)

    At N = 2 this is log(1 + exp(fᵀf⁻ − fᵀf⁺)). Unnormalised inner products + L2 regulariser, as
    N-pair; ``temperature`` τ (default 1, the paper's logits) divides the logits, as in :class:`NPairMCLoss`.
    """

    layout = "tuplets"

    def __init__(
        self, reg_weight: float = 0.002, reg_form: RegForm = "tf_npairs", temperature: float = 1.0
    ) -> None:
        super().__init__(reg_weight, reg_form)
        self.temperature = _check_temperature(temperature)

    def _loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        rows = split_tuplets(embeddings, labels)  # (N, N+1, D)
        logits = torch.einsum("nd,nkd->nk", rows[:, 0], rows[:, 1:])  # (N, N): col 0 = positive
        target = torch.zeros(rows.shape[0], dtype=torch.long, device=embeddings.device)
        return F.cross_entropy(_scaled(logits, self.temperature), target)


def _npair_logits(embeddings: Tensor, labels: Tensor) -> Tensor:
    """S[m, i, j] = f_iᵀ f_{j,m}: anchors (image 1 of block i) × positives (image m+1 of block j).

    Shape (M-1, N, N); the diagonal S[m, i, i] holds the positive pairs.
    """
    blocks = split_class_blocks(embeddings, labels)  # (N, M, D)
    return torch.einsum("id,jmd->mij", blocks[:, 0], blocks[:, 1:])


def _all_anchor_npair_loss(embeddings: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Every image an anchor, every other-class image a negative (:class:`NPairMCLoss`, ``anchors="all"``).

    For each ordered same-class pair (a, p), a ≠ p, with s = xᵀy/τ and Neg(a) = the images of other classes:

        ℓ(a, p) = log(1 + Σ_{n ∈ Neg(a)} exp(s_an − s_ap)) = softplus(logsumexp_{n ∈ Neg(a)} s_an − s_ap)

    and the loss is the mean of ℓ over all such pairs (2N pairs at M = 2).
    """
    split_class_blocks(embeddings, labels)  # validation only
    s = _scaled(embeddings @ embeddings.T, temperature)
    same = labels[:, None] == labels[None, :]
    neg_lse = torch.logsumexp(s.masked_fill(same, -math.inf), dim=1)  # (B,): every anchor has negatives
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    a_idx, p_idx = torch.nonzero(same & ~eye, as_tuple=True)
    return F.softplus(neg_lse[a_idx] - s[a_idx, p_idx]).mean()


class NPairMCLoss(_EmbeddingLoss):
    """Multi-class N-pair loss, N-pair-mc (paper Eq. 4), layout "class_blocks".

    For N pairs (f_i, f_i⁺) of N distinct classes, unnormalised inner products:

        L = (1/N) Σ_i log(1 + Σ_{j≠i} exp(f_iᵀf_j⁺ − f_iᵀf_i⁺))
          = (1/N) Σ_i CE(row i of S = F·F⁺ᵀ, target i)          (TF ``npairs_loss``)

    plus the L2 embedding-norm regulariser (default 0.25·λ·(mean‖f‖² + mean‖f⁺‖²), λ = 0.002).

    N×M generalisation (M images per class): anchor f_i = image 1 of block i; each other image
    m = 2..M of the blocks in turn plays the positive, giving M-1 N-pair batches {(f_i, f_{i,m})}_i
    that share anchors; the loss is the mean of the paper's loss over them:

        L = 1/(M-1) Σ_{m=2}^{M} (1/N) Σ_i log(1 + Σ_{j≠i} exp(f_iᵀf_{j,m} − f_iᵀf_{i,m}))

    Each term is an N-way softmax over N distinct classes, so N keeps the paper's meaning;
    at M = 2 it is exactly Eq. 4.

    Options (each default is the paper's form):

    * ``temperature`` τ: every logit f_iᵀf_j⁺ becomes f_iᵀf_j⁺/τ (default 1: the paper's logits).
    * ``normalize_embeddings=True``: L2-normalise first, so the logits are cosines/τ. With a temperature
      this is the single-positive form of what later papers call InfoNCE (van den Oord et al. 2018,
      "Representation Learning with Contrastive Predictive Coding"), NT-Xent (Chen et al. 2020, SimCLR) and
      the supervised contrastive loss (Khosla et al. 2020): each anchor's own positive against the
      positives of the other classes, as a softmax over cosine/τ. pytorch-metric-learning's ``NPairsLoss``
      default is this form at τ = 1 (docs/paper.md §7).
    * ``anchors="all"``: every image of the batch is an anchor and every image of another class a negative,
      the form of Roth et al.'s ``npair`` criterion (docs/metrics.md §4.7):
      L = mean over ordered same-class pairs (a, p), a ≠ p, of log(1 + Σ_{n: y_n ≠ y_a} exp(s_an − s_ap)),
      s = xᵀy/τ. At M = 2 this has 2N anchors with 2N−2 negatives each, against the paper's N anchors with
      N−1 negatives. Normalised, it is pytorch-metric-learning's ``NTXentLoss(temperature=τ)`` for any M
      and ``SupConLoss(temperature=τ)`` at M = 2 (tested). ``"first"`` (default) is the paper's anchors.
    * ``symmetric=True`` (``anchors="first"`` only) also uses the positives as anchors (rows f_{j,m},
      columns the anchors f_i) and returns the mean of the two directions; ``False`` is the paper / TF form.
    * ``gather_across_ranks=True`` computes the loss over the batches of all ranks (see
      :mod:`npair.collectives`).
    """

    layout = "class_blocks"
    ANCHORS = ("first", "all")

    def __init__(
        self,
        reg_weight: float = 0.002,
        reg_form: RegForm = "tf_npairs",
        symmetric: bool = False,
        gather_across_ranks: bool = False,
        normalize_embeddings: bool = False,
        temperature: float = 1.0,
        anchors: Literal["first", "all"] = "first",
    ) -> None:
        super().__init__(reg_weight, reg_form, gather_across_ranks)
        if anchors not in self.ANCHORS:
            raise ValueError(f"anchors={anchors!r} must be one of {self.ANCHORS} (first: the paper's)")
        if anchors == "all" and symmetric:
            raise ValueError(
                "symmetric=true applies to anchors=first only: with anchors=all every image is "
                "already an anchor; set loss.symmetric=false"
            )
        self.symmetric = bool(symmetric)
        self.normalize_embeddings = bool(normalize_embeddings)
        self.temperature = _check_temperature(temperature)
        self.anchors = anchors

    def _loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.normalize_embeddings:
            embeddings = F.normalize(embeddings, dim=1)
        if self.anchors == "all":
            return _all_anchor_npair_loss(embeddings, labels, self.temperature)
        s = _scaled(_npair_logits(embeddings, labels), self.temperature)  # (M-1, N, N)
        m1, n, _ = s.shape
        target = torch.arange(n, device=embeddings.device).repeat(m1)
        loss = F.cross_entropy(s.reshape(m1 * n, n), target)
        if self.symmetric:
            loss = 0.5 * (loss + F.cross_entropy(s.transpose(1, 2).reshape(m1 * n, n), target))
        return loss

    def extra_repr(self) -> str:
        return (
            f"anchors={self.anchors!r}, temperature={self.temperature}, "
            f"normalize_embeddings={self.normalize_embeddings}, symmetric={self.symmetric}"
        )


class NPairOVOLoss(_EmbeddingLoss):
    """One-vs-one N-pair loss, N-pair-ovo (paper Eq. 5), layout "class_blocks".

        L = (1/N) Σ_i Σ_{j≠i} log(1 + exp((f_iᵀf_j⁺ − f_iᵀf_i⁺)/τ))

    (a sum of N-1 binary logistic terms per anchor instead of one N-way softmax), plus the L2
    regulariser. N×M: the same generalisation as :class:`NPairMCLoss` (mean over positive slots
    m = 2..M with anchor = image 1), exact at M = 2. ``temperature`` τ (default 1, the paper's logits) and
    ``normalize_embeddings`` (default false, the paper's inner products) as in :class:`NPairMCLoss`.
    """

    layout = "class_blocks"

    def __init__(
        self,
        reg_weight: float = 0.002,
        reg_form: RegForm = "tf_npairs",
        gather_across_ranks: bool = False,
        normalize_embeddings: bool = False,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(reg_weight, reg_form, gather_across_ranks)
        self.normalize_embeddings = bool(normalize_embeddings)
        self.temperature = _check_temperature(temperature)

    def _loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.normalize_embeddings:
            embeddings = F.normalize(embeddings, dim=1)
        s = _npair_logits(embeddings, labels)  # (M-1, N, N)
        if s.dtype in (torch.bfloat16, torch.float16):
            s = s.float()  # softplus of logit differences in fp32 under autocast
        s = _scaled(s, self.temperature)
        n = s.shape[-1]
        margin = s - torch.diagonal(s, dim1=1, dim2=2)[..., None]  # (f_iᵀf_j⁺ − f_iᵀf_i⁺)/τ
        off = ~torch.eye(n, dtype=torch.bool, device=s.device)
        return (F.softplus(margin) * off).sum(dim=2).mean()


# --------------------------------------------------------------------------------------------
# Softmax baseline
# --------------------------------------------------------------------------------------------


class SoftmaxLoss(_EmbeddingLoss):
    """Softmax classifier baseline (paper §4, "softmax" columns), layout "any".

        L = mean_b CE(W f_b + c, y_b)

    A linear classifier over the training classes on top of the embedding; the embedding f (the
    classifier's input features) is what kNN / retrieval use. :meth:`logits` gives the classifier's
    own scores for the † accuracy. ``num_classes`` is filled in by the training loop; labels must be
    0..num_classes-1.
    """

    layout = "any"

    def __init__(
        self,
        num_classes: int | None = None,
        embedding_dim: int | None = None,
        bias: bool = True,
        reg_weight: float = 0.0,
        reg_form: RegForm = "tf_npairs",
    ) -> None:
        super().__init__(reg_weight, reg_form)
        if num_classes is None or int(num_classes) < 2:
            raise ValueError(
                f"SoftmaxLoss: num_classes={num_classes!r}; the training loop must set loss.num_classes "
                "to the number of training classes (>= 2)"
            )
        if embedding_dim is None or int(embedding_dim) < 1:
            raise ValueError(f"SoftmaxLoss: embedding_dim={embedding_dim!r} must be the embedding size (> 0)")
        self.num_classes = int(num_classes)
        self.classifier = nn.Linear(int(embedding_dim), self.num_classes, bias=bias)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Class scores W f + c, shape (B, num_classes)."""
        return self.classifier(embeddings)

    def _loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"SoftmaxLoss: labels span {lo}..{hi} but num_classes={self.num_classes}")
        return F.cross_entropy(self.logits(embeddings), labels)
