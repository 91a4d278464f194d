"""Image-list datasets shared by every on-disk dataset family, plus the checks they share.

:class:`ImageListDataset` is a map-style dataset over ``(path, label)`` records that decodes
images lazily with PIL, always converting to the configured colour mode (some CUB and Cars
images are grayscale or CMYK; docs/datasets.md §1, §2). Builders (``build_cub200`` ...) read a
dataset's metadata files into records, split them, and wrap each split in one of these.

Missing or broken data:

* a missing root or metadata file raises :class:`DatasetNotFoundError`, naming the expected
  layout and the download command (:func:`require_root`, :func:`require_file`);
* a split whose size differs from the published one raises :class:`SplitCountError`, naming
  each differing count and the likely cause (:func:`verify_counts`);
* an unreadable image raises :class:`CorruptImageError` naming the file, unless
  ``skip_corrupt=True``: then unreadable files are dropped when the dataset is built (header
  scan), counted in :attr:`ImageListDataset.skipped_files` and logged; an image that passes the
  scan but fails to decode later (a truncated JPEG) is replaced by the next readable image *of the
  same class* (so sampler batch layouts stay valid), logged once and counted once per file in
  :attr:`ImageListDataset.runtime_skipped`. That record lives in shared memory, so reads in
  DataLoader worker processes are counted in the process that built the dataset;
  :meth:`DatasetSplits.skipped_images` sums both kinds per split;
* an image with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's decompression-bomb limit,
  89,478,485 by default; PIL itself only warns up to twice that) raises
  :class:`ImageTooLargeError` naming the file, at the header scan or when it is read, whatever
  ``skip_corrupt`` says: it is not a broken file, and skipping it would silently change the data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from npair.data.base import DatasetSplits
from npair.data.transforms import build_transforms

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root or one of its metadata files is missing."""


class SplitCountError(ValueError):
    """The number of images or classes in a split differs from the published one."""


class CorruptImageError(OSError):
    """An image file cannot be opened or decoded."""


class ImageTooLargeError(CorruptImageError):
    """An image has more pixels than PIL's decompression-bomb limit; never skipped."""


def download_hint(name: str, root: str | os.PathLike[str]) -> str:
    """How to (re-)fetch dataset ``name`` so that it lands at ``root``."""
    from npair.data.sources import SOURCES

    if name not in SOURCES:
        return "check the path and its contents"
    parent = Path(root).expanduser().parent
    return f"`python -m npair.data.download {name} --root {parent}` (or `make data DATASET={name}`)"


def require_root(root: str | os.PathLike[str], name: str, layout: str) -> Path:
    """Return ``root`` as a Path, or raise :class:`DatasetNotFoundError` describing ``layout``."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"{name}: dataset root {str(path)!r} does not exist.\n"
            f"Expected layout:\n{layout}\n"
            f"Fetch it: {download_hint(name, path)}; "
            f"or point the config at your copy with `dataset.root=/path/to/it`."
        )
    return path


def require_file(path: Path, name: str, layout: str, root: Path) -> Path:
    """Raise :class:`DatasetNotFoundError` unless the metadata file ``path`` exists."""
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{name}: missing file {str(path)!r} (root {str(root)!r} exists but looks incomplete: "
            f"a partial extraction or a different mirror's layout?).\nExpected layout:\n{layout}\n"
            f"Re-fetch: {download_hint(name, root)}."
        )
    return path


def verify_counts(
    name: str,
    actual: Mapping[str, int],
    expected: Mapping[str, int] | None,
    root: str | os.PathLike[str],
) -> None:
    """Compare split sizes with the published ones; raise naming every difference.

    ``expected`` maps keys such as ``train_images``/``test_classes`` to counts; keys absent
    from ``expected`` are not checked; ``None`` checks nothing.
    """
    if not expected:
        return
    diffs = [
        f"  {key}: found {actual.get(key)}, expected {want}"
        for key, want in expected.items()
        if actual.get(key) != want
    ]
    if diffs:
        raise SplitCountError(
            f"{name}: split sizes under {str(root)!r} differ from the published ones:\n"
            + "\n".join(diffs)
            + "\nThis usually means a partial extraction, a re-packed mirror with another layout, or "
            f"the wrong root. Re-fetch and verify: {download_hint(name, root)}; to use a modified "
            "copy on purpose, set `dataset.verify_counts=false`."
        )


def split_counts(train_labels: np.ndarray, test_labels: np.ndarray) -> dict[str, int]:
    """``{train,test}_{images,classes}`` of two label arrays."""
    return {
        "train_images": len(train_labels),
        "test_images": len(test_labels),
        "train_classes": int(np.unique(train_labels).size),
        "test_classes": int(np.unique(test_labels).size),
    }


def contiguous_labels(raw: Sequence[int] | np.ndarray) -> np.ndarray:
    """Map arbitrary class ids to ``0..C-1`` in increasing id order (int64)."""
    raw = np.asarray(raw)
    _, inverse = np.unique(raw, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1)


def split_by_class_order(
    paths: Sequence[str], class_ids: np.ndarray, num_train_classes: int | None = None
) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
    """Class-disjoint split: the ``num_train_classes`` smallest class ids (default: half) train,
    the rest test (the CUB-200 / Cars196 protocol of Song et al. CVPR16)."""
    classes = np.unique(class_ids)
    n_train = len(classes) // 2 if num_train_classes is None else int(num_train_classes)
    if not 0 < n_train < len(classes):
        raise ValueError(f"num_train_classes={n_train} must be between 1 and {len(classes) - 1}")
    is_train = np.isin(class_ids, classes[:n_train])

    def take(mask: np.ndarray) -> tuple[list[str], np.ndarray]:
        return [p for p, m in zip(paths, mask, strict=True) if m], class_ids[mask]

    return take(is_train), take(~is_train)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for a known image extension, ignoring macOS AppleDouble files (``._*``)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith("._") and name.lower().endswith(IMAGE_EXTENSIONS)


def _too_large(path: str | os.PathLike[str], detail: str) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image {os.fspath(path)!r} is too large to decode safely ({detail}): a decompression bomb, or an "
        "image far larger than a training image needs. Delete or downscale it (`dataset.skip_corrupt=true` "
        "does not skip such files), or raise PIL.Image.MAX_IMAGE_PIXELS in your own code if you trust it."
    )


def _check_pixels(img: Image.Image, path: str | os.PathLike[str]) -> None:
    """Raise :class:`ImageTooLargeError` above ``PIL.Image.MAX_IMAGE_PIXELS`` (read at call time)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise _too_large(
            path, f"{img.width}x{img.height} = {img.width * img.height:,} pixels, limit {limit:,}"
        )


def load_image(path: str | os.PathLike[str], mode: str = "RGB") -> Image.Image:
    """Open and fully decode an image, converted to ``mode``; raise :class:`CorruptImageError` naming
    it (:class:`ImageTooLargeError` above PIL's pixel limit, checked before decoding)."""
    try:
        with Image.open(path) as img:
            _check_pixels(img, path)
            img.load()
            return img.convert(mode)
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(path, str(exc)) from exc
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        if isinstance(exc, FileNotFoundError):
            msg = "file not found"
        else:
            msg = f"{type(exc).__name__}: {exc}"
        raise CorruptImageError(
            f"cannot read image {os.fspath(path)!r} ({msg}). Re-fetch the dataset, delete the file, or "
            "set `dataset.skip_corrupt=true` to skip unreadable images (they are counted and logged)."
        ) from exc


def _header_ok(path: str) -> bool:
    """Cheap readability check: the file exists and PIL recognises its header. An image above PIL's
    pixel limit raises :class:`ImageTooLargeError` instead of counting as unreadable."""
    try:
        with Image.open(path) as img:
            _check_pixels(img, path)
            img.verify()
        return True
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(path, str(exc)) from exc
    except Exception:  # noqa: BLE001 - any other failure means "unreadable"
        return False


def _default_to_tensor(img: Image.Image) -> Tensor:
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class ImageListDataset(torch.utils.data.Dataset):
    """Images listed by path with an integer label each; ``labels`` is known without decoding.

    Args:
        paths: image paths, absolute or relative to ``root``.
        labels: int label per path.
        root: prefix for relative paths.
        transform: callable PIL image -> Tensor (C,H,W) float32; default: to-tensor in [0, 1].
        mode: PIL mode images are converted to (``"RGB"`` or ``"L"``).
        skip_corrupt: drop unreadable files at construction and substitute same-class images for
            files that fail to decode later, instead of raising.
        name: dataset/split name used in log and error messages.
        scan_workers: threads used for the construction-time header scan.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        labels: Sequence[int] | np.ndarray,
        root: str | os.PathLike[str] | None = None,
        transform: Callable[[Image.Image], Tensor] | None = None,
        mode: str = "RGB",
        skip_corrupt: bool = False,
        name: str = "images",
        scan_workers: int = 8,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(paths) != len(labels):
            raise ValueError(f"{name}: {len(paths)} paths but {len(labels)} labels")
        base = Path(root) if root is not None else None
        full = [os.fspath(base / p) if base is not None else os.fspath(p) for p in paths]
        self.name = name
        self.mode = mode
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.skipped_files: list[str] = []
        if skip_corrupt and full:
            with ThreadPoolExecutor(max_workers=max(1, scan_workers)) as pool:
                ok = np.fromiter(pool.map(_header_ok, full, chunksize=256), dtype=bool, count=len(full))
            if not ok.all():
                self.skipped_files = [p for p, good in zip(full, ok) if not good]
                lost = np.setdiff1d(np.unique(labels), np.unique(labels[ok]))
                if lost.size:
                    raise CorruptImageError(
                        f"{name}: every image of class(es) {lost.tolist()[:10]} is unreadable "
                        f"(e.g. {self.skipped_files[0]!r}); re-fetch the dataset."
                    )
                log.warning(
                    "%s: skipped %d unreadable image(s) of %d (skip_corrupt=true), e.g. %s",
                    name,
                    len(self.skipped_files),
                    len(full),
                    self.skipped_files[:3],
                )
                full = [p for p, good in zip(full, ok) if good]
                labels = labels[ok]
        self.paths: list[str] = full
        self.labels: np.ndarray = labels
        # 1 for each image found unreadable at load time; shared memory, so that DataLoader workers
        # (forked or spawned) mark the same array the building process reads.
        self._bad_at_load: Tensor | None = (
            torch.zeros(len(full), dtype=torch.uint8).share_memory_() if skip_corrupt else None
        )
        self._same_class: dict[int, np.ndarray] | None = None
        self.class_names: list[str] | None = None  # name of each label, where the builder knows it

    @property
    def runtime_skipped(self) -> list[str]:
        """Images that passed the header scan but failed to decode when read, each once, from every
        process that has read this dataset (its DataLoader workers included)."""
        if self._bad_at_load is None:
            return []
        return [self.paths[i] for i in torch.nonzero(self._bad_at_load).flatten().tolist()]

    @property
    def num_skipped_at_load(self) -> int:
        """``len(runtime_skipped)``."""
        return 0 if self._bad_at_load is None else int(self._bad_at_load.sum())

    @property
    def num_skipped(self) -> int:
        """Images skipped as unreadable: at the header scan plus at load time."""
        return len(self.skipped_files) + self.num_skipped_at_load

    def __len__(self) -> int:
        return len(self.paths)

    def _mark_bad(self, index: int) -> None:
        assert self._bad_at_load is not None
        if not self._bad_at_load[index]:
            self._bad_at_load[index] = 1
            log.warning("%s: unreadable image %r skipped (skip_corrupt=true)", self.name, self.paths[index])

    def _known_bad(self, index: int) -> bool:
        return self._bad_at_load is not None and bool(self._bad_at_load[index])

    def _read(self, index: int) -> Image.Image:
        if not self._known_bad(index):
            try:
                return load_image(self.paths[index], self.mode)
            except ImageTooLargeError:
                raise
            except CorruptImageError:
                if not self.skip_corrupt:
                    raise
                self._mark_bad(index)
        # Substitute the next readable image of the same class.
        if self._same_class is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.flatnonzero(np.diff(self.labels[order])) + 1
            self._same_class = {int(self.labels[g[0]]): g for g in np.split(order, bounds)}
        group = self._same_class[int(self.labels[index])]
        start = int(np.flatnonzero(group == index)[0])
        for k in range(1, len(group)):
            other = int(group[(start + k) % len(group)])
            if self._known_bad(other):
                continue
            try:
                return load_image(self.paths[other], self.mode)
            except ImageTooLargeError:
                raise
            except CorruptImageError:
                self._mark_bad(other)
        raise CorruptImageError(f"{self.name}: no readable image left in the class of {self.paths[index]!r}")

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = self._read(int(index))
        image = self.transform(img) if self.transform is not None else _default_to_tensor(img)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, images={len(self)}, "
            f"classes={np.unique(self.labels).size}, skipped={self.num_skipped})"
        )


def expected_counts(
    verify: bool | Mapping[str, int] | None, published: Mapping[str, int] | None
) -> Mapping[str, int] | None:
    """``verify_counts`` config value -> counts to check: ``true`` the published ones, a mapping
    those counts (tests, modified copies), ``false``/``null`` none."""
    if verify is None or verify is False:
        return None
    if verify is True:
        return published
    return {str(k): int(v) for k, v in dict(verify).items()}


def image_splits(
    name: str,
    train: tuple[Sequence[str], Sequence[int] | np.ndarray],
    test: tuple[Sequence[str], Sequence[int] | np.ndarray],
    *,
    root: str | os.PathLike[str],
    transform: Any = None,
    transform_defaults: Mapping[str, Any] | None = None,
    skip_corrupt: bool = False,
    protocol: str = "unseen",
    extras: dict[str, Any] | None = None,
    expected: Mapping[str, int] | None = None,
    train_root: str | os.PathLike[str] | None = None,
    class_names: Mapping[int, str] | None = None,
) -> DatasetSplits:
    """Wrap ``(paths, raw class ids)`` of two splits into a :class:`DatasetSplits`.

    Labels: ``unseen`` maps each split's class ids to ``0..C-1`` on its own; ``seen`` maps both
    through the training classes (test classes must be training classes). Counts are checked
    against ``expected`` (see :func:`verify_counts`) on the metadata, before any image is read.
    ``train_root`` overrides ``root`` for the training paths (CASIA-WebFace -> LFW).
    ``class_names`` (raw class id -> name) sets each split's ``class_names`` (indexed by label).
    """
    train_raw, test_raw = np.asarray(train[1]), np.asarray(test[1])
    if len(train[0]) == 0 or len(test[0]) == 0:
        raise ValueError(
            f"{name}: empty split under {os.fspath(root)!r} ({len(train[0])} train / {len(test[0])} test "
            "images); check the root and the split settings."
        )
    if protocol == "unseen":
        train_labels, test_labels = contiguous_labels(train_raw), contiguous_labels(test_raw)
        label_ids = (np.unique(train_raw), np.unique(test_raw))  # raw class id of each label
    elif protocol == "seen":
        classes = np.unique(train_raw)
        unknown = np.setdiff1d(np.unique(test_raw), classes)
        if unknown.size:
            raise ValueError(
                f"{name}: seen-class protocol, but test classes {unknown.tolist()[:10]} "
                "have no training images"
            )
        train_labels = np.searchsorted(classes, train_raw).astype(np.int64)
        test_labels = np.searchsorted(classes, test_raw).astype(np.int64)
        label_ids = (classes, classes)
    else:
        raise ValueError(f"{name}: protocol must be 'seen' or 'unseen', not {protocol!r}")
    verify_counts(name, split_counts(train_labels, test_labels), expected, root)
    pair = build_transforms(transform, **(transform_defaults or {}))
    common = {"mode": pair.mode, "skip_corrupt": skip_corrupt}
    train_set = ImageListDataset(
        train[0], train_labels, root=train_root or root, transform=pair.train, name=f"{name}/train", **common
    )
    test_set = ImageListDataset(
        test[0], test_labels, root=root, transform=pair.test, name=f"{name}/test", **common
    )
    if class_names is not None:
        for dataset, ids in zip((train_set, test_set), label_ids):
            dataset.class_names = [class_names[int(r)] for r in ids]
    return DatasetSplits(
        name=name,
        train=train_set,
        test=test_set,
        protocol=protocol,
        extras=extras or {},  # type: ignore[arg-type]
    )
