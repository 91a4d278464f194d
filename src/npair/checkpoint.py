"""Crash-safe runs: what a checkpoint holds, when a run resumes from one, and how it is checked.

``run_dir/checkpoint.pt`` (written atomically by rank 0: a temporary file then ``os.replace``, so
the previous checkpoint stays whole until the new one is complete) is a dict with

    model, loss, optimizer, scheduler, scaler       state_dicts (model: the bare EmbeddingModel)
    sampler, stream                                 sampler state; epoch, batches consumed in it,
                                                    DataLoader generator at the epoch's start (npair.stream)
    rng                                             one dict per rank: python, numpy, torch, cuda
    step, history, elapsed_s                        steps done, the RunLogger's evaluation history, time
    config, config_hash, format, version            the resolved config as a plain dict

It loads with ``torch.load(..., weights_only=True)``: numpy's RNG state is stored as a tensor, and any
other numpy array or scalar in a state or the history as a tensor or a Python number (:func:`save`).

``trainer.resume``: ``auto`` continues from run_dir/checkpoint.pt when it exists and metrics.json
does not say ``completed`` (a completed run of the same config is left alone: its recorded final metrics
are returned and nothing is written); ``never`` starts over; a path resumes from that file. A run
directory is never reused for another configuration (npair.identity): under ``auto``, a completed run,
an unfinished one without a checkpoint and a checkpoint whose config differs in more than
:data:`RESUMABLE_DIFFERENCES` all stop the run, naming the keys that differ. With the same config and
seed, a run killed at any point and resumed finishes with the same metrics, bit for bit on CPU, as a
run never interrupted (see npair.stream for the limits with worker-side augmentation).
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from npair import identity
from npair.collectives import gather_objects, on_main
from npair.errors import UserError
from npair.identity import config_hash
from npair.runio import CHECKPOINT_FILE, atomic_torch_save, read_metrics

if TYPE_CHECKING:
    from npair.run_context import Context

log = logging.getLogger("npair.checkpoint")

FORMAT, VERSION = "npair-checkpoint", 2
REQUIRED = ("model", "loss", "optimizer", "scheduler", "scaler", "sampler", "stream", "rng", "step", "config")

# Keys that may differ between the run that wrote a checkpoint and the run resuming it: where things
# go, how often they are logged or saved, how the work is spread (the global batch is the same).
RESUMABLE_DIFFERENCES = (
    "paths",
    "logger",
    "tags",
    "trainer.resume",
    "trainer.checkpoint_every",
    "trainer.save_checkpoint",
    "trainer.max_steps",
    "trainer.eval_every",
    "trainer.log_every",
    "trainer.progress_bar",
    "trainer.threads",
    "trainer.num_workers",
    "trainer.eval_batch_size",
    "trainer.pin_memory",
    "trainer.device",
    "trainer.compile",
    "trainer.distributed",
    "trainer.ddp",
    "loss.gather_across_ranks",
)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, foreign or written for another model."""


class RunDirectoryConflict(RuntimeError):
    """The run directory holds a run of another configuration: it is not reused for this one."""


# ------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """The global RNG states of python, numpy, torch (CPU) and CUDA, in weights_only-loadable types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------------- writing
def save(path: Path, state: dict[str, Any], rng_per_rank: list[dict[str, Any]]) -> None:
    """Write ``state`` plus every rank's RNG state atomically (call on rank 0), in the types that
    ``torch.load(weights_only=True)`` reads (:func:`weights_only_types`)."""
    checkpoint = {"format": FORMAT, "version": VERSION, **state, "rng": rng_per_rank}
    atomic_torch_save(path, weights_only_types(checkpoint))


def weights_only_types(value: Any) -> Any:
    """``value`` with numpy arrays as tensors and numpy scalars as Python numbers, the two kinds of value
    a state or a history may hold that ``torch.load(weights_only=True)`` refuses. Containers without
    them are returned as they are (a state_dict keeps its ``_metadata``)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        converted = {key: weights_only_types(item) for key, item in value.items()}
        if all(converted[key] is item for key, item in value.items()):
            return value
        out = value.copy()
        out.update(converted)
        return out
    if isinstance(value, (list, tuple)):
        converted = [weights_only_types(item) for item in value]
        if all(new is old for new, old in zip(converted, value)):
            return value
        return type(value)(converted)
    return value


class Checkpointer:
    """Writes ``path`` from the run's map of stateful objects (checkpoint key → object with
    ``state_dict``, the same map :func:`restore` loads into), the logger's record and every rank's RNG.

    ``save`` gathers the RNG states to rank 0, which writes the file atomically (the old one stays whole
    if the write fails); ``kept`` says, for error messages, which checkpoint a stopped run left behind.
    """

    def __init__(
        self,
        path: Path,
        stateful: dict[str, Any],
        logger: Any,
        cfg: DictConfig,
        ctx: Context,
        saved_step: int | None,
    ) -> None:
        self.path, self.stateful, self.logger, self.ctx = path, stateful, logger, ctx
        self.enabled = bool(cfg.trainer.save_checkpoint)  # false: nothing is written
        self.saved_step = saved_step  # the step of the checkpoint on disk (None: none written yet)
        self.config, self.config_hash = OmegaConf.to_container(cfg, resolve=True), config_hash(cfg)

    def save(self, step: int) -> None:
        if not self.enabled:
            return
        rng = gather_objects(capture_rng(), self.ctx)
        if self.ctx.is_main:
            states = {key: obj.state_dict() for key, obj in self.stateful.items()}
            save(
                self.path,
                {
                    **states,
                    "step": step,
                    **self.logger.state(),
                    "config": self.config,
                    "config_hash": self.config_hash,
                },
                rng,
            )
        self.saved_step = step

    def kept(self) -> str:
        if not self.enabled:
            return "wrote no checkpoint (trainer.save_checkpoint=false)"
        if self.saved_step is None:
            return "had written no checkpoint yet"
        return f"kept the last good checkpoint, {self.path} (step {self.saved_step})"


# ----------------------------------------------------------------------------------- resuming
@dataclass(frozen=True)
class ResumePlan:
    """What ``trainer.resume`` decided for this run directory."""

    checkpoint: Path | None = None  # resume from this file
    completed: dict[str, float] | None = None  # the run is complete: these are its final metrics
    explicit: bool = False  # the user named the file (config differences only warn)


def plan(resume: str | None, run_dir: Path, cfg: DictConfig) -> ResumePlan:
    """Interpret ``trainer.resume`` (auto | never | <path>) for ``run_dir`` and the run's config ``cfg``."""
    spec = "never" if resume in (None, False, "") else str(resume)
    if spec == "never":
        return ResumePlan()
    if spec == "auto":
        record = read_metrics(run_dir)
        path = run_dir / CHECKPOINT_FILE
        if record and record.get("status") == "completed":
            require_same_config(run_dir, cfg, "a completed run")
            log.info(
                "%s holds a completed run of this config: left alone (trainer.resume=never trains it again)",
                run_dir,
            )
            return ResumePlan(completed=dict(record.get("final", {})))
        if path.exists():  # its config is checked against cfg when it is read (check_config)
            return ResumePlan(checkpoint=path)
        if identity.stored_config(run_dir) is not None:
            require_same_config(run_dir, cfg, "an unfinished run with no checkpoint")
        return ResumePlan()
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"trainer.resume={spec}: no checkpoint file at {path}; use auto, never or the "
            "path of a checkpoint.pt"
        )
    return ResumePlan(checkpoint=path, explicit=True)


def require_same_config(run_dir: Path, cfg: DictConfig, what: str) -> None:
    """Stop unless the config.yaml in ``run_dir`` (which holds ``what``) has ``cfg``'s identity."""
    stored = identity.stored_config(run_dir)
    diffs = identity.differences(stored, cfg) if stored is not None else ["no config.yaml says which it is"]
    if diffs:
        raise RunDirectoryConflict(
            f"{run_dir} holds {what} of another configuration ({identity.listing(diffs)}); it is not "
            "reused for this one. Use another run directory (hydra.run.dir=...), repeat the run's own "
            "overrides, or train over it with trainer.resume=never"
        )


def load(path: Path, advice: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` (``weights_only=True``: tensors and plain Python values, no
    pickled code); every failure names the file and what to do (``advice``; default: how to start over)."""
    advice = advice or f"delete {path} (or set trainer.resume=never) to start the run over"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, foreign pickle ...
        raise CheckpointError(
            f"checkpoint {path} is unreadable — truncated or corrupt "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"{advice}"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a resumable npair training checkpoint (no "
            f"format={FORMAT!r}; written by an older version?); {advice}"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing or ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {ckpt.get('version')} (this code reads {VERSION})"
            f"{' and lacks ' + ', '.join(missing) if missing else ''}; {advice}"
        )
    return ckpt


def config_differences(saved: dict[str, Any], current: DictConfig) -> list[str]:
    """Dotted keys whose values differ between the identities (npair.identity) of a checkpoint's config and
    ``current``, less the keys that may change across a resume (:data:`RESUMABLE_DIFFERENCES`)."""

    def resumable(line: str) -> bool:
        key = line.split(":", 1)[0]
        return any(key == k or key.startswith(k + ".") for k in RESUMABLE_DIFFERENCES)

    return [line for line in identity.differences(saved, current) if not resumable(line)]


def check_config(ckpt: dict[str, Any], cfg: DictConfig, path: Path, explicit: bool) -> None:
    """A checkpoint of another configuration fails (``auto``) or warns (an explicit path)."""
    diffs = config_differences(ckpt["config"], cfg)
    if not diffs:
        return
    listing = "; ".join(diffs[:8]) + (f"; ... {len(diffs) - 8} more" if len(diffs) > 8 else "")
    if explicit:
        log.warning("resuming from %s, written with a different config: %s", path, listing)
        return
    raise CheckpointError(
        f"checkpoint {path} was written by a different configuration ({listing}); resume it with "
        f"the same overrides, start over with trainer.resume=never, or use a new run directory"
    )


def load_module(module: nn.Module, state: dict[str, Any], path: Path, what: str) -> None:
    """``module.load_state_dict(state)`` with an error naming the checkpoint file when shapes or keys
    differ."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        first = " ".join(str(err).split())[:400]
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's {what} ({first}); was it written with "
            "another backbone, dataset.embedding_dim, loss or optimizer? Use the same config, "
            "trainer.resume=never, or a new run directory"
        ) from err


def rng_for_rank(ckpt: dict[str, Any], rank: int) -> dict[str, Any]:
    """This rank's RNG state (rank 0's when the checkpoint was written by fewer ranks)."""
    states = ckpt["rng"]
    return states[rank] if rank < len(states) else states[0]


def logger_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What the RunLogger had recorded when the checkpoint was written: evaluation history, elapsed time, the
    images found unreadable at load time (none in checkpoints written before it kept them)."""
    return {
        "history": [dict(h) for h in ckpt.get("history", [])],
        "elapsed_s": float(ckpt.get("elapsed_s", 0.0)),
        "skipped_at_load": {k: list(v) for k, v in (ckpt.get("skipped_at_load") or {}).items()},
    }


@dataclass(frozen=True)
class Resumed:
    """What a run resumed from a checkpoint continues with, besides its restored objects."""

    step: int  # steps done
    rng: dict[str, Any]  # this rank's RNG states, restored last (:func:`restore_rng`)
    logger_state: dict[str, Any]  # the RunLogger's record then (:func:`logger_state`)


def restore(
    plan: ResumePlan, stateful: dict[str, Any], cfg: DictConfig, ctx: Context, run_dir: Path
) -> Resumed | None:
    """Resume from ``plan.checkpoint`` (None when the plan has none): rank 0 reads it and every rank gets it,
    it must have been written by this config, and each of its states is loaded into the object of the same
    key in ``stateful`` (the map :class:`Checkpointer` saves; ``stream`` is the run's BatchStream), so
    every object has the state the uninterrupted run would have at this step."""
    if plan.checkpoint is None:
        return None
    path = plan.checkpoint
    state = on_main(lambda: load(path), ctx)
    check_config(state, cfg, path, plan.explicit)
    for key, obj in stateful.items():
        load_module(obj, state[key], path, key)
    step, stream = int(state["step"]), stateful["stream"]
    log.info(
        "resuming %s from %s at step %d (epoch %d, batch %d of it)",
        run_dir,
        path,
        step,
        stream.epoch,
        stream.position,
    )
    return Resumed(step, rng_for_rank(state, ctx.rank), logger_state(state))


# ------------------------------------------------------------------------------- stopping
class GracefulStop:
    """SIGINT/SIGTERM ask the loop to stop at the end of the current step (checkpoint, status
    ``interrupted``); a second SIGINT interrupts at once. SLURM sends SIGTERM before killing a job."""

    def __init__(self) -> None:
        self.requested: str | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = name
        log.warning(
            "%s received: stopping after this step (checkpoint kept); send SIGINT again to abort at once",
            name,
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: leave signal handling as it is
            pass
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
