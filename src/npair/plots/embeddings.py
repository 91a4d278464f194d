"""Embedding projections: a trained run's test-split embeddings projected to 2-D (PCA / t-SNE)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from npair.plots.style import STYLE, save_figure
from npair.runio import METRICS_FILE


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

    Rebuilds the run from its checkpoint with :func:`npair.build.load_run` (``data_dir`` relocates the
    data; by default a relative data path is found next to the run's outputs tree, see
    :func:`npair.runio.locate_data_dir`), embeds the first ``n_classes`` test classes (at most
    ``max_points`` images, a seeded subsample), L2-normalises when the run evaluates with cosine
    similarity, and projects with PCA or t-SNE (scikit-learn).
    """
    from torch.utils.data import Subset

    from npair.build import load_run
    from npair.evaluation.embed import embed_dataset

    if method not in {"pca", "tsne"}:
        raise ValueError(f"embedding_projection: method={method!r}; use pca or tsne")
    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device, data_dir=data_dir)
    cfg, model, splits = run.cfg, run.model, run.splits
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
