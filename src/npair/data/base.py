"""The data interface every dataset module returns.

A dataset builder (the ``dataset.build`` config node) returns :class:`DatasetSplits`.
Each split is a :class:`torch.utils.data.Dataset` yielding ``(image, label)`` with a
``labels`` array so samplers can work without touching images.

Label conventions:

* ``protocol="unseen"`` (Table 2 style): train and test classes are disjoint; each
  split's labels are contiguous ``0..C-1`` on their own; evaluation happens within
  the test split (Recall@K, NMI, F1).
* ``protocol="seen"`` (Table 1 style): test classes are the training classes and share
  their label ids; kNN recognition uses the training split as the reference set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from torch import Tensor


@runtime_checkable
class LabelledDataset(Protocol):
    """A map-style dataset with an integer label per item, known without decoding images."""

    labels: np.ndarray  # int64, shape (n,)

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, int]: ...


@dataclass
class DatasetSplits:
    """Training and test splits of one dataset, plus protocol-specific extras.

    ``extras`` carries protocol data such as LFW's 10-fold pairs; it is empty for
    plain classification/retrieval datasets.
    """

    name: str
    train: LabelledDataset
    test: LabelledDataset
    protocol: Literal["seen", "unseen"] = "unseen"
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            labels = np.asarray(getattr(self, split).labels)
            if labels.ndim != 1 or len(labels) != len(getattr(self, split)):
                raise ValueError(
                    f"dataset {self.name!r}: {split} split has {len(getattr(self, split))} items "
                    f"but a labels array of shape {labels.shape}"
                )

    @property
    def num_train_classes(self) -> int:
        return int(np.unique(self.train.labels).size)

    @property
    def num_test_classes(self) -> int:
        return int(np.unique(self.test.labels).size)

    def skipped_images(self) -> dict[str, int]:
        """Images skipped as unreadable (``dataset.skip_corrupt=true``) so far, for ``metrics.json``.

        Per split: ``<split>_at_scan``, dropped by the header scan when the dataset was built, and
        ``<split>_at_load``, files that passed the scan but failed to decode when read (each file
        once, counted across every process that read the split, DataLoader workers included); and
        their ``total``. Load-time counts grow while the run reads images: ask at the end of a run.
        Datasets held in memory (digits, glyphs) count 0.
        """
        counts: dict[str, int] = {}
        for split in ("train", "test"):
            dataset = getattr(self, split)
            counts[f"{split}_at_scan"] = len(getattr(dataset, "skipped_files", ()))
            counts[f"{split}_at_load"] = int(getattr(dataset, "num_skipped_at_load", 0))
        counts["total"] = sum(counts.values())
        return counts
