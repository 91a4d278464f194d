"""The evaluator's input: embeddings of one split with their labels (and optional logits)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def integer_labels(labels: Any, what: str = "labels") -> tuple[np.ndarray, np.ndarray | None]:
    """``(codes int64, names)``: integer labels as they are (``names`` None); boolean and
    integral floats cast; strings (or other objects of one orderable type) mapped to
    ``0..C-1`` in sorted order of their values, ``names[code]`` giving the value back.
    Anything else is refused, naming the first offending item.

    >>> integer_labels(np.array(["dog", "cat", "dog"]))
    (array([1, 0, 1]), array(['cat', 'dog'], dtype='<U3'))
    """
    labels = _to_numpy(labels)
    if labels.ndim != 1:
        raise ValueError(f"EmbeddingSet: {what} must be 1-D (n,), got shape {labels.shape}")
    kind = labels.dtype.kind
    if kind in "iu":
        return labels.astype(np.int64), None
    if kind == "b":
        return labels.astype(np.int64), None
    if kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"EmbeddingSet: {what} must be integers, got dtype {labels.dtype} with non-integral values "
                f"({int(bad.sum())} of {labels.size}; first: {labels[first]!r} at index {first}); "
                "pass class ids (integers) or class names (strings)"
            )
        return labels.astype(np.int64), None
    if kind in "USO":
        try:
            names, codes = np.unique(labels, return_inverse=True)
        except TypeError as e:
            types = sorted({type(v).__name__ for v in labels.tolist()})
            raise ValueError(
                f"EmbeddingSet: {what} mix types {types} that cannot be ordered; "
                "use one type for all labels (integers or strings)"
            ) from e
        if kind == "O" and len({type(v) for v in names.tolist()}) > 1:
            types = sorted({type(v).__name__ for v in names.tolist()})
            raise ValueError(f"EmbeddingSet: {what} mix types {types}; use one type for all labels")
        return codes.reshape(-1).astype(np.int64), names
    raise ValueError(
        f"EmbeddingSet: {what} of dtype {labels.dtype} are not class labels; pass integers or strings"
    )


@dataclass
class EmbeddingSet:
    """Embeddings of one split: ``embeddings (n, D)`` float32, ``labels (n,)`` int64 and,
    for classifier models, ``logits (n, C)`` (or None).

    Accepts numpy arrays or torch tensors; converts and checks shapes on construction
    (raising ``ValueError`` naming the mismatch). NaN values are rejected at evaluation.
    String labels (class names) are mapped to integers in sorted order and the names
    kept in ``label_names`` (the evaluator maps a test and a reference set with names
    onto one shared numbering).
    """

    embeddings: np.ndarray
    labels: np.ndarray
    logits: np.ndarray | None = None
    label_names: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        emb = _to_numpy(self.embeddings)
        if emb.ndim != 2:
            raise ValueError(f"EmbeddingSet: embeddings must be 2-D (n, D), got shape {emb.shape}")
        if not (np.issubdtype(emb.dtype, np.number) or emb.dtype == bool):
            raise ValueError(f"EmbeddingSet: embeddings must be numbers, got dtype {emb.dtype}")
        self.embeddings = np.ascontiguousarray(emb, dtype=np.float32)
        if self.label_names is None:
            self.labels, self.label_names = integer_labels(self.labels)
        else:
            self.labels = integer_labels(self.labels)[0]
        if len(self.labels) != len(self.embeddings):
            raise ValueError(
                f"EmbeddingSet: {len(self.embeddings)} embeddings but {len(self.labels)} labels; "
                "they must match one to one"
            )
        if self.logits is not None:
            logits = _to_numpy(self.logits)
            if logits.ndim != 2 or len(logits) != len(self.labels):
                raise ValueError(
                    f"EmbeddingSet: logits shape {logits.shape} does not match {len(self.labels)} items"
                )
            self.logits = np.ascontiguousarray(logits, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(np.unique(self.labels).size)


def shared_labels(test: EmbeddingSet, reference: EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
    """Labels of ``test`` and ``reference`` on one numbering: as they are for integer
    labels, over the union of the class names for string labels; mixing the two kinds
    is an error."""
    if (test.label_names is None) != (reference.label_names is None):
        which = "test" if test.label_names is not None else "reference"
        raise ValueError(
            f"the {which} set has string labels (class names) and the other integer labels: "
            "give both sets the same kind of labels"
        )
    if test.label_names is None:
        return test.labels, reference.labels
    names = np.union1d(test.label_names, reference.label_names)
    return (
        np.searchsorted(names, test.label_names[test.labels]).astype(np.int64),
        np.searchsorted(names, reference.label_names[reference.labels]).astype(np.int64),
    )
