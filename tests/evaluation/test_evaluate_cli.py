"""``python -m npair.evaluate``: saved embeddings (.npy / .pt / .npz) and a run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from npair.evaluate import main
from npair.evaluation import EmbeddingSet, Evaluator


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 5)
    x = (rng.normal(size=(20, 8))[labels] + 0.7 * rng.normal(size=(100, 8))).astype(np.float32)
    np.save(tmp_path / "e.npy", x)
    np.save(tmp_path / "l.npy", labels)
    torch.save(torch.from_numpy(x), tmp_path / "e.pt")
    torch.save(torch.from_numpy(labels), tmp_path / "l.pt")
    np.savez(tmp_path / "both.npz", embeddings=x, labels=labels)
    return tmp_path, x, labels


def test_cli_on_npy_writes_json_and_prints_a_table(saved, capsys):
    tmp, x, labels = saved
    out = tmp / "res" / "result.json"
    assert (
        main(
            [
                "--embeddings",
                str(tmp / "e.npy"),
                "--labels",
                str(tmp / "l.npy"),
                "--eval",
                "retrieval",
                "--similarity",
                "euclidean",
                "--set",
                "kmeans_seeds=2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| recall@1 |" in printed and "similarity: euclidean" in printed
    record = json.loads(out.read_text())
    assert record["similarity"] == "euclidean" and record["eval"] == "retrieval" and record["schema"] == 1
    expected = Evaluator(
        metrics=["recall", "nmi", "f1"], ks=[1, 2, 4, 8], similarity="euclidean", kmeans_seeds=2
    )(EmbeddingSet(x, labels))
    assert record["metrics"] == pytest.approx(dict(expected))
    assert record["meta"]["kmeans_seeds"] == [0, 1]


@pytest.mark.parametrize("files", [("e.pt", "l.pt"), ("both.npz", None)])
def test_cli_on_pt_and_npz(saved, files):
    tmp, _, _ = saved
    args = ["--embeddings", str(tmp / files[0])] + (["--labels", str(tmp / files[1])] if files[1] else [])
    out = tmp / "r.json"
    main(
        [
            *args,
            "--eval",
            "sop",
            "--set",
            "ks=[1,10]",
            "--set",
            "kmeans_seeds=1",
            "--backend",
            "torch",
            "--out",
            str(out),
        ]
    )
    record = json.loads(out.read_text())
    assert set(record["metrics"]) == {"recall@1", "recall@10", "recall_excluded_singletons", "nmi", "f1"}


def test_cli_errors(saved):
    tmp, _, _ = saved
    with pytest.raises(FileNotFoundError, match="no such file"):
        main(["--embeddings", str(tmp / "missing.npy"), "--labels", str(tmp / "l.npy")])
    with pytest.raises(FileNotFoundError, match="available: \\["):
        main(["--embeddings", str(tmp / "e.npy"), "--labels", str(tmp / "l.npy"), "--eval", "nope"])
    np.save(tmp / "short.npy", np.zeros(7, dtype=np.int64))
    with pytest.raises(ValueError, match="100 embeddings but 7 labels"):
        main(["--embeddings", str(tmp / "e.npy"), "--labels", str(tmp / "short.npy")])
    with pytest.raises(SystemExit):
        main(["--labels", str(tmp / "l.npy")])  # neither --embeddings nor --run


def test_cli_on_a_training_run_directory(tmp_path):
    """A real (tiny) run of the training loop, re-evaluated from config.yaml + checkpoint.pt:
    the CLI must rebuild model and data and reproduce the run's final metrics."""
    from npair.train import run
    from tests.helpers import TINY, compose_config

    final = run(compose_config(TINY, tmp_path), tmp_path / "run")
    out = tmp_path / "result.json"
    main(["--run", str(tmp_path / "run"), "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["source"]["step"] == 4 and record["eval"] == "retrieval"
    assert record["metrics"] == pytest.approx(final, abs=1e-9)


@pytest.mark.slow
def test_cli_on_a_seen_class_softmax_run(tmp_path):
    """Seen-class protocol through the run path: the training split is embedded as the kNN
    reference and the softmax loss' classifier gives the † accuracy."""
    from npair.train import run
    from tests.helpers import compose_config

    overrides = [
        "dataset=digits",
        "backbone.net.widths=[8,8,8,8]",
        "dataset.embedding_dim=8",
        "loss=softmax",
        "sampler.n_classes=5",
        "eval=recognition",
        "eval.vrf_seeds=2",
        "eval.vrf_negatives=[1,3]",
        "trainer.max_steps=3",
        "trainer.eval_every=0",
        "trainer.progress_bar=false",
        "logger=none",
    ]
    final = run(compose_config(overrides, tmp_path), tmp_path / "run")
    out = tmp_path / "result.json"
    main(["--run", str(tmp_path / "run"), "--out", str(out)])
    record = json.loads(out.read_text())
    assert {"knn_acc", "softmax_acc", "vrf_neg1", "vrf_neg3"} <= set(record["metrics"])
    assert record["metrics"] == pytest.approx(final, abs=1e-9)
