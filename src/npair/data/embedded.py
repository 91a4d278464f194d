"""Embedded datasets that need no download.

* ``digits``: scikit-learn's bundled handwritten digits (1,797 images, 8×8, 10 classes), split per
  class into train/test images — the seen-class protocol of the paper's Table 1.
* ``glyphs``: a generated many-class image set. Each class is a random glyph made of a few quadratic
  Bézier strokes; each image re-draws the class's strokes with jittered control points, a random
  affine pose and pixel noise. Classes ``0..C/2-1`` train and the unseen ``C/2..C-1`` test — the
  unseen-class protocol of the paper's Table 2. Deterministic from ``seed`` and cached under ``root``.
  With ``family_size`` > 1 the classes come in families of near-twins (each class a small perturbation of
  its family's glyph), so that some classes are confusable while a random batch rarely holds two of one
  family: the large-output regime in which the paper mines hard negative classes (``glyphs_many``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from npair.data.base import DatasetSplits
from npair.runio import atomic_torch_save


class InMemoryImages(torch.utils.data.Dataset):
    """Images held as one uint8 tensor (n, C, H, W); items are float32 in [-1, 1]."""

    def __init__(self, images: Tensor, labels: np.ndarray) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"expected a uint8 (n, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def _to_float(x: Tensor) -> Tensor:
        return x.float().div_(127.5).sub_(1.0)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self._to_float(self.images[index]), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        """Batched fetch used by DataLoader: one gather instead of one call per item."""
        batch = self._to_float(self.images[torch.as_tensor(indices)])
        return list(zip(batch.unbind(0), self.labels[indices].tolist()))


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary class ids to contiguous 0..C-1, in sorted order of the original ids."""
    _, contiguous = np.unique(labels, return_inverse=True)
    return contiguous.astype(np.int64)


# --------------------------------------------------------------------------------------- digits
def build_digits(test_fraction: float = 0.3, split_seed: int = 0) -> DatasetSplits:
    """scikit-learn's digits, split per class (seen-class protocol).

    ``test_fraction`` of each class's images (chosen with ``split_seed``) form the test split;
    train and test share the 10 class ids.
    """
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"dataset.build.test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(split_seed)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = max(1, int(round(test_fraction * len(idx))))
        test_mask[rng.choice(idx, size=n_test, replace=False)] = True
    train = InMemoryImages(images[~test_mask], labels[~test_mask])
    test = InMemoryImages(images[test_mask], labels[test_mask])
    return DatasetSplits(name="digits", train=train, test=test, protocol="seen")


# --------------------------------------------------------------------------------------- glyphs
GLYPHS_VERSION = 1  # bump when the generator's output changes for the same parameters


def _bezier_points(control: Tensor, n_points: int) -> Tensor:
    """Points along quadratic Bézier strokes. control: (..., 3, 2) → (..., n_points, 2)."""
    t = torch.linspace(0.0, 1.0, n_points, dtype=control.dtype).view(-1, 1)
    p0, p1, p2 = control[..., 0:1, :], control[..., 1:2, :], control[..., 2:3, :]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _render(points: Tensor, size: int, width: float) -> Tensor:
    """Rasterise point clouds (n, P, 2) in [0, 1]² as soft strokes → float (n, size, size) in [0, 1].

    Each point is an isotropic Gaussian of std ``width``; a Gaussian is separable, so the sum over
    points is one batched matrix product ``Gx @ Gyᵀ``. Ink saturates as ``1 - exp(-sum)``.
    """
    coords = (torch.arange(size, dtype=points.dtype) + 0.5) / size
    gx = torch.exp(-(points[..., 0:1] - coords).square() / (2 * width**2))  # (n, P, size): rows
    gy = torch.exp(-(points[..., 1:2] - coords).square() / (2 * width**2))  # (n, P, size): columns
    return 1.0 - torch.exp(-torch.bmm(gx.transpose(1, 2), gy))


def generate_glyphs(
    n_classes: int = 400,
    images_per_class: int = 50,
    image_size: int = 32,
    strokes: tuple[int, int] = (2, 4),
    control_jitter: float = 0.07,
    max_rotation_deg: float = 20.0,
    scale_range: tuple[float, float] = (0.85, 1.1),
    max_shift: float = 0.08,
    stroke_width: float = 0.035,
    noise_std: float = 0.15,
    seed: int = 0,
    family_size: int = 1,
    family_jitter: float = 0.1,
) -> tuple[Tensor, np.ndarray]:
    """Generate the glyph images: uint8 (n, 1, H, W) and labels (n,), class-major order.

    ``family_size`` = 1: every class prototype is drawn independently. > 1: classes k·F .. k·F + F−1 form
    family k: one glyph with its stroke count is drawn per family and each class adds its own Gaussian
    offset of std ``family_jitter`` to every control point (per image, ``control_jitter`` adds more).
    """
    gen = torch.Generator().manual_seed(seed)
    max_strokes = int(strokes[1])
    if family_size == 1:
        n_strokes = torch.randint(strokes[0], strokes[1] + 1, (n_classes,), generator=gen)
        # Class prototypes: control points in [0.15, 0.85]²; unused stroke slots repeat stroke 0.
        proto = 0.15 + 0.7 * torch.rand(n_classes, max_strokes, 3, 2, generator=gen, dtype=torch.float64)
    else:
        if family_size < 1 or n_classes % family_size:
            raise ValueError(
                f"dataset.build.family_size={family_size} must be >= 1 and divide n_classes={n_classes}"
            )
        n_families = n_classes // family_size
        n_strokes = torch.randint(strokes[0], strokes[1] + 1, (n_families,), generator=gen)
        parent = 0.15 + 0.7 * torch.rand(n_families, max_strokes, 3, 2, generator=gen, dtype=torch.float64)
        n_strokes = n_strokes.repeat_interleave(family_size)
        proto = parent.repeat_interleave(family_size, dim=0)
        proto = proto + family_jitter * torch.randn(proto.shape, generator=gen, dtype=torch.float64)
    slot = torch.arange(max_strokes).view(1, -1)
    proto = torch.where(
        (slot < n_strokes.view(-1, 1)).view(n_classes, max_strokes, 1, 1), proto, proto[:, :1]
    )
    n = n_classes * images_per_class
    control = proto.repeat_interleave(images_per_class, dim=0)
    control = control + control_jitter * torch.randn(control.shape, generator=gen, dtype=torch.float64)
    points = _bezier_points(control, n_points=24).reshape(n, -1, 2)
    # Random pose: rotation, isotropic scale and shift about the image centre.
    angle = torch.deg2rad(max_rotation_deg * (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1))
    scale = scale_range[0] + (scale_range[1] - scale_range[0]) * torch.rand(
        n, generator=gen, dtype=torch.float64
    )
    shift = max_shift * (2 * torch.rand(n, 1, 2, generator=gen, dtype=torch.float64) - 1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n, 2, 2)
    points = (points - 0.5) @ rot.transpose(1, 2) + 0.5 + shift
    images = _render(points.float(), image_size, stroke_width)
    images = images + noise_std * torch.randn(images.shape, generator=gen)
    images = (images.clamp_(0, 1) * 255).round_().to(torch.uint8).unsqueeze(1)
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), images_per_class)
    return images, labels


def build_glyphs(
    root: str | os.PathLike,
    n_classes: int = 400,
    images_per_class: int = 50,
    image_size: int = 32,
    seed: int = 0,
    cache: bool = True,
    **generator_kwargs,
) -> DatasetSplits:
    """Generated glyphs; the first half of the classes trains, the unseen second half tests.

    The generated set is cached at ``root/glyphs-<hash of the parameters>.pt``.
    """
    if n_classes < 4 or n_classes % 2:
        raise ValueError(f"dataset.build.n_classes must be an even number >= 4, got {n_classes}")
    if images_per_class < 2:
        raise ValueError(f"dataset.build.images_per_class must be >= 2, got {images_per_class}")
    family_size = int(generator_kwargs.get("family_size", 1))
    if family_size < 1 or (n_classes // 2) % family_size:
        raise ValueError(
            f"dataset.build.family_size={family_size} must be >= 1 and divide the "
            f"{n_classes // 2} training (and test) classes, so that no family spans both splits"
        )
    unknown = set(generator_kwargs) - set(inspect.signature(generate_glyphs).parameters)
    if unknown:
        raise TypeError(f"dataset.build: unknown glyphs parameter(s) {sorted(unknown)}")
    defaults = {k: p.default for k, p in inspect.signature(generate_glyphs).parameters.items()}
    params = {
        **defaults,
        **generator_kwargs,
        "n_classes": n_classes,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "seed": seed,
    }
    params = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in params.items()}
    # Every generator parameter (defaults included) and the generator version name the cache file; without
    # families (family_size = 1) the family keys are left out, so those files keep the names they had.
    named = {k: v for k, v in params.items() if params["family_size"] != 1 or not k.startswith("family_")}
    key = json.dumps({"version": GLYPHS_VERSION, **named}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = Path(root) / f"glyphs-{digest}.pt"
    if cache and path.exists():
        try:
            data = torch.load(path, weights_only=True)
            images, labels = data["images"], data["labels"].numpy()
        except Exception as err:  # a truncated or foreign file: regenerate rather than fail
            raise RuntimeError(f"glyphs cache {path} is unreadable ({err}); delete it to regenerate") from err
    else:
        images, labels = generate_glyphs(
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items()}
        )
        if cache:
            # atomic, and readable as the umask allows (colleagues on a shared machine reuse the cache)
            atomic_torch_save(path, {"images": images, "labels": torch.from_numpy(labels), "params": params})
    is_train = labels < n_classes // 2
    train = InMemoryImages(images[is_train], _relabel(labels[is_train]))
    test = InMemoryImages(images[~is_train], _relabel(labels[~is_train]))
    return DatasetSplits(name="glyphs", train=train, test=test, protocol="unseen")


def glyphs_grid(splits: DatasetSplits, n_classes: int = 8, per_class: int = 8) -> Tensor:
    """A (1, H', W') image grid of the first ``per_class`` images of ``n_classes`` training classes."""
    from torchvision.utils import make_grid

    ds = splits.train
    idx = [int(i) for c in range(n_classes) for i in np.flatnonzero(ds.labels == c)[:per_class]]
    return make_grid(
        torch.stack([ds[i][0] for i in idx]), nrow=per_class, normalize=True, value_range=(-1, 1)
    )


__all__ = ["InMemoryImages", "build_digits", "build_glyphs", "generate_glyphs", "glyphs_grid"]
