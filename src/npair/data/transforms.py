"""Image pipelines (torchvision.transforms.v2), selected by a dataset config's ``transform`` node.

Two pipelines:

* ``paper`` (CUB, Cars, SOP, Flowers, folder): the standard ImageNet-style pipeline used with
  GoogLeNet in deep metric learning. Train: resize the shorter side to ``resize`` (256),
  random crop ``image_size`` (224), horizontal flip. Test: resize to ``resize``, centre crop
  ``image_size``. Both: ImageNet mean/std normalisation. The paper's augmentation is not
  stated (docs/paper.md §4.4, "(c) not confirmed"); random crop + flip is the usual candidate.
  ``resize: null`` keeps the 256/224 ratio for other sizes (e.g. 37 for ``image_size=32``).
* ``face`` (CASIA-WebFace -> LFW): the CASIA network's input per Yi et al. 2014, "Learning
  Face Representation from Scratch": 100x100 grayscale faces. Yi et al. align faces with
  landmarks; without a landmark detector we approximate the alignment by a centre crop of
  ``face_crop`` pixels (150 of LFW/CASIA's 250x250 frames, which are centred on the face) and
  resize to ``image_size`` (100). Train adds a horizontal flip. Normalisation: mean 0.5,
  std 0.5 per channel (maps [0,1] to [-1,1]; not stated by Yi et al.).

``grayscale`` (``channels: 1``) or RGB output is set by ``channels``; the dataset builders
decode images in the matching PIL mode (``"L"`` / ``"RGB"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.v2 as T
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TransformPair:
    """Train and test pipelines of one dataset, plus the PIL mode images are decoded in."""

    train: Callable[[Any], Tensor]
    test: Callable[[Any], Tensor]
    mode: str = "RGB"


def _to_float() -> list[T.Transform]:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True)]


def _per_channel(values: tuple[float, ...], channels: int, key: str) -> list[float]:
    """One value per channel: a single value is repeated; RGB values average to one gray value."""
    if len(values) == channels:
        return list(values)
    if len(values) == 1:
        return list(values) * channels
    if channels == 1:
        return [sum(values) / len(values)]
    raise ValueError(f"transform.{key} has {len(values)} values for {channels} channels")


def _normalise(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> T.Normalize:
    return T.Normalize(mean=_per_channel(mean, channels, "mean"), std=_per_channel(std, channels, "std"))


def paper_transforms(
    image_size: int = 224,
    resize: int | None = 256,
    flip: bool = True,
    channels: int = 3,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    random_resized_crop: bool = False,
) -> TransformPair:
    """Resize + random crop + flip (train), resize + centre crop (test), ImageNet normalisation.

    ``random_resized_crop=True`` swaps the train crop for ``RandomResizedCrop(image_size)`` (the
    stronger augmentation later DML papers use); off by default.
    """
    if resize is None:
        resize = round(image_size * 256 / 224)
    if resize < image_size:
        raise ValueError(f"transform.resize={resize} is smaller than transform.image_size={image_size}")
    gray = [T.Grayscale(num_output_channels=1)] if channels == 1 else []
    norm = _normalise(tuple(mean), tuple(std), channels)
    train_crop: list[T.Transform] = (
        [T.RandomResizedCrop(image_size, antialias=True)]
        if random_resized_crop
        else [T.Resize(resize, antialias=True), T.RandomCrop(image_size)]
    )
    train = T.Compose([*gray, *train_crop, *([T.RandomHorizontalFlip()] if flip else []), *_to_float(), norm])
    test = T.Compose([*gray, T.Resize(resize, antialias=True), T.CenterCrop(image_size), *_to_float(), norm])
    return TransformPair(train=train, test=test, mode="L" if channels == 1 else "RGB")


def face_transforms(
    image_size: int = 100,
    face_crop: int | None = 150,
    flip: bool = True,
    channels: int = 1,
    mean: tuple[float, ...] = (0.5,),
    std: tuple[float, ...] = (0.5,),
) -> TransformPair:
    """CASIA-net input (Yi et al. 2014): grayscale, centre face crop, resize to ``image_size``.

    ``face_crop: null`` skips the crop (for already aligned/cropped faces).
    """
    gray = [T.Grayscale(num_output_channels=1)] if channels == 1 else []
    crop = [T.CenterCrop(face_crop)] if face_crop else []
    base = [*gray, *crop, T.Resize((image_size, image_size), antialias=True)]
    norm = _normalise(tuple(mean), tuple(std), channels)
    train = T.Compose([*base, *([T.RandomHorizontalFlip()] if flip else []), *_to_float(), norm])
    test = T.Compose([*base, *_to_float(), norm])
    return TransformPair(train=train, test=test, mode="L" if channels == 1 else "RGB")


PIPELINES: dict[str, Callable[..., TransformPair]] = {
    "paper": paper_transforms,
    "face": face_transforms,
}


def build_transforms(spec: TransformPair | Mapping[str, Any] | None = None, **defaults: Any) -> TransformPair:
    """Turn a config ``transform`` node (``{kind: paper|face, ...kwargs}``) into a :class:`TransformPair`.

    ``None`` gives the ``paper`` pipeline with ``defaults``; an existing pair is returned as is.
    """
    if isinstance(spec, TransformPair):
        return spec
    kwargs: dict[str, Any] = dict(defaults)
    if spec is not None:
        kwargs.update({str(k): v for k, v in dict(spec).items()})
    kind = kwargs.pop("kind", "paper")
    if kind not in PIPELINES:
        raise ValueError(f"transform.kind={kind!r} is not one of {sorted(PIPELINES)}")
    for key in ("mean", "std"):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = tuple(float(v) for v in kwargs[key])
    return PIPELINES[kind](**kwargs)
