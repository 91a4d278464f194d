"""notebooks/results.ipynb: stored without outputs, and executes without error on a tiny outputs tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "results.ipynb"


def text_of(nb: nbformat.NotebookNode) -> str:
    """All text the executed notebook printed or displayed (stdout, markdown, plain text)."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            data = output.get("data", {})
            parts += [data.get("text/markdown", ""), data.get("text/plain", "")]
    return "\n".join(parts)


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_notebook_executes_on_a_small_run(tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPAIR_OUTPUTS", str(tiny["outputs"]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("NPAIR_MAX_EMBEDDINGS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()  # raises on any cell error
    text = text_of(nb)
    figures = tiny["outputs"] / "figures"
    assert f"outputs: {tiny['outputs']}" in text
    assert "tiny: method ordering, ours vs the paper" in text and "4-pair-mc" in text
    assert "tiny/npair_mc | 1 | completed | 4 |" in text  # the runs table
    assert "tiny: npair_mc reaches triplet's final N-way accuracy" in text or "npair_mc never reaches" in text
    assert {p.name for p in figures.glob("*.png")} >= {
        "tiny_recall.png",
        "tiny_metrics.png",
        "eval_histories.png",
        "training_curves_tiny.png",
        "embedding_tiny_npair_mc_pca.png",
    }
    assert "1 projection(s)" in text
