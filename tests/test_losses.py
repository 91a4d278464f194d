"""Losses against independent float64 references written as plain loops over the formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from npair.losses import (
    ContrastiveLoss,
    EmbeddingNormRegularizer,
    NPairMCLoss,
    NPairOVOLoss,
    SoftmaxLoss,
    TripletLoss,
    TripletNMLoss,
    TupletLoss,
)

LAM = 0.002


# ------------------------------------------------------------------------------------------
# fixtures: batches in each layout
# ------------------------------------------------------------------------------------------


def class_block_batch(n: int, m: int, d: int, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    classes = torch.randperm(50, generator=g)[:n]
    labels = classes.repeat_interleave(m)
    emb = (scale * torch.randn(n * m, d, generator=g)).double()
    return emb, labels


def triplet_batch(t: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = []
    for i in range(t):
        labels += [i, i, (i + 1 + int(torch.randint(5, (1,), generator=g))) % 100 + 100]
    return torch.randn(3 * t, d, generator=g).double(), torch.tensor(labels)


def tuplet_batch(n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    classes = (torch.randperm(30, generator=g)[:n] + 7).tolist()
    labels = []
    for i, c in enumerate(classes):
        labels += [c, c] + [o for j, o in enumerate(classes) if j != i]
    return torch.randn(n * (n + 1), d, generator=g).double(), torch.tensor(labels)


def pair_batch(p: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = []
    for i in range(p):
        labels += [i, i] if i % 2 == 0 else [i, i + 1000]
    return torch.randn(2 * p, d, generator=g).double(), torch.tensor(labels)


# ------------------------------------------------------------------------------------------
# independent references (plain loops, float64)
# ------------------------------------------------------------------------------------------


def dot(u, v):
    return sum(u[k] * v[k] for k in range(len(u)))


def sqdist(u, v):
    return sum((u[k] - v[k]) ** 2 for k in range(len(u)))


def normalized(u):
    return u / torch.sqrt(dot(u, u))


def ref_tf_reg(emb, m, lam=LAM):
    """TF npairs_loss: 0.25·λ·(mean‖anchor‖² + mean‖positive‖²) with anchors/positives = image 1/2 of
    each block (M = 2)."""
    assert m == 2
    anchors, positives = emb[0::2], emb[1::2]
    ma = sum(dot(a, a) for a in anchors) / len(anchors)
    mp = sum(dot(p, p) for p in positives) / len(positives)
    return 0.25 * lam * (ma + mp)


def ref_npair_mc(emb, m, symmetric=False, tau=1.0):
    """Paper Eq. 4 per positive slot, averaged over slots 2..M (the documented N×M form); logits / τ."""
    n = emb.shape[0] // m
    total = 0.0
    for slot in range(1, m):
        f = [emb[i * m] for i in range(n)]
        fp = [emb[i * m + slot] for i in range(n)]
        per_dir = []
        dirs = [(f, fp), (fp, f)] if symmetric else [(f, fp)]
        for A, P in dirs:
            s = 0.0
            for i in range(n):
                inner = 0.0
                for j in range(n):
                    if j != i:
                        inner = inner + torch.exp((dot(A[i], P[j]) - dot(A[i], P[i])) / tau)
                s = s + torch.log(1 + inner)
            per_dir.append(s / n)
        total = total + sum(per_dir) / len(per_dir)
    return total / (m - 1)


def ref_npair_ovo(emb, m, tau=1.0):
    n = emb.shape[0] // m
    total = 0.0
    for slot in range(1, m):
        s = 0.0
        for i in range(n):
            for j in range(n):
                if j != i:
                    fi, fjp, fip = emb[i * m], emb[j * m + slot], emb[i * m + slot]
                    s = s + torch.log(1 + torch.exp((dot(fi, fjp) - dot(fi, fip)) / tau))
        total = total + s / n
    return total / (m - 1)


def ref_tuplet(emb, n, tau=1.0):
    s = 0.0
    for i in range(n):
        row = emb[i * (n + 1) : (i + 1) * (n + 1)]
        a, p, negs = row[0], row[1], row[2:]
        s = s + torch.log(1 + sum(torch.exp((dot(a, x) - dot(a, p)) / tau) for x in negs))
    return s / n


def ref_npair_all_anchors(emb, labels, tau=1.0, normalize=False):
    """Every image an anchor: mean over ordered same-class pairs (a, p), a ≠ p, of
    log(1 + Σ_{n of another class} exp((x_aᵀx_n − x_aᵀx_p)/τ))."""
    x = [normalized(e) if normalize else e for e in emb]
    lab = labels.tolist()
    terms = []
    for a in range(len(x)):
        for p in range(len(x)):
            if a == p or lab[a] != lab[p]:
                continue
            negatives = [k for k in range(len(x)) if lab[k] != lab[a]]
            inner = sum(torch.exp((dot(x[a], x[k]) - dot(x[a], x[p])) / tau) for k in negatives)
            terms.append(torch.log(1 + inner))
    return sum(terms) / len(terms)


def ref_triplet(emb, margin, normalize):
    t = emb.shape[0] // 3
    s = 0.0
    for i in range(t):
        a, p, n = emb[3 * i], emb[3 * i + 1], emb[3 * i + 2]
        if normalize:
            a, p, n = normalized(a), normalized(p), normalized(n)
        s = s + torch.clamp(sqdist(a, p) - sqdist(a, n) + margin, min=0)
    return s / t


def ref_contrastive(emb, labels, margin, normalize):
    p = emb.shape[0] // 2
    s = 0.0
    for i in range(p):
        u, v = emb[2 * i], emb[2 * i + 1]
        if normalize:
            u, v = normalized(u), normalized(v)
        if labels[2 * i] == labels[2 * i + 1]:
            s = s + sqdist(u, v)
        else:
            s = s + torch.clamp(margin - torch.sqrt(sqdist(u, v)), min=0) ** 2
    return s / p


def ref_triplet_nm(emb, labels, margin, mining, normalize=True):
    x = [normalized(e) if normalize else e for e in emb]
    b = len(x)
    lab = labels.tolist()
    terms = []
    for a in range(b):
        for p in range(b):
            if a == p or lab[a] != lab[p]:
                continue
            d_ap = sqdist(x[a], x[p])
            negs = [(float(sqdist(x[a], x[k]).detach()), k) for k in range(b) if lab[k] != lab[a]]
            if mining == "hardest":
                k = min(negs)[1]
            else:
                farther = [dn for dn in negs if dn[0] > float(d_ap.detach())]
                k = min(farther)[1] if farther else max(negs)[1]
            terms.append(torch.clamp(d_ap - sqdist(x[a], x[k]) + margin, min=0))
    return sum(terms) / len(terms)


def value_and_grad(fn, emb):
    e = emb.clone().requires_grad_(True)
    out = fn(e)
    (g,) = torch.autograd.grad(out, e)
    return out.detach(), g


def assert_matches(loss_fn, ref_fn, emb, atol=1e-10):
    v, g = value_and_grad(loss_fn, emb)
    rv, rg = value_and_grad(ref_fn, emb)
    torch.testing.assert_close(v, rv, atol=atol, rtol=1e-9)
    torch.testing.assert_close(g, rg, atol=atol, rtol=1e-9)


# ------------------------------------------------------------------------------------------
# values and gradients vs the references
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("symmetric", [False, True])
def test_npair_mc_matches_reference(m, symmetric):
    emb, labels = class_block_batch(n=5, m=m, d=4, seed=m)
    loss = NPairMCLoss(reg_weight=0.0, symmetric=symmetric)
    assert_matches(lambda e: loss(e, labels), lambda e: ref_npair_mc(e, m, symmetric), emb)


def test_npair_mc_normalized_matches_reference_on_unit_vectors():
    emb, labels = class_block_batch(n=5, m=2, d=4, seed=3, scale=5.0)
    loss = NPairMCLoss(reg_weight=0.0, normalize_embeddings=True)
    assert_matches(lambda e: loss(e, labels), lambda e: ref_npair_mc(e / e.norm(dim=1, keepdim=True), 2), emb)


def test_npair_mc_with_tf_regulariser_matches_reference():
    emb, labels = class_block_batch(n=6, m=2, d=5, seed=1, scale=3.0)
    loss = NPairMCLoss(reg_weight=LAM, reg_form="tf_npairs")
    assert_matches(lambda e: loss(e, labels), lambda e: ref_npair_mc(e, 2) + ref_tf_reg(e, 2), emb)
    assert float(loss.last_terms["reg"]) > 0


@pytest.mark.parametrize("m", [2, 3])
def test_npair_ovo_matches_reference(m):
    emb, labels = class_block_batch(n=5, m=m, d=4, seed=10 + m)
    loss = NPairOVOLoss(reg_weight=0.0)
    assert_matches(lambda e: loss(e, labels), lambda e: ref_npair_ovo(e, m), emb)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_tuplet_matches_reference(n):
    emb, labels = tuplet_batch(n, d=4, seed=n)
    loss = TupletLoss(reg_weight=0.0)
    assert_matches(lambda e: loss(e, labels), lambda e: ref_tuplet(e, n), emb)


@pytest.mark.parametrize("normalize", [False, True])
def test_triplet_matches_reference(normalize):
    emb, labels = triplet_batch(6, d=4, seed=3)
    loss = TripletLoss(margin=0.7, normalize_embeddings=normalize)
    assert_matches(lambda e: loss(e, labels), lambda e: ref_triplet(e, 0.7, normalize), emb)


@pytest.mark.parametrize("normalize", [False, True])
def test_contrastive_matches_reference(normalize):
    emb, labels = pair_batch(8, d=4, seed=4)
    margin = 1.0 if normalize else 3.0  # keep some negative pairs inside the margin
    loss = ContrastiveLoss(margin=margin, normalize_embeddings=normalize)
    assert_matches(lambda e: loss(e, labels), lambda e: ref_contrastive(e, labels, margin, normalize), emb)


@pytest.mark.parametrize("mining", ["semihard", "hardest"])
@pytest.mark.parametrize("normalize", [False, True])
def test_triplet_nm_matches_reference(mining, normalize):
    emb, labels = class_block_batch(n=4, m=3, d=3, seed=5)
    loss = TripletNMLoss(margin=0.5, mining=mining, normalize_embeddings=normalize)
    assert_matches(
        lambda e: loss(e, labels), lambda e: ref_triplet_nm(e, labels, 0.5, mining, normalize), emb
    )


def test_triplet_nm_semihard_fallback_uses_farthest_negative():
    # anchor 0 / positive 1 far apart; both negatives closer than the positive -> farthest negative
    emb = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    loss = TripletNMLoss(margin=0.0, normalize_embeddings=False, mining="semihard")
    # pairs: (0,1): d_ap=100, negs d=1,4 -> fallback farthest (4): 96;
    # (1,0): d_ap=100, negs 81,64 -> fallback 81: 19;
    # (2,3): d_ap=1, negs to 0:4, to 1:81 -> semi-hard 4: 0; (3,2): d_ap=1, negs 4, 64 -> 4: 0
    torch.testing.assert_close(loss(emb, labels), torch.tensor((96 + 19) / 4, dtype=torch.float64))


def test_softmax_matches_reference():
    torch.manual_seed(0)
    loss = SoftmaxLoss(num_classes=7, embedding_dim=4).double()
    emb = torch.randn(9, 4, dtype=torch.float64)
    labels = torch.randint(7, (9,))
    w, c = loss.classifier.weight.detach(), loss.classifier.bias.detach()

    def ref(e):
        s = 0.0
        for b in range(len(e)):
            z = [dot(w[k], e[b]) + c[k] for k in range(7)]
            s = s - (z[int(labels[b])] - torch.log(sum(torch.exp(zk) for zk in z)))
        return s / len(e)

    assert_matches(lambda e: loss(e, labels), ref, emb)
    torch.testing.assert_close(loss.logits(emb), emb @ w.T + c)
    assert {n for n, _ in loss.named_parameters()} == {"classifier.weight", "classifier.bias"}


def test_softmax_requires_num_classes_and_valid_labels():
    with pytest.raises(ValueError, match="num_classes"):
        SoftmaxLoss(num_classes=None, embedding_dim=4)
    loss = SoftmaxLoss(num_classes=3, embedding_dim=4)
    with pytest.raises(ValueError, match="num_classes=3"):
        loss(torch.randn(2, 4), torch.tensor([0, 3]))


@pytest.mark.parametrize("form", ["tf_npairs", "mean_squared", "mean_norm", "none"])
def test_regulariser_forms(form):
    emb, _ = class_block_batch(n=4, m=2, d=3, seed=7, scale=2.0)
    reg = EmbeddingNormRegularizer(weight=0.3, form=form)

    def ref(e):
        sq = [dot(x, x) for x in e]
        if form == "tf_npairs":
            return ref_tf_reg(e, 2, lam=0.3)
        if form == "mean_squared":
            return 0.3 * sum(sq) / len(sq)
        if form == "mean_norm":
            return 0.3 * sum(torch.sqrt(s) for s in sq) / len(sq)
        return torch.zeros((), dtype=torch.float64)

    if form == "none":
        assert float(reg(emb)) == 0.0
        return
    v, g = value_and_grad(lambda e: reg(e).double(), emb)
    rv, rg = value_and_grad(ref, emb)
    torch.testing.assert_close(v, rv)
    torch.testing.assert_close(g, rg)


def test_regulariser_rejects_unknown_form():
    with pytest.raises(ValueError, match="reg_form"):
        EmbeddingNormRegularizer(0.1, "l3")


# ------------------------------------------------------------------------------------------
# gradcheck (float64) where the loss is smooth at the sampled point
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: (NPairMCLoss(symmetric=True), *class_block_batch(4, 3, 3, seed=1)),
        lambda: (NPairMCLoss(), *class_block_batch(4, 2, 3, seed=2)),
        lambda: (NPairOVOLoss(reg_form="mean_norm"), *class_block_batch(4, 2, 3, seed=3)),
        lambda: (TupletLoss(), *tuplet_batch(3, 3, seed=4)),
        lambda: (TripletLoss(margin=5.0, normalize_embeddings=False), *triplet_batch(4, 3, seed=5)),
        lambda: (TripletLoss(margin=1.0), *triplet_batch(4, 3, seed=5)),
        lambda: (TripletNMLoss(margin=2.0), *class_block_batch(3, 2, 3, seed=6)),
        lambda: (ContrastiveLoss(margin=1.5), *pair_batch(4, 3, seed=7)),
    ],
)
def test_gradcheck(make):
    loss, emb, labels = make()
    e = emb.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (e,), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------------------------------
# reductions and equivalences
# ------------------------------------------------------------------------------------------


def test_npair_mc_and_tuplet_at_n2_reduce_to_smooth_triplet():
    g = torch.Generator().manual_seed(11)
    f, fp, fn = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(3))
    expected = torch.log(1 + torch.exp(f @ fn - f @ fp))
    # tuplet, N = 2: one row [f, f⁺, f⁻] is 2 rows of 3; use a row and its mirror so both terms are known
    g2 = torch.randn(5, generator=g, dtype=torch.float64)
    g2p = torch.randn(5, generator=g, dtype=torch.float64)
    g2n = torch.randn(5, generator=g, dtype=torch.float64)
    tup = torch.stack([f, fp, fn, g2, g2p, g2n])
    tup_loss = TupletLoss(reg_weight=0.0)(tup, torch.tensor([0, 0, 1, 1, 1, 0]))
    expected2 = torch.log(1 + torch.exp(g2 @ g2n - g2 @ g2p))
    torch.testing.assert_close(tup_loss, (expected + expected2) / 2)
    # N-pair-mc, N = 2: pairs (f, f⁺) and (g2, fn); the other pair's positive is each anchor's
    # only negative, so anchor f's term is log(1 + exp(f·fn − f·f⁺)) = expected
    batch = torch.stack([f, fp, g2, fn])
    mc = NPairMCLoss(reg_weight=0.0)(batch, torch.tensor([3, 3, 8, 8]))
    expected_g = torch.log(1 + torch.exp(g2 @ fp - g2 @ fn))
    torch.testing.assert_close(mc, (expected + expected_g) / 2)


def test_nxm_at_m2_equals_npair_mc_and_m3_is_mean_of_slot_losses():
    emb, labels = class_block_batch(n=6, m=3, d=4, seed=12)
    loss = NPairMCLoss(reg_weight=0.0)
    blocks = emb.view(6, 3, 4)
    lab2 = labels.view(6, 3)[:, :2].reshape(-1)
    slot_losses = [loss(blocks[:, [0, k]].reshape(-1, 4), lab2) for k in (1, 2)]
    torch.testing.assert_close(loss(emb, labels), sum(slot_losses) / 2)
    # and the M = 2 batch is the paper's formula itself
    torch.testing.assert_close(slot_losses[0], ref_npair_mc(blocks[:, :2].reshape(-1, 4), 2))


def test_npair_mc_equals_pytorch_metric_learning_dot_product_form():
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.losses import NPairsLoss
    from pytorch_metric_learning.regularizers import LpRegularizer

    for seed in range(5):
        emb, labels = class_block_batch(n=8, m=2, d=6, seed=100 + seed, scale=2.0)
        emb = emb.float()
        ours_loss = NPairMCLoss(reg_weight=LAM, reg_form="tf_npairs")
        pml_plain = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))
        # TF form 0.25·λ·(mean‖f‖²+mean‖f⁺‖²) = 0.5·λ·mean over the batch of ‖x‖²
        pml_reg = NPairsLoss(
            distance=DotProductSimilarity(normalize_embeddings=False),
            embedding_regularizer=LpRegularizer(power=2),
            embedding_reg_weight=0.5 * LAM,
        )
        e1 = emb.clone().requires_grad_(True)
        e2 = emb.clone().requires_grad_(True)
        ours = ours_loss(e1, labels)
        theirs = pml_reg(e2, labels)
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(ours_loss.last_terms["loss"], pml_plain(emb, labels))
        ours.backward()
        theirs.backward()
        torch.testing.assert_close(e1.grad, e2.grad)


@pytest.mark.parametrize("form,power,factor", [("mean_squared", 2, 1.0), ("mean_norm", 1, 1.0)])
def test_regulariser_forms_equal_pml_lp_regularizer(form, power, factor):
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.losses import NPairsLoss
    from pytorch_metric_learning.regularizers import LpRegularizer

    emb, labels = class_block_batch(n=5, m=2, d=4, seed=21, scale=2.0)
    emb = emb.float()
    ours = NPairMCLoss(reg_weight=0.02, reg_form=form)(emb, labels)
    theirs = NPairsLoss(
        distance=DotProductSimilarity(normalize_embeddings=False),
        embedding_regularizer=LpRegularizer(power=power),
        embedding_reg_weight=0.02 * factor,
    )(emb, labels)
    torch.testing.assert_close(ours, theirs)


# ------------------------------------------------------------------------------------------
# loss options: temperature, normalised forms, all anchors, exact-distance mining
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("normalize", [False, True])
def test_npair_mc_temperature_matches_reference(m, tau, normalize):
    emb, labels = class_block_batch(n=5, m=m, d=4, seed=30 + m, scale=2.0)
    loss = NPairMCLoss(reg_weight=0.0, temperature=tau, normalize_embeddings=normalize)

    def ref(e):
        return ref_npair_mc(e / e.norm(dim=1, keepdim=True) if normalize else e, m, tau=tau)

    assert_matches(lambda e: loss(e, labels), ref, emb)


def test_npair_mc_temperature_with_symmetric_and_regulariser_matches_reference():
    emb, labels = class_block_batch(n=6, m=2, d=5, seed=41, scale=3.0)
    loss = NPairMCLoss(reg_weight=LAM, temperature=0.3, symmetric=True)

    def ref(e):
        return ref_npair_mc(e, 2, symmetric=True, tau=0.3) + ref_tf_reg(e, 2)

    assert_matches(lambda e: loss(e, labels), ref, emb)


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("tau,normalize", [(1.0, False), (0.2, False), (0.05, True), (1.0, True)])
def test_npair_mc_all_anchors_matches_reference(m, tau, normalize):
    scale = 1.0 if normalize else tau  # logits of O(1)
    emb, labels = class_block_batch(n=4, m=m, d=4, seed=50 + m, scale=scale)
    loss = NPairMCLoss(reg_weight=0.0, anchors="all", temperature=tau, normalize_embeddings=normalize)
    assert_matches(lambda e: loss(e, labels), lambda e: ref_npair_all_anchors(e, labels, tau, normalize), emb)


def test_npair_mc_all_anchors_counts_every_image_as_anchor():
    # M = 2: 2N anchors with 2N − 2 negatives each; the paper's form has N anchors with N − 1 negatives.
    emb, labels = class_block_batch(n=5, m=2, d=3, seed=55)
    e = emb.clone().requires_grad_(True)
    NPairMCLoss(reg_weight=0.0, anchors="all")(e, labels).backward()
    assert bool((e.grad.abs().sum(dim=1) > 0).all())
    first = emb.clone().requires_grad_(True)
    NPairMCLoss(reg_weight=0.0)(first, labels).backward()
    torch.testing.assert_close(NPairMCLoss(reg_weight=0.0)(emb, labels), ref_npair_mc(emb, 2))
    assert not torch.allclose(NPairMCLoss(reg_weight=0.0, anchors="all")(emb, labels), ref_npair_mc(emb, 2))


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("tau,normalize", [(0.25, False), (0.1, True)])
def test_npair_ovo_temperature_and_normalised_form_match_reference(m, tau, normalize):
    scale = 2.0 if normalize else 0.5  # logits of O(1)
    emb, labels = class_block_batch(n=5, m=m, d=4, seed=60 + m, scale=scale)
    loss = NPairOVOLoss(reg_weight=0.0, temperature=tau, normalize_embeddings=normalize)

    def ref(e):
        return ref_npair_ovo(e / e.norm(dim=1, keepdim=True) if normalize else e, m, tau=tau)

    assert_matches(lambda e: loss(e, labels), ref, emb)


@pytest.mark.parametrize("n", [2, 4])
def test_tuplet_temperature_matches_reference(n):
    emb, labels = tuplet_batch(n, d=4, seed=70 + n)
    loss = TupletLoss(reg_weight=0.0, temperature=0.2)
    assert_matches(lambda e: loss(e, labels), lambda e: ref_tuplet(e, n, tau=0.2), emb)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (NPairMCLoss(temperature=0.3, normalize_embeddings=True), *class_block_batch(4, 2, 3, 80)),
        lambda: (NPairMCLoss(anchors="all", temperature=0.5), *class_block_batch(3, 3, 3, seed=81)),
        lambda: (
            NPairMCLoss(anchors="all", temperature=0.2, normalize_embeddings=True),
            *class_block_batch(4, 2, 3, seed=82),
        ),
        lambda: (NPairOVOLoss(temperature=0.4, normalize_embeddings=True), *class_block_batch(4, 2, 3, 83)),
        lambda: (TupletLoss(temperature=0.5), *tuplet_batch(3, 3, seed=84)),
    ],
)
def test_gradcheck_of_the_loss_options(make):
    loss, emb, labels = make()
    e = emb.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (e,), eps=1e-6, atol=1e-5)


def _value_and_grad_pair(ours_fn, theirs_fn, emb):
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    ours, theirs = ours_fn(e1), theirs_fn(e2)
    ours.backward()
    theirs.backward()
    return ours, theirs, e1.grad, e2.grad


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5])
def test_normalised_all_anchors_equals_pytorch_metric_learning_ntxent(m, tau):
    from pytorch_metric_learning.losses import NTXentLoss

    emb, labels = class_block_batch(n=6, m=m, d=8, seed=90 + m, scale=2.0)
    ours_loss = NPairMCLoss(reg_weight=0.0, anchors="all", normalize_embeddings=True, temperature=tau)
    ours, theirs, g1, g2 = _value_and_grad_pair(
        lambda e: ours_loss(e, labels), lambda e: NTXentLoss(temperature=tau)(e, labels), emb
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_normalised_all_anchors_at_m2_equals_pytorch_metric_learning_supcon(tau):
    from pytorch_metric_learning.losses import SupConLoss

    emb, labels = class_block_batch(n=7, m=2, d=8, seed=97, scale=3.0)
    ours_loss = NPairMCLoss(reg_weight=0.0, anchors="all", normalize_embeddings=True, temperature=tau)
    ours, theirs, g1, g2 = _value_and_grad_pair(
        lambda e: ours_loss(e, labels), lambda e: SupConLoss(temperature=tau)(e, labels), emb
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_normalised_paper_anchors_with_temperature_equal_pml_npairs_on_scaled_unit_vectors(tau):
    # PML's NPairsLoss has no temperature; (x/‖x‖/√τ)ᵀ(y/‖y‖/√τ) = cos/τ gives the same logits.
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.losses import NPairsLoss

    emb, labels = class_block_batch(n=8, m=2, d=6, seed=98, scale=2.0)
    ours_loss = NPairMCLoss(reg_weight=0.0, normalize_embeddings=True, temperature=tau)
    pml = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))
    ours, theirs, g1, g2 = _value_and_grad_pair(
        lambda e: ours_loss(e, labels), lambda e: pml(F.normalize(e, dim=1) / math.sqrt(tau), labels), emb
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-9)


def test_default_temperature_leaves_the_logits_untouched():
    # τ = 1 must compute exactly what the losses computed before the option existed (bit for bit).
    emb, labels = class_block_batch(n=6, m=2, d=5, seed=99, scale=4.0)
    emb = emb.float()
    s = torch.einsum("id,jd->ij", emb.view(6, 2, 5)[:, 0], emb.view(6, 2, 5)[:, 1])
    plain = F.cross_entropy(s, torch.arange(6)) + 0.5 * LAM * emb.pow(2).sum(1).mean()
    assert torch.equal(NPairMCLoss()(emb, labels), plain)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("inf"), float("nan")])
def test_temperature_must_be_positive_and_finite(bad):
    for make in (NPairMCLoss, NPairOVOLoss, TupletLoss):
        with pytest.raises(ValueError, match="temperature"):
            make(temperature=bad)


def test_anchor_option_is_checked():
    with pytest.raises(ValueError, match="anchors='every'"):
        NPairMCLoss(anchors="every")
    with pytest.raises(ValueError, match="symmetric=true applies to anchors=first"):
        NPairMCLoss(anchors="all", symmetric=True)


@pytest.mark.parametrize("mining", ["semihard", "hardest"])
def test_triplet_nm_mines_from_exact_distances_at_large_norms(mining):
    # Unnormalised embeddings with norms near 2000: a common offset changes no distance, so it must change
    # neither the mined negatives nor the loss; and both must match the float64 reference.
    g = torch.Generator().manual_seed(7)
    n, m, d = 10, 3, 16
    labels = torch.arange(n).repeat_interleave(m)
    centres = 0.3 * torch.randn(n, 1, d, generator=g, dtype=torch.float64)  # distances of O(1) ...
    base = (centres + 0.2 * torch.randn(n, m, d, generator=g, dtype=torch.float64)).view(-1, d)
    offset = torch.full((d,), 2000.0 / math.sqrt(d), dtype=torch.float64)  # ... at norms near 2000
    loss = TripletNMLoss(margin=1.0, normalize_embeddings=False, mining=mining)
    for x in (base, base + offset):
        expected = ref_triplet_nm(x, labels, 1.0, mining, normalize=False)
        ours = loss(x.float(), labels)
        torch.testing.assert_close(ours.double(), expected, rtol=1e-3, atol=1e-3)
    shifted = loss((base + offset).float(), labels)
    torch.testing.assert_close(loss(base.float(), labels), shifted, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------
# numerical stability: unnormalised embeddings with norms up to 1e3
# ------------------------------------------------------------------------------------------


def _all_losses_with_batches(d: int):
    torch.manual_seed(0)
    return [
        (NPairMCLoss(), class_block_batch(16, 2, d, seed=1)),
        (NPairMCLoss(symmetric=True), class_block_batch(8, 4, d, seed=2)),
        (NPairOVOLoss(), class_block_batch(16, 2, d, seed=3)),
        (TupletLoss(), tuplet_batch(6, d, seed=4)),
        (TripletLoss(normalize_embeddings=False), triplet_batch(10, d, seed=5)),
        (TripletLoss(), triplet_batch(10, d, seed=5)),
        (TripletNMLoss(normalize_embeddings=False), class_block_batch(10, 3, d, seed=6)),
        (TripletNMLoss(mining="hardest"), class_block_batch(10, 3, d, seed=6)),
        (ContrastiveLoss(normalize_embeddings=False, margin=10.0), pair_batch(10, d, seed=7)),
        (SoftmaxLoss(num_classes=100, embedding_dim=d), class_block_batch(10, 2, d, seed=8)),
    ]


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("norm", [1.0, 30.0, 1e3])
def test_no_inf_or_nan_for_large_norms(autocast, norm):
    d = 64
    for loss, (emb, labels) in _all_losses_with_batches(d):
        e = F.normalize(emb.float(), dim=1) * norm
        e = e * torch.linspace(0.5, 1.0, len(e))[:, None]  # norms spread over [norm/2, norm]
        e.requires_grad_(True)
        # the head of a real model: a linear map whose output feeds the loss under autocast
        head = torch.nn.Linear(d, d)
        with torch.no_grad():
            head.weight.copy_(torch.eye(d))
            head.bias.zero_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = loss(head(e), labels)
        out.float().backward()
        name = f"{type(loss).__name__} norm={norm} autocast={autocast}"
        assert torch.isfinite(out).all(), f"{name}: loss {out}"
        assert torch.isfinite(e.grad).all(), f"{name}: non-finite gradient"
        assert torch.isfinite(head.weight.grad).all(), f"{name}: non-finite head gradient"


def test_identical_embeddings_give_finite_gradients():
    emb = torch.ones(8, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])  # pairs: 2 positive, 2 negative
    ContrastiveLoss(normalize_embeddings=False)(emb, labels).backward()
    assert torch.isfinite(emb.grad).all()


# ------------------------------------------------------------------------------------------
# layout validation
# ------------------------------------------------------------------------------------------


def test_class_blocks_validation_messages():
    loss = NPairMCLoss()
    e = torch.randn(6, 3)
    with pytest.raises(ValueError, match="class 4 fills 2 blocks"):
        loss(e, torch.tensor([4, 4, 5, 5, 4, 4]))
    with pytest.raises(ValueError, match="block 1 .* mixes labels"):
        loss(e, torch.tensor([1, 1, 2, 3, 4, 4]))
    with pytest.raises(ValueError, match="at least 2 per class"):
        loss(e, torch.tensor([1, 2, 3, 4, 5, 6]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        loss(e, torch.tensor([1, 1, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match="not a multiple"):
        loss(torch.randn(5, 3), torch.tensor([1, 1, 2, 2, 3]))


def test_other_layout_validation_messages():
    with pytest.raises(ValueError, match="negative of the anchor's class"):
        TripletLoss()(torch.randn(3, 2), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="positive class"):
        TripletLoss()(torch.randn(3, 2), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"N\(N\+1\)"):
        TupletLoss()(torch.randn(7, 2), torch.arange(7))
    with pytest.raises(ValueError, match="not from 2 distinct classes"):
        TupletLoss()(torch.randn(12, 2), torch.tensor([0, 0, 1, 1, 1, 1, 0, 2, 2, 2, 0, 1]))
    with pytest.raises(ValueError, match="multiple of 2"):
        ContrastiveLoss()(torch.randn(3, 2), torch.tensor([1, 1, 2]))
    with pytest.raises(ValueError, match=r"expected embeddings \(B, D\)"):
        NPairMCLoss()(torch.randn(4), torch.tensor([1, 1, 2, 2]))


def test_losses_declare_their_layout():
    assert NPairMCLoss.layout == NPairOVOLoss.layout == TripletNMLoss.layout == "class_blocks"
    assert (TripletLoss.layout, TupletLoss.layout, ContrastiveLoss.layout, SoftmaxLoss.layout) == (
        "triplets",
        "tuplets",
        "pairs",
        "any",
    )


def test_configs_instantiate_each_loss():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1] / "configs" / "loss"
    names = sorted(p.stem for p in root.glob("*.yaml"))
    assert {"npair_mc", "npair_ovo", "triplet", "triplet_nm", "tuplet", "contrastive", "softmax"} <= set(
        names
    )
    for name in names:
        cfg = OmegaConf.load(root / f"{name}.yaml")
        assert cfg.name == name
        cfg = OmegaConf.merge({"dataset": {"embedding_dim": 8}}, {"loss": cfg})
        node = OmegaConf.to_container(cfg, resolve=True)["loss"]
        node.pop("name")
        if node.get("num_classes", 0) is None:
            node["num_classes"] = 5
        loss = instantiate(node)
        assert isinstance(loss, torch.nn.Module) and isinstance(loss.layout, str)
    # the paper's defaults
    mc = instantiate(
        {
            k: v
            for k, v in OmegaConf.to_container(OmegaConf.load(root / "npair_mc.yaml")).items()
            if k != "name"
        }
    )
    assert (mc.regularizer.weight, mc.regularizer.form, mc.symmetric) == (0.002, "tf_npairs", False)
    assert math.isclose(mc.regularizer.weight, LAM)
