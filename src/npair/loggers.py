"""Run logging: metrics.json + train_log.csv always, Weights & Biases optionally.

W&B never prompts: ``logger.mode=auto`` goes online only when credentials are found (WANDB_API_KEY,
WANDB_IDENTITY_TOKEN_FILE or a netrc entry from ``wandb login``) and offline otherwise; an explicit
``logger.mode=online`` without credentials fails before training; ``logger=none`` turns W&B off entirely.

What one W&B run holds (one per training run; a ``-m`` sweep makes one per job, each finished before the
next starts):

- config: the resolved Hydra config;
- group: ``logger.group`` (``${name}``, i.e. ``<table>/<row>`` for experiment configs), so all seeds of one
  table row sit together; tags: loss, dataset, N×M batch shape, seed, the table and ``cfg.tags``;
- history: ``train/<column>`` every log step (loss, lr, images_per_s, batch_acc, probe_* — the columns of
  train_log.csv) and ``eval/<metric>`` at every evaluation, both at the optimiser step;
- summary: ``final/<metric>``, ``status``, ``config_hash``, ``similarity``, ``seed``, ``name``,
  ``steps_done``, ``wall_time_s`` (what :func:`npair.wandb_source.fetch_records` reads back).
"""

from __future__ import annotations

import csv
import logging
import os
import time
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
)
from npair.wandb_source import wait_for_exit_record, wandb_api_key_available

if TYPE_CHECKING:
    from npair.checkpoint import Resumed

log = logging.getLogger("npair.loggers")

# Header fields of metrics.json mirrored into the W&B summary at start (so crashed runs carry them too).
SUMMARY_HEADER_KEYS = (
    "name",
    "seed",
    "config_hash",
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

    def __init__(self, run_dir: Path, cfg: DictConfig, header: dict[str, Any]) -> None:
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
        self._csv_file = open(self.run_dir / TRAIN_LOG_FILE, "w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=self.CSV_FIELDS, extrasaction="ignore")
        self._csv.writeheader()
        self.wandb_run = None
        self.wandb_mode: str | None = None
        self._evals_sent = 0  # entries of record["history"] already logged to W&B
        if cfg.logger.name == "wandb":
            self._start_wandb(cfg)
        self.flush()

    def _start_wandb(self, cfg: DictConfig) -> None:
        mode = resolve_wandb_mode(str(cfg.logger.get("mode", "auto")))
        if mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        directory = wandb_dir(cfg, self.run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.wandb_mode = mode
        if directory == self.run_dir:  # one wandb/ per run directory: find them all under the outputs tree
            self._sync_all = f"wandb sync $(find {cfg.paths.output_dir} -type d -name 'offline-run-*')"
        else:  # a shared wandb/ folder (WANDB_DIR or logger.dir)
            self._sync_all = f"cd {directory} && wandb sync --yes"
        self.wandb_run = wandb.init(
            project=str(cfg.logger.project),
            entity=cfg.logger.get("entity"),
            group=str(cfg.logger.get("group") or cfg.name),
            job_type=str(cfg.logger.get("job_type") or "train"),
            name=f"{cfg.name}/seed{cfg.seed}",
            tags=run_tags(cfg),
            config=OmegaConf.to_container(cfg, resolve=True),
            dir=str(directory),
            mode=mode,
            reinit="finish_previous",  # a sweep job never appends to the previous job's run
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.wandb_run.summary.update(
            {
                "status": "running",
                "run_dir": str(self.run_dir.resolve()),
                **{k: self.record.get(k) for k in SUMMARY_HEADER_KEYS},
            }
        )
        self.record["wandb"] = {
            "mode": mode,
            "id": self.wandb_run.id,
            "project": str(cfg.logger.project),
            "group": str(cfg.logger.get("group") or cfg.name),
            "dir": str(Path(self.wandb_run.dir).parent),
        }

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of this record (:meth:`restore` takes it back): the evaluation history
        and the time elapsed since the run first started."""
        return {"history": self.record["history"], "elapsed_s": time.time() - self.start}

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
        for row in rows:
            self.log_train(row)
        self.flush()

    def log_train(self, row: dict[str, Any]) -> None:
        row = {**row, "elapsed_s": round(time.time() - self.start, 3)}
        self._csv.writerow(row)
        self._csv_file.flush()
        if self.wandb_run is not None:
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
            message = (
                f"W&B offline run saved in {offline_dir}\n"
                f"  upload it with: wandb sync {offline_dir}\n"
                f"  (every offline run at once: {self._sync_all})"
            )
            print(message, flush=True)
            log.info(message.replace("\n", " "))


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


def open_run_logger(run_dir: Path, cfg: DictConfig, header: dict[str, Any], is_main: bool,
                    resumed: Resumed | None) -> RunLogger | SilentLogger:
    """Rank 0 alone writes the run directory and talks to W&B: it writes config.yaml and opens a
    :class:`RunLogger`, which continues a resumed run's record (history, elapsed time, train_log rows up to
    its step); the other ranks get a :class:`SilentLogger`."""
    log.info("run %s: %s | %s | %s on %s × %d (%d train / %d test images)", run_dir, header["loss"],
             header["sampler"], header["dataset"], header["device"], header["world_size"], header["n_train"],
             header["n_test"])
    if not is_main:
        return SilentLogger()
    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    carried_rows = previous_train_rows(run_dir / TRAIN_LOG_FILE, resumed.step) if resumed is not None else []
    logger = RunLogger(run_dir, cfg, header)
    if resumed is not None:
        logger.restore(resumed.logger_state, carried_rows)
    return logger
