"""Run logging: metrics.json + train_log.csv always, Weights & Biases optionally.

W&B never prompts: ``logger.mode=auto`` goes online only when credentials are found (WANDB_API_KEY,
WANDB_IDENTITY_TOKEN_FILE or a netrc entry from ``wandb login``) and offline otherwise; an explicit
``logger.mode=online`` without credentials fails before training; ``logger=none`` turns W&B off entirely.
W&B gets ``logger.init_timeout_s`` to start; when it does not (no network), the run stops with a message
saying what to do, and its metrics.json says ``failed`` with the error.

What one W&B run holds (one per run directory: a run resumed from its checkpoint continues the same W&B run,
whose id metrics.json keeps; a ``-m`` sweep makes one per job, each finished before the next starts):

- config: the resolved Hydra config;
- group: ``logger.group`` (``${name}``, i.e. ``<table>/<row>`` for experiment configs), so all seeds of one
  table row sit together; tags: loss, dataset, N×M batch shape, seed, the table and ``cfg.tags``;
- history: ``train/<column>`` every log step (loss, lr, images_per_s, batch_acc, probe_* — the columns of
  train_log.csv) and ``eval/<metric>`` at every evaluation, both at the optimiser step;
- summary: ``final/<metric>``, ``status``, ``config_hash``, ``similarity``, ``seed``, ``name``,
  ``steps_done``, ``wall_time_s`` (what :func:`npair.wandb_source.fetch_records` reads back).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from npair.runio import (
    CONFIG_FILE,
    METRICS_FILE,
    METRICS_SCHEMA_VERSION,
    TRAIN_LOG_FILE,
    atomic_write_json,
    atomic_write_text,
    read_metrics,
)
from npair.wandb_source import wait_for_exit_record, wandb_api_key_available

if TYPE_CHECKING:
    from npair.checkpoint import Resumed
    from npair.data.base import DatasetSplits

log = logging.getLogger("npair.loggers")

# Header fields of metrics.json mirrored into the W&B summary at start (so crashed runs carry them too).
SUMMARY_HEADER_KEYS = (
    "name",
    "seed",
    "config_hash",
    "group_hash",
    "similarity",
    "dataset",
    "loss",
    "sampler",
    "protocol",
    "world_size",
    "resumed_from_step",
)


# ------------------------------------------------------------------------------------ mode
def resolve_wandb_mode(mode: str) -> str:
    """auto → online with credentials, else offline. WANDB_MODE in the environment wins over the config.

    Never returns a mode in which ``wandb.init`` would prompt: ``online`` without credentials raises.
    """
    env = os.environ.get("WANDB_MODE")
    if env in {"online", "offline", "disabled"}:
        chosen = env
    elif mode == "auto":
        chosen = "online" if wandb_api_key_available() else "offline"
    elif mode in {"online", "offline"}:
        chosen = mode
    else:
        raise ValueError(f"logger.mode={mode!r}: use auto, online or offline (or logger=none)")
    if chosen == "online" and not wandb_api_key_available():
        source = "WANDB_MODE=online" if env == "online" else f"logger.mode={mode}"
        raise ValueError(
            f"{source} but no W&B credentials were found (WANDB_API_KEY or `wandb login`); "
            "log in first, or use logger.mode=auto / offline (sync later with `wandb sync`)"
        )
    return chosen


# ------------------------------------------------------------------------------------ naming
def batch_shape_tag(sampler: Any) -> str | None:
    """The batch composition as ``<N>x<M>``: N classes × M images (``60x2``), triplets × 3 (``40x3``),
    pairs × 2, naive tuplets N × (N+1); None for samplers without these keys."""
    sampler = sampler or {}
    get = sampler.get
    if get("n_triplets") is not None:
        return f"{int(get('n_triplets'))}x3"
    if get("n_pairs") is not None:
        return f"{int(get('n_pairs'))}x2"
    if get("n_classes") is not None:
        if get("n_per_class") is not None:
            return f"{int(get('n_classes'))}x{int(get('n_per_class'))}"
        if str(get("name", "")) == "tuplet" or "Tuplet" in str(get("_target_", "")):
            return f"{int(get('n_classes'))}x{int(get('n_classes')) + 1}"
    return None


def run_tags(cfg: DictConfig) -> list[str]:
    """W&B tags: loss, dataset, N×M, ``seed<k>``, the table (``<table>/<row>`` names) and ``cfg.tags``."""
    tags = [
        str(cfg.loss.get("name", "")),
        str(cfg.dataset.get("name", "")),
        batch_shape_tag(cfg.get("sampler")),
        f"seed{cfg.seed}",
    ]
    name = str(cfg.get("name", ""))
    if "/" in name:
        tags.append(name.split("/")[0])
    tags += [str(t) for t in (cfg.logger.get("tags") or cfg.get("tags") or [])]
    unique: list[str] = []
    for tag in tags:
        if tag and tag not in unique:
            unique.append(tag[:64])  # W&B's tag length limit
    return unique


def wandb_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """Where the ``wandb/`` folder goes: ``logger.dir``, else $WANDB_DIR, else the run directory."""
    return Path(cfg.logger.get("dir") or os.environ.get("WANDB_DIR") or run_dir)


class WandbStartError(RuntimeError):
    """W&B did not start (no network within ``logger.init_timeout_s``, refused credentials, ...)."""


# ------------------------------------------------------------------------------------ skipped images
def count_skipped(
    splits: DatasetSplits, carried: dict[str, list[str]]
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """metrics.json's ``skipped_images`` (:meth:`DatasetSplits.skipped_images`: skipped at the header scan and
    at load time, per split) with the files found unreadable at load time before a resume (``carried``, from
    the checkpoint) counted in, each file once; and those files, for the next checkpoint."""
    counts = dict(splits.skipped_images())
    files: dict[str, list[str]] = {}
    for split in ("train", "test"):
        seen = set(carried.get(split, [])) | set(getattr(getattr(splits, split), "runtime_skipped", []))
        files[split] = sorted(seen)
        counts[f"{split}_at_load"] = max(int(counts.get(f"{split}_at_load", 0)), len(seen))
    counts["total"] = sum(v for k, v in counts.items() if k != "total")
    return counts, files


# ------------------------------------------------------------------------------------ the logger
class RunLogger:
    """Writes a run's local record and mirrors it to W&B.

    ``metrics.json`` (schema ``METRICS_SCHEMA_VERSION``) holds provenance, the evaluation history and
    the final metrics; it is rewritten atomically after every evaluation so a killed run keeps what it had.
    """

    CSV_FIELDS = (
        "step",
        "epoch",
        "loss",
        "lr",
        "images_per_s",
        "batch_acc",
        "probe_nway_acc",
        "probe_2way_acc",
        "probe_nway_loss",
        "probe_2way_loss",
        "elapsed_s",
    )
    OFFLINE_FLUSH_TIMEOUT_S = 30.0  # finish(): how long to wait for wandb to write the offline run file

    def __init__(
        self,
        run_dir: Path,
        cfg: DictConfig,
        header: dict[str, Any],
        wandb_id: str | None = None,
        splits: DatasetSplits | None = None,
    ) -> None:
        """``wandb_id``: continue that W&B run (a resumed run directory's, from its metrics.json) instead of
        starting one; ``splits``: the run's data, whose skipped images metrics.json counts at the end."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start = time.time()
        self.record: dict[str, Any] = {
            "schema_version": METRICS_SCHEMA_VERSION,
            "status": "running",
            **header,
            "history": [],
            "final": {},
            "wall_time_s": 0.0,
        }
        self.splits, self._skipped_carried = splits, {}
        _STARTED_HERE.add(self.run_dir.resolve())  # failures_recorded: this process's record of the run
        self.wandb_run = None
        self.wandb_mode: str | None = None
        self._wandb_continues = False  # the W&B run already holds this run's record up to the resumed step
        self._evals_sent = 0  # entries of record["history"] already logged to W&B
        self.flush()  # metrics.json exists before anything can fail (W&B included): a failure is recorded
        self._csv_file = open(self.run_dir / TRAIN_LOG_FILE, "w", newline="")  # noqa: SIM115 (finish closes)
        self._csv = csv.DictWriter(self._csv_file, fieldnames=self.CSV_FIELDS, extrasaction="ignore")
        self._csv.writeheader()
        if cfg.logger.name == "wandb":
            try:
                self._start_wandb(cfg, wandb_id)
            except BaseException:
                self._csv_file.close()
                raise
        self.flush()

    def _start_wandb(self, cfg: DictConfig, wandb_id: str | None) -> None:
        mode = resolve_wandb_mode(str(cfg.logger.get("mode", "auto")))
        if mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        directory = wandb_dir(cfg, self.run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.wandb_mode = mode
        self._wandb_continues = wandb_id is not None
        group = str(cfg.logger.get("group") or cfg.name)
        # The id is chosen, and kept in metrics.json, before W&B starts: a resume continues this W&B run.
        self.record["wandb"] = {
            "mode": mode,
            "id": wandb_id or secrets.token_hex(6),  # no global RNG drawn
            "project": str(cfg.logger.project),
            "group": group,
        }
        self.flush()
        timeout = float(cfg.logger.get("init_timeout_s") or 60)
        try:
            self.wandb_run = wandb.init(
                project=str(cfg.logger.project),
                entity=cfg.logger.get("entity"),
                group=group,
                job_type=str(cfg.logger.get("job_type") or "train"),
                name=f"{cfg.name}/seed{cfg.seed}",
                tags=run_tags(cfg),
                config=OmegaConf.to_container(cfg, resolve=True),
                dir=str(directory),
                mode=mode,
                id=self.record["wandb"]["id"],
                resume="allow",  # the same id again: continue that run (a resumed run directory)
                reinit="finish_previous",  # a sweep job never appends to the previous job's run
                settings=wandb.Settings(silent=True, console="off", init_timeout=timeout),
            )
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WandbStartError(
                f"W&B ({mode}) did not start within logger.init_timeout_s={timeout:g} s: {first}. Check the "
                "network and the W&B credentials, or run with logger.mode=offline (upload later with "
                "`wandb sync`) or logger=none; metrics.json records this failure"
            ) from err
        self.wandb_run.summary.update(
            {
                "status": "running",
                "run_dir": str(self.run_dir.resolve()),
                **{k: self.record.get(k) for k in SUMMARY_HEADER_KEYS},
            }
        )
        self.record["wandb"]["dir"] = str(Path(self.wandb_run.dir).parent)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of this record (:meth:`restore` takes it back): the evaluation history,
        the time elapsed since the run first started and the images found unreadable at load time."""
        skipped = count_skipped(self.splits, self._skipped_carried)[1] if self.splits is not None else {}
        return {
            "history": self.record["history"],
            "elapsed_s": time.time() - self.start,
            "skipped_at_load": skipped,
        }

    def last_evaluation(self) -> dict[str, float]:
        """The metrics of the latest evaluation in the history ({} when there is none)."""
        history = self.record["history"]
        return {k: v for k, v in history[-1].items() if k != "step"} if history else {}

    def restore(self, state: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """Continue an interrupted run's record: its evaluation history and elapsed time (``state``, from
        the checkpoint) and its train_log rows (:func:`previous_train_rows`); wall time counts from the
        first start."""
        self.record["history"] = list(state["history"])
        self.start = time.time() - state["elapsed_s"]
        self._skipped_carried = {k: list(v) for k, v in (state.get("skipped_at_load") or {}).items()}
        if self._wandb_continues:  # the same W&B run already has them
            self._evals_sent = len(self.record["history"])
        for row in rows:
            self.log_train(row, to_wandb=not self._wandb_continues)
        self.flush()

    def log_train(self, row: dict[str, Any], to_wandb: bool = True) -> None:
        row = {**row, "elapsed_s": round(time.time() - self.start, 3)}
        self._csv.writerow(row)
        self._csv_file.flush()
        if self.wandb_run is not None and to_wandb:
            self._send_evals(before=int(row["step"]))
            self.wandb_run.log(
                {f"train/{k}": v for k, v in row.items() if k != "step" and v is not None},
                step=int(row["step"]),
            )

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        log.info("step %d: %s", step, "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        self.record["history"].append({"step": int(step), **metrics})
        self._send_evals(before=None)
        self.flush()

    def _send_evals(self, before: int | None) -> None:
        """Log to W&B the evaluations of ``record["history"]`` it has not seen (those before step ``before``;
        all when None), in step order. A resumed run's history, restored into ``record`` before its train_log
        rows are replayed, thus reaches the new W&B run interleaved with those rows, as in an unbroken run."""
        if self.wandb_run is None:
            return
        history = self.record["history"]
        while self._evals_sent < len(history) and (
            before is None or history[self._evals_sent]["step"] < before
        ):
            entry = history[self._evals_sent]
            self.wandb_run.log(
                {f"eval/{k}": v for k, v in entry.items() if k != "step"}, step=int(entry["step"])
            )
            self._evals_sent += 1

    def flush(self) -> None:
        self.record["wall_time_s"] = round(time.time() - self.start, 3)
        atomic_write_json(self.run_dir / METRICS_FILE, self.record)

    def finish(self, status: str, final: dict[str, float], extra: dict[str, Any] | None = None) -> None:
        self.record["status"] = status
        self.record["final"] = dict(final)
        self.record.update(extra or {})
        if self.splits is not None:  # after the final evaluation read the test images
            self.record["skipped_images"] = count_skipped(self.splits, self._skipped_carried)[0]
        self.flush()
        self._csv_file.close()
        if self.wandb_run is None:
            return
        self._send_evals(before=None)
        summary = {f"final/{key}": value for key, value in final.items()}
        summary.update(
            {
                "status": status,
                "wall_time_s": self.record["wall_time_s"],
                **{k: v for k, v in (extra or {}).items() if isinstance(v, (int, float, str))},
            }
        )
        self.wandb_run.summary.update(summary)
        offline_dir = Path(self.wandb_run.dir).parent
        run_file = offline_dir / f"run-{self.wandb_run.id}.wandb"
        self.wandb_run.finish(exit_code=0 if status == "completed" else 1)
        self.wandb_run = None
        if self.wandb_mode == "offline":
            if not wait_for_exit_record(run_file, timeout_s=self.OFFLINE_FLUSH_TIMEOUT_S):
                log.warning(
                    "%s: W&B had not finished writing the offline run after %.0f s; "
                    "it completes when this process exits",
                    run_file,
                    self.OFFLINE_FLUSH_TIMEOUT_S,
                )
            print(sync_hint(offline_dir, self.record["wandb"]["id"]), flush=True)  # once, on stdout only


def sync_hint(offline_dir: Path, run_id: str) -> str:
    """How to upload one W&B run written offline: every ``offline-run-*-<id>`` folder of it (a resumed run
    directory writes one more, with the same id), uploaded as that one run."""
    return (
        f"W&B offline run {run_id} saved in {offline_dir}\n"
        f"  upload it with: wandb sync {offline_dir.parent}/offline-run-*-{run_id}"
    )


# ------------------------------------------------------------------------------------ resuming
def previous_train_rows(csv_path: Path, upto_step: int) -> list[dict[str, Any]]:
    """The rows of an interrupted run's train_log.csv up to ``upto_step`` (to carry over on resume)."""
    if not csv_path.exists():
        return []
    rows = []
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                if int(row["step"]) > upto_step:
                    break
            except (KeyError, TypeError, ValueError):
                continue
            rows.append({k: _number(v) for k, v in row.items() if k != "elapsed_s"})
    return rows


def _number(text: Any) -> Any:
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in str(text) and "e" not in str(text) else value


class SilentLogger:
    """What ranks other than 0 log: nothing (no files, no W&B); the interface of :class:`RunLogger`."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {"history": []}
        self.start = 0.0

    def state(self) -> dict[str, Any]:
        return {"history": [], "elapsed_s": 0.0}

    def last_evaluation(self) -> dict[str, float]:
        return {}

    def log_train(self, row: dict[str, Any]) -> None:
        pass

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def finish(self, status: str, final: dict[str, float], extra: dict[str, Any] | None = None) -> None:
        pass


def open_run_logger(
    run_dir: Path,
    cfg: DictConfig,
    header: dict[str, Any],
    is_main: bool,
    resumed: Resumed | None,
    splits: DatasetSplits | None = None,
) -> RunLogger | SilentLogger:
    """Rank 0 alone writes the run directory and talks to W&B: it writes config.yaml and opens a
    :class:`RunLogger`, which continues a resumed run's record (history, elapsed time, train_log rows up to
    its step, the W&B run); the other ranks get a :class:`SilentLogger`."""
    log.info(
        "run %s: %s | %s | %s on %s × %d (%d train / %d test images)",
        run_dir,
        header["loss"],
        header["sampler"],
        header["dataset"],
        header["device"],
        header["world_size"],
        header["n_train"],
        header["n_test"],
    )
    if not is_main:
        return SilentLogger()
    wandb_id = None
    if resumed is not None:  # the W&B run of the interrupted run, kept in its metrics.json
        wandb_id = ((read_metrics(run_dir) or {}).get("wandb") or {}).get("id")
    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    carried_rows = previous_train_rows(run_dir / TRAIN_LOG_FILE, resumed.step) if resumed is not None else []
    logger = RunLogger(run_dir, cfg, header, wandb_id=wandb_id, splits=splits)
    if resumed is not None:
        logger.restore(resumed.logger_state, carried_rows)
    return logger


_STARTED_HERE: set[Path] = set()  # run directories whose RunLogger this process opened (failures_recorded)


@contextlib.contextmanager
def failures_recorded(run_dir: Path, is_main: bool) -> Iterator[None]:
    """A run that stops with an error after its metrics.json exists ends with that metrics.json saying
    ``failed`` (``interrupted`` for Ctrl-C) and naming the error, wherever the error came from (set-up, W&B,
    the loop). Only a record that a RunLogger opened inside the block, still ``running``, is changed (never a
    record an earlier run left); the error is re-raised."""
    key = Path(run_dir).resolve()
    _STARTED_HERE.discard(key)
    try:
        yield
    except BaseException as err:
        if is_main and key in _STARTED_HERE:
            record_failure(run_dir, err)
        raise
    finally:
        _STARTED_HERE.discard(key)


def record_failure(run_dir: Path, err: BaseException) -> None:
    """Mark the metrics.json in ``run_dir`` ``failed`` (``interrupted``) with ``err``, if it still says
    ``running`` and this process wrote it."""
    try:
        record = read_metrics(run_dir)
    except ValueError:
        return
    if not record or record.get("status") != "running" or record.get("pid") != os.getpid():
        return
    interrupted = isinstance(err, KeyboardInterrupt)
    record["status"] = "interrupted" if interrupted else "failed"
    if not interrupted:
        record["error"] = f"{type(err).__name__}: {err}"
    atomic_write_json(run_dir / METRICS_FILE, record)
