"""The Hydra entry point and the one training loop.

    python -m npair.train                                   # N-pair-mc on glyphs, CPU or CUDA
    python -m npair.train loss=triplet sampler=triplet      # a baseline
    python -m npair.train -m loss=triplet,npair_mc seed=0,1 # a sweep: one run directory per job

Read top to bottom: set up (device, seeds, data, model, loss, sampler, evaluator, optimiser), then the
step loop (forward, loss, backward, step, log, evaluate), then the final evaluation and checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from npair import checkpoint as ckpt
from npair import ddp, guards
from npair import distributed as npd
from npair.data.base import DatasetSplits
from npair.data.validation import carve_validation
from npair.evaluation import EmbeddingSet
from npair.evaluation.embed import embed_dataset
from npair.loggers import RunLogger
from npair.models import build_model
from npair.runio import CHECKPOINT_FILE, CONFIG_FILE, atomic_write_text, config_hash, git_commit
from npair.samplers import current_model_embedder
from npair.stream import BatchStream, SkippingBatchSampler

log = logging.getLogger("npair.train")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# Cached, so a sweep's jobs (joblib/submitit workers, other processes) resolve hydra.sweep.dir to the launching
# process's id, i.e. the directory the launcher created, and a requeued job finds its run directory again.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True, use_cache=True)


def compose_train(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config ``python -m npair.train <overrides>`` runs (configs/train.yaml), composed in-process."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


# ------------------------------------------------------------------------------------ set-up helpers
def make(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a config-group node (its ``_target_``), dropping the descriptive ``name`` key."""
    container = OmegaConf.to_container(node, resolve=True)
    container.pop("name", None)
    return instantiate(container, **kwargs)


def build_loss(cfg: DictConfig, splits: DatasetSplits) -> nn.Module:
    """The configured loss; ``loss.num_classes: null`` (a classifier) becomes the number of training classes."""
    kwargs = {"num_classes": splits.num_train_classes} if cfg.loss.get("num_classes", 0) is None else {}
    return make(cfg.loss, **kwargs)


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={spec!r} but CUDA is not available; use trainer.device=cpu or auto")
    return device


def autocast_dtype(precision: str | int, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``trainer.precision`` (None = full fp32)."""
    precision = str(precision)
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    choices = {"32": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "16": torch.float16}
    if precision not in choices:
        raise ValueError(f"trainer.precision={precision!r}: use auto, 32, bf16 or fp16")
    if choices[precision] is torch.float16 and device.type != "cuda":
        raise ValueError("trainer.precision=fp16 needs CUDA; use bf16 or 32 on CPU")
    return choices[precision]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def check_compatible(loss_fn: nn.Module, sampler: Any, cfg: DictConfig) -> None:
    """The sampler must produce the batch layout the loss reads (see npair.losses)."""
    want, have = getattr(loss_fn, "layout", "any"), getattr(sampler, "layout", None)
    if want != "any" and want != have:
        raise ValueError(
            f"loss={cfg.loss.name} reads {want!r} batches but sampler={cfg.sampler.name} makes {have!r} batches; "
            f"choose a sampler with layout {want!r} (e.g. the one its experiment configs use)"
        )


@torch.no_grad()
def batch_accuracy(embeddings: Tensor, layout: str, n_per_class: int) -> float | None:
    """The paper's training-curve accuracy on the current batch (inner product, paper.md §5.5).

    class_blocks: the N-way accuracy — an anchor (image 1 of its class block) is right when its own
    positive (image 2) is the most similar of the N positives. triplets: the 2-way accuracy f·f⁺ > f·f⁻.
    """
    emb = embeddings.detach().float()
    if layout == "class_blocks" and n_per_class >= 2:
        blocks = emb.view(-1, n_per_class, emb.shape[1])
        scores = blocks[:, 0] @ blocks[:, 1].T
        return (scores.argmax(1) == torch.arange(len(scores), device=emb.device)).float().mean().item()
    if layout == "triplets":
        a, p, n = emb.view(-1, 3, emb.shape[1]).unbind(1)
        return ((a * p).sum(1) > (a * n).sum(1)).float().mean().item()
    return None


class Probe:
    """A fixed batch of N training classes × 2 images, scored the way the paper's training-curve figure
    measures every model (paper.md §5.5): N-way and 2-way ("triplet") accuracy and loss on inner products
    (``trainer.probe_similarity=cosine``: on cosines, for models trained on normalised embeddings).

    N-way: anchor i is right when its own positive is the most similar of the N positives; the N-way loss
    is the N-pair-mc loss without regulariser. 2-way: anchor i against its positive and the positive of
    class i+1 (mod N); the 2-way loss is log(1 + exp(f·f⁻ − f·f⁺)).
    """

    def __init__(self, dataset: Any, n_classes: int, seed: int, similarity: str = "inner_product") -> None:
        if similarity not in ("inner_product", "cosine"):
            raise ValueError(f"trainer.probe_similarity={similarity!r}: use inner_product or cosine")
        self.cosine = similarity == "cosine"
        labels = np.asarray(dataset.labels)
        rng = np.random.default_rng(seed + 7919)
        eligible = [c for c in np.unique(labels) if np.sum(labels == c) >= 2]
        chosen = rng.choice(eligible, size=min(n_classes, len(eligible)), replace=False)
        self.indices = [int(i) for c in chosen for i in rng.choice(np.flatnonzero(labels == c), 2, replace=False)]
        self.images = torch.stack([dataset[i][0] for i in self.indices])
        self.n = len(chosen)

    @torch.no_grad()
    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        was_training = model.training
        model.eval()
        emb = model(self.images.to(device)).float().view(self.n, 2, -1)
        model.train(was_training)
        if self.cosine:
            emb = nn.functional.normalize(emb, dim=-1)
        scores = emb[:, 0] @ emb[:, 1].T
        target = torch.arange(self.n, device=scores.device)
        pos, neg = scores.diagonal(), scores[target, (target + 1) % self.n]
        return {"probe_nway_acc": (scores.argmax(1) == target).float().mean().item(),
                "probe_2way_acc": (pos > neg).float().mean().item(),
                "probe_nway_loss": nn.functional.cross_entropy(scores, target).item(),
                "probe_2way_loss": nn.functional.softplus(neg - pos).mean().item()}


def evaluate(model: nn.Module, loss_fn: nn.Module, splits: DatasetSplits, evaluator: Any,
             cfg: DictConfig, device: torch.device) -> dict[str, float]:
    """Embed the test split (and the training split when the protocol needs it) and run the evaluator."""
    bs, workers = int(cfg.trainer.eval_batch_size), int(cfg.trainer.num_workers)
    test = embed_dataset(model, splits.test, batch_size=bs, device=device, num_workers=workers)
    if hasattr(loss_fn, "logits"):  # a softmax classifier: its own predictions give the † accuracy
        with torch.no_grad():
            test.logits = loss_fn.logits(torch.from_numpy(test.embeddings).to(device)).float().cpu().numpy()
    reference: EmbeddingSet | None = None
    if evaluator.needs_reference:
        reference = embed_dataset(model, splits.train, batch_size=bs, device=device, num_workers=workers)
    model.train()
    return {k: float(v) for k, v in evaluator(test, reference, extras=splits.extras).items()}


# ----------------------------------------------------------------------------------------- the run
def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train and evaluate one configuration; rank 0 writes everything into ``run_dir``. Returns final metrics.

    Under torchrun with ``trainer=ddp`` every rank calls this (npair.ddp says what changes with W ranks).
    """
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    ctx, device = ddp.setup(cfg.trainer, pick_device(str(cfg.trainer.device)))
    try:
        return train(cfg, Path(run_dir), ctx, device)
    finally:
        ddp.teardown(ctx)


def train(cfg: DictConfig, run_dir: Path, ctx: ddp.Context, device: torch.device) -> dict[str, float]:
    trainer = cfg.trainer
    resume = ddp.on_main(lambda: ckpt.plan(trainer.resume, run_dir), ctx)
    if resume.completed is not None:
        log.info("%s holds a completed run: left alone (trainer.resume=never trains it again)", run_dir)
        return resume.completed
    ddp.gather_negatives(cfg, ctx)
    amp_dtype = autocast_dtype(trainer.precision, device)
    seed_everything(int(cfg.seed), bool(trainer.deterministic))

    with ddp.main_process_first(ctx):
        splits: DatasetSplits = instantiate(cfg.dataset.build)
        splits = carve_validation(splits, cfg.dataset.get("validation"))  # validation classes for selection
    per_rank_batch = guards.per_rank_batch(cfg.sampler, ctx.world_size)  # impossible combinations fail here,
    guards.check_sampler_fits_data(cfg, splits)                          # before any file of the run exists
    model = build_model(cfg.backbone, int(cfg.dataset.embedding_dim))
    if ctx.enabled and trainer.ddp.sync_batchnorm:
        model = ddp.sync_batchnorm(model, device)
    model = model.to(device)
    channels_last = device.type == "cuda" if trainer.channels_last == "auto" else bool(trainer.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn: nn.Module = build_loss(cfg, splits).to(device)
    sampler = make(cfg.sampler, labels=np.asarray(splits.train.labels), seed=int(cfg.seed), **per_rank_batch,
                   num_replicas=ctx.world_size, rank=ctx.rank)
    check_compatible(loss_fn, sampler, cfg)
    evaluator = make(cfg.eval)
    guards.check_eval_fits_data(cfg, evaluator, splits)
    optimizer = make(cfg.optimizer)(params=[p for m in (model, loss_fn) for p in m.parameters()])
    scheduler = make(cfg.scheduler)(optimizer=optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    if hasattr(sampler, "set_embedder"):  # hard negative class mining embeds candidates with the live model
        sampler.set_embedder(current_model_embedder(model, splits.train, device, trainer.eval_batch_size))
    batch_sampler = SkippingBatchSampler(sampler)
    pin_memory = device.type == "cuda" if trainer.pin_memory == "auto" else bool(trainer.pin_memory)
    loader = torch.utils.data.DataLoader(
        splits.train, batch_sampler=batch_sampler, num_workers=int(trainer.num_workers), pin_memory=pin_memory,
        persistent_workers=int(trainer.num_workers) > 0, generator=torch.Generator().manual_seed(int(cfg.seed)),
    )
    batches = BatchStream(loader, batch_sampler)
    probe_similarity = str(trainer.get("probe_similarity", "inner_product"))
    probe = None
    if trainer.probe_classes:
        probe = Probe(splits.train, int(trainer.probe_classes), int(cfg.seed), probe_similarity)

    step, resumed_at = 0, None  # resume: every state the uninterrupted run would have at this step
    if resume.checkpoint is not None:
        path = resume.checkpoint
        state = ddp.on_main(lambda: ckpt.load(path), ctx)
        ckpt.check_config(state, cfg, path, resume.explicit)
        for module, key in ((model, "model"), (loss_fn, "loss"), (optimizer, "optimizer"), (scheduler, "scheduler"),
                            (scaler, "scaler"), (sampler, "sampler"), (batches, "stream")):
            ckpt.load_module(module, state[key], path, key)
        step = resumed_at = int(state["step"])
        resumed_rng, resumed_log = ckpt.rng_for_rank(state, ctx.rank), ckpt.logger_state(state)
        del state
        log.info("resuming %s from %s at step %d (epoch %d, batch %d of it)", run_dir, path, step,
                 batches.epoch, batches.position)

    header = {
        "name": cfg.name, "seed": int(cfg.seed), "config_hash": config_hash(cfg), "git": git_commit(),
        "similarity": getattr(evaluator, "similarity", None), "device": describe_device(device),
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "dataset": cfg.dataset.name, "loss": cfg.loss.name, "sampler": cfg.sampler.name,
        "n_train": len(splits.train), "n_test": len(splits.test), "protocol": splits.protocol,
        "probe_classes": probe.n if probe else 0, "tags": list(cfg.get("tags", [])), "torch": torch.__version__,
        "world_size": ctx.world_size,
        "host": socket.gethostname(), "pid": os.getpid(),
        "resumed_from_step": resumed_at,
    }
    if ctx.is_main:  # rank 0 alone writes the run directory and talks to W&B
        atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        carried_rows = ckpt.previous_train_rows(run_dir / "train_log.csv", step) if resumed_at is not None else []
        logger: Any = RunLogger(run_dir, cfg, header)
        if resumed_at is not None:
            ckpt.restore_logger(logger, resumed_log, carried_rows)
    else:
        logger = ddp.SilentLogger()
    log.info("run %s: %s | %s | %s on %s × %d (%d train / %d test images)", run_dir, cfg.loss.name,
             cfg.sampler.name, cfg.dataset.name, header["device"], ctx.world_size, len(splits.train), len(splits.test))

    train_model, train_loss = ddp.wrap(model, ctx, device), ddp.wrap(loss_fn, ctx, device)
    if trainer.compile:
        train_model = torch.compile(train_model)
    loss_scale = ddp.loss_scale(loss_fn, ctx)  # W·L under gathered negatives: DDP averages W partial gradients
    max_steps, eval_every, log_every = int(trainer.max_steps), int(trainer.eval_every), int(trainer.log_every)
    checkpoint_every = int(trainer.checkpoint_every or 0)
    n_per_class = int(cfg.sampler.get("n_per_class", 2))
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    saved_step = resumed_at
    resolved_config, resolved_hash = OmegaConf.to_container(cfg, resolve=True), header["config_hash"]

    def checkpoint(step: int) -> None:
        """Every rank's RNG state to rank 0, which writes checkpoint.pt atomically (the old one stays if it fails)."""
        nonlocal saved_step
        if not trainer.save_checkpoint:
            return
        rng = ddp.gather_objects(ckpt.capture_rng(), ctx)
        if ctx.is_main:
            ckpt.save(run_dir / CHECKPOINT_FILE, {
                "model": model.state_dict(), "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "sampler": sampler.state_dict(),
                "stream": batches.state_dict(), "step": step, "history": logger.record["history"],
                "elapsed_s": time.time() - logger.start, "config": resolved_config, "config_hash": resolved_hash,
            }, rng)
        saved_step = step

    def kept() -> str:
        if not trainer.save_checkpoint:
            return "wrote no checkpoint (trainer.save_checkpoint=false)"
        if saved_step is None:
            return "had written no checkpoint yet"
        return f"kept the last good checkpoint, {run_dir / CHECKPOINT_FILE} (step {saved_step})"

    def evaluate_and_log(step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if ctx.is_main:
            metrics = evaluate(model, loss_fn, splits, evaluator, cfg, device)
            logger.log_eval(step, metrics)
            log.info("step %d: %s", step, "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        checkpoint(step)
        return metrics

    if resumed_at is not None:  # last: everything above that drew random numbers has drawn them
        ckpt.restore_rng(resumed_rng)
    status, final, done = "completed", {}, step
    stop = ckpt.GracefulStop()
    train_model.train()
    bar = tqdm(total=max_steps, initial=step, desc=cfg.name, unit="step", dynamic_ncols=True, mininterval=1.0,
               disable=not (trainer.progress_bar and ctx.is_main))
    window_start, window_images = time.perf_counter(), 0
    try:
        with stop.installed():
            if trainer.eval_at_start and step == 0:
                evaluate_and_log(0)
            for step in range(done + 1, max_steps + 1):
                epoch, (images, labels) = next(batches)
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = labels.to(device, non_blocking=True)
                with autocast():
                    embeddings = train_model(images)
                loss = train_loss(embeddings.float(), labels)
                guards.require_finite_loss(ddp.any_rank(not torch.isfinite(loss), ctx, device), loss, step, kept())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss * loss_scale if loss_scale != 1 else loss).backward()
                if trainer.grad_clip:
                    scaler.unscale_(optimizer)
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), float(trainer.grad_clip))
                else:
                    grad_norm = guards.gradient_norm([model, loss_fn])
                if not scaler.is_enabled():  # fp16: the scaler itself skips steps with inf/NaN gradients
                    guards.require_finite_grad(grad_norm, step, kept())
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                done = step
                window_images += len(images) * ctx.world_size
                if step % log_every == 0 or step == max_steps:
                    rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                    batch_loss = loss if loss_scale != 1 else ddp.mean_over_ranks(loss, ctx)  # the global batch's
                    global_batch = npd.gather_no_grad(embeddings.detach().float()) if ctx.enabled else embeddings
                    row = {"step": step, "epoch": epoch, "loss": batch_loss.item(), "lr": scheduler.get_last_lr()[0],
                           "images_per_s": round(rate, 1),
                           "batch_acc": batch_accuracy(global_batch, sampler.layout, n_per_class)}
                    if probe is not None and ctx.is_main:
                        row.update(probe(model, device))
                    logger.log_train(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.0f}")
                    window_start, window_images = time.perf_counter(), 0
                bar.update(1)
                if eval_every and step % eval_every == 0 and step < max_steps:
                    evaluate_and_log(step)
                elif checkpoint_every and step % checkpoint_every == 0 and step < max_steps:
                    checkpoint(step)
                if step < max_steps and ddp.any_rank(stop.requested is not None, ctx, device):  # SIGINT/SIGTERM
                    if saved_step != step:
                        checkpoint(step)
                    raise KeyboardInterrupt
            bar.close()
            if resumed_at == max_steps:  # killed after the final evaluation was saved: it is in the history
                final = {k: v for k, v in logger.record["history"][-1].items() if k != "step"} if ctx.is_main else {}
            else:
                final = evaluate_and_log(max_steps)
    except KeyboardInterrupt:
        bar.close()
        status = "interrupted"
        final = dict(logger.record["history"][-1]) if logger.record["history"] else {}
        final.pop("step", None)
        log.warning("interrupted after step %d: the run %s; resume with the same command and hydra.run.dir=%s",
                    done, kept(), run_dir)
    except BaseException as err:
        bar.close()
        logger.finish("failed", {}, {"steps_done": done, "error": f"{type(err).__name__}: {err}"})
        raise
    logger.finish(status, final, {"steps_done": done})
    if status == "interrupted":
        raise KeyboardInterrupt
    return ddp.broadcast_object(final, ctx)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        final = run(cfg, run_dir)
    except KeyboardInterrupt:
        print(f"Interrupted: partial results kept in {run_dir}", file=sys.stderr)
        sys.exit(130)
    first = next(iter(final.values()), None)
    return first if isinstance(first, float) and math.isfinite(first) else None


if __name__ == "__main__":
    # Call the task function of the importable module, not of __main__, so launchers that pickle it
    # (joblib, submitit) pickle a reference instead of this module's globals.
    from npair.train import main as task

    task()
