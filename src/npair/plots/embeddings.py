"""Embedding projections: a trained run's test-split embeddings projected to 2-D (PCA / t-SNE)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from npair.plots.style import STYLE, save_figure
from npair.runio import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, locate_data_dir, rebase_data_dir


def project_2d(embeddings: np.ndarray, method: str = "pca") -> tuple[np.ndarray, str]:
    """2-D coordinates (scikit-learn PCA or t-SNE, seeded) and a note saying how they were made.

    scikit-learn's OpenMP pool is held to one thread: once torch has run, its own OpenMP pool and
    scikit-learn's spin against each other and t-SNE slows down by an order of magnitude.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        if method == "pca":
            from sklearn.decomposition import PCA

            pca = PCA(n_components=2, random_state=0)
            points = pca.fit_transform(embeddings)
            return points, f"PCA, {100 * pca.explained_variance_ratio_.sum():.0f}% of the variance"
        if method == "tsne":
            from sklearn.manifold import TSNE

            perplexity = float(min(30.0, max(2.0, (len(embeddings) - 1) / 3)))
            tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0)
            return tsne.fit_transform(embeddings), f"t-SNE, perplexity {perplexity:.0f}"
    raise ValueError(f"method={method!r}; use pca or tsne")


def embedding_projection(
    run_dir: Path,
    out: Path,
    method: str = "pca",
    max_points: int = 2000,
    n_classes: int = 20,
    data_dir: str | Path | None = None,
    device: str = "cpu",
) -> Path:
    """Test-split embeddings of a trained run projected to 2-D and coloured by class.

    Rebuilds the model from ``checkpoint.pt`` (``model`` state dict, ``config``) with
    ``npair.models.build_model`` and the data with ``hydra.utils.instantiate(cfg.dataset.build)``
    (``data_dir`` relocates the data; by default a relative data path is found next to the run's outputs
    tree, see :func:`locate_data_dir`), embeds the
    first ``n_classes`` test classes (at most ``max_points`` images, a seeded subsample), L2-normalises
    when the run evaluates with cosine similarity, and projects with PCA or t-SNE (scikit-learn).
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import Subset

    from npair.evaluation.embed import embed_dataset
    from npair.models import build_model

    if method not in {"pca", "tsne"}:
        raise ValueError(f"embedding_projection: method={method!r}; use pca or tsne")
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_FILE
    if not ckpt_path.exists():
        raise FileNotFoundError(
            f"{ckpt_path}: no checkpoint (trainer.save_checkpoint=false, or the run never "
            "evaluated); re-run the experiment to plot its embeddings"
        )
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if checkpoint.get("config"):
        cfg = OmegaConf.create(checkpoint["config"])
    elif (run_dir / CONFIG_FILE).exists():
        cfg = OmegaConf.load(run_dir / CONFIG_FILE)
    else:
        raise FileNotFoundError(f"{run_dir}: neither checkpoint['config'] nor config.yaml")
    cfg = rebase_data_dir(cfg, data_dir if data_dir is not None else locate_data_dir(cfg, run_dir))
    model = build_model(cfg.backbone, int(cfg.dataset.embedding_dim))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    splits = instantiate(cfg.dataset.build)
    labels = np.asarray(splits.test.labels)
    classes = np.unique(labels)[:n_classes]
    indices = np.flatnonzero(np.isin(labels, classes))
    if len(indices) > max_points:
        indices = np.sort(np.random.default_rng(0).choice(indices, size=max_points, replace=False))
    embedded = embed_dataset(model, Subset(splits.test, indices.tolist()), device=device)
    emb = embedded.embeddings.astype(np.float64)
    similarity = str(cfg.eval.get("similarity", "cosine"))
    if similarity == "cosine":
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    points, axis_note = project_2d(emb, method)

    metrics_path = run_dir / METRICS_FILE
    final = json.loads(metrics_path.read_text()).get("final", {}) if metrics_path.exists() else {}
    score = f", R@1 = {100 * final['recall@1']:.1f}%" if "recall@1" in final else ""
    cmap_name = "tab20" if len(classes) <= 20 else "turbo"
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(7.6 if len(classes) <= 20 else 6.4, 6.0))
        ax = fig.subplots()
        from matplotlib import colormaps

        cmap = colormaps[cmap_name]
        for i, cls in enumerate(classes):
            sel = embedded.labels == cls
            colour = cmap(i % 20) if cmap_name == "tab20" else cmap(i / max(1, len(classes) - 1))
            ax.scatter(
                points[sel, 0], points[sel, 1], s=14, color=colour, alpha=0.85, lw=0, label=str(int(cls))
            )
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color("0.8")
        split = "unseen test classes" if getattr(splits, "protocol", "unseen") == "unseen" else "test images"
        ax.set_title(
            f"{cfg.get('name', run_dir.name)} (seed {cfg.get('seed')}): {split}{score}\n"
            f"{len(points)} images of {len(classes)} classes, {embedded.embeddings.shape[1]}-d "
            f"{'L2-normalised ' if similarity == 'cosine' else ''}embeddings, {axis_note}",
            fontsize=10,
        )
        if len(classes) <= 20:
            ax.legend(
                title="class",
                loc="upper left",
                bbox_to_anchor=(1.0, 1.0),
                frameon=False,
                markerscale=1.5,
                fontsize=7.5,
            )
        fig.tight_layout()
    return save_figure(
        fig,
        out,
        {
            "run_dir": str(run_dir),
            "method": method,
            "similarity": similarity,
            "classes": [int(c) for c in classes],
            "indices": indices.tolist(),
            "labels": embedded.labels.tolist(),
            "points": np.round(points, 6).tolist(),
        },
    )
