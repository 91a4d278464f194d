"""The endless stream of training batches, epoch after epoch, that knows where it is and can resume there.

Batches depend only on (seed, epoch) (npair.samplers), so the position in the stream is two numbers:
the epoch and how many of its batches were consumed. Resuming re-iterates that epoch's sampler and
skips the consumed batches at the index level (no image is loaded for them), and restores the
DataLoader generator as it was when the epoch started, so the loader draws the same worker seeds.

Samplers that choose batches with the live model (hard negative class mining, ``needs_current_model``):
a DataLoader with workers draws batch indices ``prefetch_factor × num_workers`` batches ahead of the step that
uses them (4 steps with 2 workers, 16 with 8), so the classes would be mined with an older model. For such
a sampler the stream draws each batch's indices when that batch is requested, i.e. right after the previous
optimiser step, and loads its images in the main process with the loader's dataset and collate function
(the DataLoader's own workers are never started): the lag is 0 steps whatever ``trainer.num_workers`` is.

Exactness: the resumed stream yields the very batches the uninterrupted run would have. Random data
augmentation is reproduced exactly when it runs in the main process (``trainer.num_workers=0``: the
torch RNG is restored from the checkpoint); in worker processes it restarts from the epoch's worker
seed, so skipped images do not advance it. A mining sampler (npair_hard_class) re-embeds the
candidates of the skipped batches with the restored model, so its remaining batches of that epoch
may differ from the uninterrupted run's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Sampler


class SkippingBatchSampler(Sampler[list[int]]):
    """A batch sampler whose passes start ``n`` batches in (``skip_next(n)``), until ``skip_next`` is called
    again.

    The skip is not cleared by iterating: torch's multi-process DataLoader iterator calls ``iter()`` twice
    for its first pass, so :class:`BatchStream` sets the skip before every pass instead.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self._skip = 0

    def skip_next(self, n: int) -> None:
        self._skip = int(n)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.sampler), self._skip, None)


def fetch_batch(dataset: Any, indices: list[int], collate_fn: Any) -> Any:
    """Load one batch in this process, as a single-process DataLoader does (``__getitems__`` when present)."""
    getitems = getattr(dataset, "__getitems__", None)
    items = getitems(indices) if getitems else [dataset[i] for i in indices]
    return collate_fn(items)


class BatchStream:
    """``next(stream) -> (epoch, batch)`` forever; ``state_dict()`` is the position after the last batch.

    For a sampler with ``needs_current_model = True`` the batches are drawn and loaded in this process at
    the moment they are requested (see the module docstring), never ahead of the model.
    """

    def __init__(
        self, loader: DataLoader, batch_sampler: SkippingBatchSampler, epoch: int = 0, position: int = 0
    ) -> None:
        if loader.batch_sampler is not batch_sampler:
            raise ValueError("the DataLoader must be built with batch_sampler=<this SkippingBatchSampler>")
        if loader.generator is None:
            raise ValueError("the DataLoader needs an explicit generator (its state is part of the position)")
        self.loader, self.batch_sampler = loader, batch_sampler
        self.in_step = bool(getattr(batch_sampler.sampler, "needs_current_model", False))
        self.epoch, self.position = int(epoch), int(position)
        self._iterator: Iterator[Any] | None = None
        self._generator_at_epoch_start: Tensor | None = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[int, Any]:
        while True:
            if self._iterator is None:
                sampler = self.batch_sampler.sampler
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(self.epoch)
                self.batch_sampler.skip_next(self.position)
                self._generator_at_epoch_start = self.loader.generator.get_state()
                self._iterator = self._in_step_batches() if self.in_step else iter(self.loader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self.position == 0:
                    raise RuntimeError(
                        "the sampler produced no batch for a whole epoch; check the sampler's settings"
                    ) from None
                self._iterator, self.epoch, self.position = None, self.epoch + 1, 0
                continue
            self.position += 1
            return self.epoch, batch

    def _in_step_batches(self) -> Iterator[Any]:
        """The epoch's batches, each drawn from the sampler and loaded only when it is requested."""
        for indices in self.batch_sampler:
            yield fetch_batch(self.loader.dataset, list(indices), self.loader.collate_fn)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches of it consumed, and the loader generator's state when the epoch began."""
        generator = self._generator_at_epoch_start
        if generator is None:  # nothing drawn yet: the generator is still at the epoch start
            generator = self.loader.generator.get_state()
        return {"epoch": self.epoch, "position": self.position, "loader_generator": generator.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches ``state`` had consumed (call before the first ``next``)."""
        if self._iterator is not None:
            raise RuntimeError("BatchStream.load_state_dict must come before the first batch is drawn")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.loader.generator.set_state(state["loader_generator"])
