"""Evaluate saved embeddings or a trained run: ``python -m npair.evaluate``.

Saved embeddings (``.npy``, ``.pt`` tensor, or one ``.npz``/``.pt`` dict holding
``embeddings``, ``labels`` and optionally ``logits``)::

    python -m npair.evaluate --embeddings e.npy --labels l.npy --eval retrieval \\
        --similarity cosine --out result.json

A run directory (its ``checkpoint.pt``, or ``--checkpoint``): rebuilds the run's data, model and
loss from the config the checkpoint holds (``npair.build.load_run``, weights only), embeds the
test split (and the training split when the evaluator needs a reference), and evaluates with
the run's ``eval`` config unless ``--eval`` names another::

    python -m npair.evaluate --run outputs/runs/<experiment>/<seed> --out result.json

``--eval`` is a name in ``configs/eval/`` or a path to a YAML file; ``--set key=value``
overrides any evaluator argument (e.g. ``--set kmeans_seeds=1 --set ks=[1,10]``).
Prints a table and writes JSON: ``{"schema": 1, "similarity", "eval", "source",
"metrics", "meta"}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from npair.configuration import CONFIG_DIR
from npair.errors import add_debug_option, run_cli
from npair.evaluation import EmbeddingSet, Evaluator

if TYPE_CHECKING:
    from npair.build import LoadedRun

RESULT_SCHEMA = 1


def load_array(path: str | Path, what: str) -> Any:
    """Load a ``.npy``/``.npz`` (numpy) or ``.pt``/``.pth`` (torch) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {path}")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if path.suffix in (".pt", ".pth"):
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    raise ValueError(f"{what}: {path} has suffix {path.suffix!r}; use .npy, .npz or .pt")


def load_embedding_set(
    embeddings: str, labels: str | None, logits: str | None, what: str = "test"
) -> EmbeddingSet:
    data = load_array(embeddings, f"--{what}-embeddings" if what != "test" else "--embeddings")
    if isinstance(data, dict):
        missing = [k for k in ("embeddings", "labels") if k not in data and not (k == "labels" and labels)]
        if missing:
            raise ValueError(
                f"{embeddings}: a dict file needs keys 'embeddings' and 'labels'; missing {missing}"
            )
        emb, lab, lg = data["embeddings"], data.get("labels"), data.get("logits")
    else:
        emb, lab, lg = data, None, None
    if labels:
        lab = load_array(labels, "--labels")
    if logits:
        lg = load_array(logits, "--logits")
    if lab is None:
        raise ValueError(f"no labels for {embeddings}: pass --labels")
    return EmbeddingSet(emb, lab, lg)


def load_eval_config(name_or_path: str, config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = Path(name_or_path)
    if not path.suffix:
        path = config_dir / "eval" / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (config_dir / "eval").glob("*.yaml"))
        raise FileNotFoundError(f"--eval {name_or_path!r}: no file {path}; available: {available}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def build_evaluator(eval_cfg: dict[str, Any], overrides: dict[str, Any]) -> tuple[Evaluator, str]:
    cfg = {k: v for k, v in eval_cfg.items() if k not in ("name", "_target_")}
    target = eval_cfg.get("_target_", "npair.evaluation.Evaluator")
    if target != "npair.evaluation.Evaluator":
        raise ValueError(f"eval config _target_={target!r}: this CLI builds npair.evaluation.Evaluator only")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return Evaluator(**cfg), str(eval_cfg.get("name", "custom"))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
    return OmegaConf.to_container(OmegaConf.from_dotlist(items), resolve=True) if items else {}


def embed_run(run: LoadedRun, device: str, batch_size: int, need_reference: bool):
    """Embed a trained run's test split (with the logits of a classifier loss) and, when the evaluator
    needs a reference, its training split."""
    from npair.evaluation.embed import embed_dataset

    logits_fn = _classifier(run.loss_fn)
    test = embed_dataset(
        run.model, run.splits.test, batch_size=batch_size, device=device, logits_fn=logits_fn
    )
    reference = None
    if need_reference:
        reference = embed_dataset(run.model, run.splits.train, batch_size=batch_size, device=device)
    return test, reference, dict(run.splits.extras)


def _classifier(loss: Any):
    """Logits function of a classifier loss (softmax baseline): its ``logits(embeddings)`` method, else
    its ``classifier`` module; None for the other losses."""
    if callable(getattr(loss, "logits", None)):
        return loss.logits
    if callable(getattr(loss, "classifier", None)):
        return loss.classifier
    return None


def format_table(metrics: dict[str, float], meta: dict[str, Any]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        lines.append(
            f"| {key} | {value:.6g} |"
            if isinstance(value, float) and math.isfinite(value)
            else f"| {key} | {value} |"
        )
    lines.append(
        f"\nsimilarity: {meta.get('similarity')}   kNN backend: {meta.get('knn_backend', '-')}   "
        f"n_test: {meta.get('n_test')}   seconds: {meta.get('seconds', 0):.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m npair.evaluate", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("input (one of)")
    src.add_argument(
        "--embeddings", help="test embeddings (.npy/.pt, or .npz/.pt dict with embeddings, labels[, logits])"
    )
    src.add_argument("--run", type=Path, help="run directory with its checkpoint.pt")
    p.add_argument("--labels", help="test labels (.npy/.pt)")
    p.add_argument("--logits", help="test logits (.npy/.pt), for softmax_acc")
    p.add_argument("--reference-embeddings", help="reference (training) embeddings, for knn_acc")
    p.add_argument("--reference-labels", help="reference labels")
    p.add_argument("--extras", help=".npz or .pt dict with protocol extras (pairs, gallery, probes)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default: RUN/checkpoint.pt)")
    p.add_argument(
        "--trust-config",
        action="store_true",
        help="let the run's stored config instantiate code outside npair and torch.optim",
    )
    p.add_argument(
        "--eval", help="eval config name in configs/eval/ or a YAML path (default: the run's, else retrieval)"
    )
    p.add_argument(
        "--config-dir", type=Path, default=CONFIG_DIR, help="configs/ directory (default: %(default)s)"
    )
    p.add_argument(
        "--similarity", choices=["cosine", "inner_product", "euclidean"], help="override eval similarity"
    )
    p.add_argument("--backend", choices=["auto", "faiss", "torch"], help="override the kNN backend")
    p.add_argument("--device", help="device for the evaluator and for embedding a run (cpu, cuda, auto)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size when embedding a run")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an evaluator argument"
    )
    p.add_argument("--out", type=Path, help="write the result JSON here")
    add_debug_option(p)
    args = p.parse_args(argv)
    if (args.embeddings is None) == (args.run is None):
        p.error("give exactly one of --embeddings or --run")

    overrides = parse_overrides(args.set)
    overrides.update(similarity=args.similarity, backend=args.backend)
    if args.device:
        overrides["device"] = args.device

    if args.run is not None:
        import torch
        from omegaconf import OmegaConf

        from npair.build import load_run

        device = (
            args.device
            if args.device and args.device != "auto"
            else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        run = load_run(args.run, args.checkpoint, device=device, trust_config=args.trust_config)
        if args.eval:
            eval_cfg = load_eval_config(args.eval, args.config_dir)
        elif "eval" in run.cfg:
            eval_cfg = OmegaConf.to_container(run.cfg.eval, resolve=True)
        else:
            eval_cfg = load_eval_config("retrieval", args.config_dir)
        evaluator, eval_name = build_evaluator(eval_cfg, overrides)
        test, reference, extras = embed_run(run, device, args.batch_size, evaluator.needs_reference)
        source = {"run": str(args.run), "checkpoint": str(run.checkpoint), "step": run.step}
    else:
        evaluator, eval_name = build_evaluator(
            load_eval_config(args.eval or "retrieval", args.config_dir), overrides
        )
        test = load_embedding_set(args.embeddings, args.labels, args.logits)
        reference = None
        if args.reference_embeddings:
            reference = load_embedding_set(
                args.reference_embeddings, args.reference_labels, None, "reference"
            )
        if evaluator.needs_reference and reference is None:
            raise ValueError(
                f"--eval {eval_name} computes knn_acc, the kNN recognition of each test item among the "
                "training split's embeddings: pass them with --reference-embeddings FILE (and "
                "--reference-labels FILE unless that file holds the labels), or evaluate a run with --run DIR"
            )
        extras = load_array(args.extras, "--extras") if args.extras else {}
        if not isinstance(extras, dict):
            raise ValueError(f"--extras {args.extras}: expected a dict (.npz or .pt dict)")
        source = {"embeddings": args.embeddings, "labels": args.labels}

    result = evaluator(test, reference=reference, extras=extras)
    print(format_table(dict(result), result.meta))
    if args.out:
        payload = {
            "schema": RESULT_SCHEMA,
            "similarity": evaluator.similarity,
            "eval": eval_name,
            "source": source,
            "metrics": dict(result),
            "meta": result.meta,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
        print(f"wrote {args.out}")
    return 0


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


if __name__ == "__main__":
    sys.exit(run_cli(main))
