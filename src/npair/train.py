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
import sys
import time
from collections.abc import Iterator
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

from npair.data.base import DatasetSplits
from npair.evaluation import EmbeddingSet
from npair.evaluation.embed import embed_dataset
from npair.loggers import RunLogger
from npair.models import build_model
from npair.runio import CHECKPOINT_FILE, CONFIG_FILE, atomic_torch_save, atomic_write_text, config_hash, git_commit

log = logging.getLogger("npair.train")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)


# ------------------------------------------------------------------------------------ set-up helpers
def make(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a config-group node (its ``_target_``), dropping the descriptive ``name`` key."""
    container = OmegaConf.to_container(node, resolve=True)
    container.pop("name", None)
    return instantiate(container, **kwargs)


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


def epochs(loader: torch.utils.data.DataLoader, sampler: Any, start_epoch: int = 0) -> Iterator[tuple[int, Any]]:
    """Batches forever: each pass over the sampler is one epoch (the sampler re-shuffles per epoch)."""
    epoch = start_epoch
    while True:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        produced = False
        for batch in loader:
            produced = True
            yield epoch, batch
        if not produced:
            raise RuntimeError("the sampler produced no batch for a whole epoch; check the sampler's settings")
        epoch += 1


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
    measures every model (paper.md §5.5): N-way and 2-way ("triplet") accuracy and loss on inner products.

    N-way: anchor i is right when its own positive is the most similar of the N positives; the N-way loss
    is the N-pair-mc loss without regulariser. 2-way: anchor i against its positive and the positive of
    class i+1 (mod N); the 2-way loss is log(1 + exp(f·f⁻ − f·f⁺)).
    """

    def __init__(self, dataset: Any, n_classes: int, seed: int) -> None:
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
    """Train and evaluate one configuration; writes everything into ``run_dir``. Returns final metrics."""
    trainer = cfg.trainer
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    if trainer.threads:
        torch.set_num_threads(int(trainer.threads))
    device = pick_device(str(trainer.device))
    amp_dtype = autocast_dtype(trainer.precision, device)
    seed_everything(int(cfg.seed), bool(trainer.deterministic))

    splits: DatasetSplits = instantiate(cfg.dataset.build)
    model = build_model(cfg.backbone, int(cfg.dataset.embedding_dim)).to(device)
    channels_last = device.type == "cuda" if trainer.channels_last == "auto" else bool(trainer.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_kwargs = {"num_classes": splits.num_train_classes} if cfg.loss.get("num_classes", 0) is None else {}
    loss_fn: nn.Module = make(cfg.loss, **loss_kwargs).to(device)
    sampler = make(cfg.sampler, labels=np.asarray(splits.train.labels), seed=int(cfg.seed))
    check_compatible(loss_fn, sampler, cfg)
    evaluator = make(cfg.eval)
    optimizer = make(cfg.optimizer)(params=[p for m in (model, loss_fn) for p in m.parameters()])
    scheduler = make(cfg.scheduler)(optimizer=optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    if hasattr(sampler, "set_embedder"):  # hard negative class mining embeds candidates with the live model

        def embed_items(indices: np.ndarray) -> Tensor:
            subset = torch.utils.data.Subset(splits.train, [int(i) for i in indices])
            embedded = embed_dataset(model, subset, batch_size=int(trainer.eval_batch_size), device=device)
            model.train()
            return torch.from_numpy(embedded.embeddings)

        sampler.set_embedder(embed_items)
    loader = torch.utils.data.DataLoader(
        splits.train, batch_sampler=sampler, num_workers=int(trainer.num_workers),
        pin_memory=device.type == "cuda", persistent_workers=int(trainer.num_workers) > 0,
        generator=torch.Generator().manual_seed(int(cfg.seed)),
    )

    header = {
        "name": cfg.name, "seed": int(cfg.seed), "config_hash": config_hash(cfg), "git": git_commit(),
        "similarity": getattr(evaluator, "similarity", None), "device": describe_device(device),
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "dataset": cfg.dataset.name, "loss": cfg.loss.name, "sampler": cfg.sampler.name,
        "n_train": len(splits.train), "n_test": len(splits.test), "protocol": splits.protocol,
        "tags": list(cfg.get("tags", [])), "torch": torch.__version__,
    }
    logger = RunLogger(run_dir, cfg, header)
    log.info("run %s: %s | %s | %s on %s (%d train / %d test images)", run_dir, cfg.loss.name, cfg.sampler.name,
             cfg.dataset.name, header["device"], len(splits.train), len(splits.test))

    max_steps, eval_every, log_every = int(trainer.max_steps), int(trainer.eval_every), int(trainer.log_every)
    probe = Probe(splits.train, int(trainer.probe_classes), int(cfg.seed)) if trainer.probe_classes else None
    n_per_class = int(cfg.sampler.get("n_per_class", 2))
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext

    def checkpoint(step: int) -> None:
        if trainer.save_checkpoint:
            atomic_torch_save(run_dir / CHECKPOINT_FILE, {
                "model": model.state_dict(), "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step,
                "config": OmegaConf.to_container(cfg, resolve=True),
            })

    def evaluate_and_log(step: int) -> dict[str, float]:
        metrics = evaluate(model, loss_fn, splits, evaluator, cfg, device)
        logger.log_eval(step, metrics)
        log.info("step %d: %s", step, "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        checkpoint(step)
        return metrics

    status, final, step = "completed", {}, 0
    model.train()
    batches = epochs(loader, sampler)
    bar = tqdm(total=max_steps, desc=cfg.name, unit="step", disable=not trainer.progress_bar, dynamic_ncols=True,
               mininterval=1.0)
    window_start, window_images = time.perf_counter(), 0
    try:
        if trainer.eval_at_start:
            evaluate_and_log(0)
        for step in range(1, max_steps + 1):
            epoch, (images, labels) = next(batches)
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with autocast():
                embeddings = model(images)
            loss = loss_fn(embeddings.float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss ({loss.item()}) at step {step}; "
                                         "lower optimizer.lr or set trainer.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if trainer.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), float(trainer.grad_clip))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            window_images += len(images)
            if step % log_every == 0 or step == max_steps:
                rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                row = {"step": step, "epoch": epoch, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                       "images_per_s": round(rate, 1),
                       "batch_acc": batch_accuracy(embeddings, sampler.layout, n_per_class)}
                if probe is not None:
                    row.update(probe(model, device))
                logger.log_train(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.0f}")
                window_start, window_images = time.perf_counter(), 0
            bar.update(1)
            if eval_every and step % eval_every == 0 and step < max_steps:
                evaluate_and_log(step)
        bar.close()
        final = evaluate_and_log(max_steps)
    except KeyboardInterrupt:
        bar.close()
        status = "interrupted"
        final = dict(logger.record["history"][-1]) if logger.record["history"] else {}
        final.pop("step", None)
        checkpoint(step)
        log.warning("interrupted at step %d: wrote %s and the last checkpoint", step, run_dir / "metrics.json")
    except BaseException:
        bar.close()
        logger.finish("failed", {}, {"steps_done": step})
        raise
    logger.finish(status, final, {"steps_done": step})
    if status == "interrupted":
        raise KeyboardInterrupt
    return final


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
    main()
