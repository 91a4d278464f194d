"""The Hydra entry point and the one training loop.

    python -m npair.train                                   # N-pair-mc on glyphs, CPU or CUDA
    python -m npair.train loss=triplet sampler=triplet      # a baseline
    python -m npair.train -m loss=triplet,npair_mc seed=0,1 # a sweep: one run directory per job

Read :func:`train` top to bottom: the run's parts (data, model, loss, sampler, evaluator, optimiser; built
by npair.build), resuming them from a checkpoint, then the step loop at its centre (forward, loss, backward,
step, log, evaluate, checkpoint), then the final evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm.auto import tqdm

from npair import checkpoint as ckpt
from npair import collectives, errors, guards, locks, run_context, sampler_defaults
from npair.build import (
    attach_embedder,
    autocast_dtype,
    batch_stream,
    build_loss,
    build_probe,
    build_sampler,
    build_splits,
    build_train_model,
    check_compatible,
    evaluate_model,
    make,
    pick_device,
    run_header,
    seed_everything,
)
from npair.configuration import CONFIG_DIR, register_resolvers
from npair.data.base import DatasetSplits
from npair.loggers import failures_recorded, open_run_logger
from npair.probe import batch_accuracy
from npair.run_context import Context
from npair.runio import CHECKPOINT_FILE, remove_temp_files

log = logging.getLogger("npair.train")
INTERRUPTED = "interrupted after step %d: the run %s; resume with the same command and hydra.run.dir=%s"

# Before Hydra composes a config: launcher workers import this module to find the task function.
register_resolvers()


# ----------------------------------------------------------------------------------------- the run
def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train and evaluate one configuration; rank 0 writes everything into ``run_dir``. Returns final metrics.

    The settings are checked first (npair.guards.SETTINGS). Rank 0 then holds the run directory's lock
    (npair.locks; another process training into it is waited for), removes the temporary files of writes
    killed half-way, and records any failure in metrics.json. Under torchrun with ``trainer=ddp`` every rank
    calls this (npair.run_context: what W ranks change).
    """
    guards.validate_settings(cfg)  # before anything of the run is built or written
    run_dir = Path(run_dir)
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    ctx, device = run_context.setup(cfg.trainer, pick_device(str(cfg.trainer.device)))

    def waiting(holder: str) -> None:
        log.warning("%s is in use by %s: waiting until it is done", run_dir, holder)

    try:
        with (
            locks.locked(locks.run_lock(run_dir), on_wait=waiting, enabled=ctx.is_main),
            failures_recorded(run_dir, ctx.is_main),
        ):
            if ctx.is_main:
                remove_temp_files(run_dir)
            return train(cfg, run_dir, ctx, device)
    finally:
        run_context.teardown(ctx)


def train(cfg: DictConfig, run_dir: Path, ctx: Context, device: torch.device) -> dict[str, float]:
    """One run on this rank: its parts, restored when resuming; the step loop; the final evaluation."""
    trainer = cfg.trainer
    resume = collectives.on_main(lambda: ckpt.plan(trainer.resume, run_dir, cfg), ctx)
    if resume.completed is not None:  # left alone
        return resume.completed
    run_context.gather_negatives(cfg, ctx)
    amp_dtype = autocast_dtype(trainer.precision, device)
    seed_everything(int(cfg.seed), bool(trainer.deterministic))

    # ---- the run's parts, in the order in which they draw random numbers
    with collectives.main_process_first(ctx):
        splits: DatasetSplits = build_splits(cfg)  # with validation classes carved out for selection
    per_rank_batch = guards.per_rank_batch(cfg.sampler, ctx.world_size)  # impossible combinations fail here,
    guards.check_sampler_fits_data(cfg, splits)  # before any file of the run exists
    model, channels_last = build_train_model(cfg, device, sync_bn=ctx.enabled and trainer.ddp.sync_batchnorm)
    loss_fn: nn.Module = build_loss(cfg, splits).to(device)
    sampler = build_sampler(cfg, splits, per_rank_batch, ctx.world_size, ctx.rank)
    check_compatible(loss_fn, sampler, cfg)
    evaluator = make(cfg.eval)
    guards.check_eval_fits_data(cfg, evaluator, splits)
    optimizer = make(cfg.optimizer)(params=[p for m in (model, loss_fn) for p in m.parameters()])
    scheduler = make(cfg.scheduler)(optimizer=optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    attach_embedder(sampler, model, splits.train, trainer, device)  # hard negative class mining
    batches = batch_stream(splits.train, sampler, trainer, device, int(cfg.seed))
    probe = build_probe(cfg, splits.train)
    # Everything a checkpoint restores, by checkpoint key: saved and loaded through this one map.
    stateful = {"model": model, "loss": loss_fn, "optimizer": optimizer, "scheduler": scheduler,
                "scaler": scaler, "sampler": sampler, "stream": batches}  # fmt: skip

    resumed = ckpt.restore(resume, stateful, cfg, ctx, run_dir)  # None, or the states of the interrupted run
    resumed_at = resumed.step if resumed else None
    header = run_header(cfg, splits, evaluator, device, amp_dtype, probe, ctx.world_size, resumed_at)
    logger = open_run_logger(run_dir, cfg, header, ctx.is_main, resumed, splits)
    saver = ckpt.Checkpointer(run_dir / CHECKPOINT_FILE, stateful, logger, cfg, ctx, resumed_at)

    def evaluate_and_save(step: int) -> dict[str, float]:
        metrics = evaluate_model(model, loss_fn, splits, evaluator, cfg, device) if ctx.is_main else {}
        logger.log_eval(step, metrics)
        saver.save(step)
        return metrics

    # ---- the step loop; loss_scale: W·L under gathered negatives, as DDP averages the W ranks' gradients
    train_model, train_loss, loss_scale = run_context.for_training(model, loss_fn, trainer, ctx, device)
    max_steps, eval_every, log_every = int(trainer.max_steps), int(trainer.eval_every), int(trainer.log_every)
    checkpoint_every, n_per_class = int(trainer.checkpoint_every or 0), int(cfg.sampler.get("n_per_class", 2))
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    if resumed:  # last: everything above that drew random numbers has drawn them
        ckpt.restore_rng(resumed.rng)
    step = done = resumed_at or 0
    status, final, stop = "completed", {}, ckpt.GracefulStop()
    train_model.train()
    bar = progress_bar(cfg, step, ctx)
    window_start, window_images = time.perf_counter(), 0
    try:
        with stop.installed():
            if trainer.eval_at_start and step == 0:
                evaluate_and_save(0)
            for step in range(done + 1, max_steps + 1):
                epoch, (images, labels) = next(batches)
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = labels.to(device, non_blocking=True)
                with autocast():
                    embeddings = train_model(images)
                loss = train_loss(embeddings.float(), labels)
                guards.require_finite_loss(loss, step, saver.kept, ctx, device)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss * loss_scale if loss_scale != 1 else loss).backward()
                if trainer.grad_clip:
                    scaler.unscale_(optimizer)
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), float(trainer.grad_clip))
                else:
                    grad_norm = guards.gradient_norm([model, loss_fn])
                if not scaler.is_enabled():  # fp16: the scaler itself skips steps with inf/NaN gradients
                    guards.require_finite_grad(grad_norm, step, saver.kept())
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                done = step
                window_images += len(images) * ctx.world_size
                if step % log_every == 0 or step == max_steps:
                    rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                    lr, layout = scheduler.get_last_lr()[0], sampler.layout
                    row = train_row(
                        step, epoch, loss, embeddings, loss_scale, ctx, lr, rate, layout, n_per_class
                    )
                    if probe is not None and ctx.is_main:
                        row.update(probe(model, device))
                    logger.log_train(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.0f}")
                    window_start, window_images = time.perf_counter(), 0
                bar.update(1)
                if eval_every and step % eval_every == 0 and step < max_steps:
                    evaluate_and_save(step)
                elif checkpoint_every and step % checkpoint_every == 0 and step < max_steps:
                    saver.save(step)
                if step < max_steps and collectives.any_rank(stop.requested is not None, ctx, device):
                    if saver.saved_step != step:  # SIGINT/SIGTERM: stop with a checkpoint of this step
                        saver.save(step)
                    raise KeyboardInterrupt
            bar.close()
            # killed after the final evaluation was saved: it is in the history
            final = logger.last_evaluation() if resumed_at == max_steps else evaluate_and_save(max_steps)
    except KeyboardInterrupt:
        bar.close()
        status, final = "interrupted", logger.last_evaluation()
        log.warning(INTERRUPTED, done, saver.kept(), run_dir)
    except BaseException as err:
        bar.close()
        logger.finish("failed", {}, {"steps_done": done, "error": f"{type(err).__name__}: {err}"})
        raise
    logger.finish(status, final, {"steps_done": done})
    if status == "interrupted":
        raise KeyboardInterrupt
    return collectives.broadcast_object(final, ctx)


def progress_bar(cfg: DictConfig, step: int, ctx: Context) -> tqdm:
    """The step bar of the main rank (``trainer.progress_bar``), starting at ``step`` when resuming."""
    return tqdm(
        total=int(cfg.trainer.max_steps),
        initial=step,
        desc=cfg.name,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not (cfg.trainer.progress_bar and ctx.is_main),
    )


def train_row(
    step: int,
    epoch: int,
    loss: Tensor,
    embeddings: Tensor,
    loss_scale: float,
    ctx: Context,
    lr: float,
    images_per_s: float,
    layout: str,
    n_per_class: int,
) -> dict[str, Any]:
    """One train_log.csv row: the global batch's loss and its training-curve accuracy (docs/paper.md §5.5)."""
    batch_loss = loss if loss_scale != 1 else collectives.mean_over_ranks(loss, ctx)  # the global batch's
    global_batch = collectives.gather_no_grad(embeddings.detach().float()) if ctx.enabled else embeddings
    return {
        "step": step,
        "epoch": epoch,
        "loss": batch_loss.item(),
        "lr": lr,
        "images_per_s": round(images_per_s, 1),
        "batch_acc": batch_accuracy(global_batch, layout, n_per_class),
    }


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        final = run(cfg, run_dir)
    except KeyboardInterrupt:
        print(f"Interrupted: partial results kept in {run_dir}", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # a user's mistake: its message alone (npair.errors); a bug: its traceback
        errors.raise_for_hydra(err)
    first = next(iter(final.values()), None)
    return first if isinstance(first, float) and math.isfinite(first) else None


def cli() -> None:
    """``python -m npair.train`` and ``npair-train``: Hydra's command line, plus ``--debug``; every loss gets
    its default sampler first (npair.sampler_defaults)."""
    try:
        sampler_defaults.register_default_samplers(sys.argv[1:])
    except Exception as err:
        if not errors.is_user_error(err):
            raise  # a malformed override or config: Hydra reports it below, in its own words
    errors.hydra_cli(main)


if __name__ == "__main__":
    # Call the task function of the importable module, not of __main__, so launchers that pickle it
    # (joblib, submitit) pickle a reference instead of this module's globals.
    from npair.train import cli

    cli()
