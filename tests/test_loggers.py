"""RunLogger and W&B: offline runs hold config, history and summary; logger=none writes nothing to W&B.

The ``tiny`` fixture (tests/conftest.py, shared with test_wandb_source, test_plots and test_notebook) is
the outputs tree of :func:`tests.helpers.tiny_outputs`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import wandb
from omegaconf import OmegaConf

from npair.loggers import RunLogger, batch_shape_tag, resolve_wandb_mode, run_tags
from npair.wandb_source import find_offline_runs, read_offline_run, wait_for_exit_record
from tests.helpers import TINY, compose_config


def offline_run_of(run_dir: Path, wandb_dir: Path):
    """The offline W&B run whose id metrics.json records."""
    run_id = json.loads((run_dir / "metrics.json").read_text())["wandb"]["id"]
    (file,) = [f for f in find_offline_runs(wandb_dir) if f.name == f"run-{run_id}.wandb"]
    return read_offline_run(file)


# ----------------------------------------------------------------------------- offline W&B runs
def test_offline_run_holds_config_history_and_summary(tiny: dict[str, Any]) -> None:
    run_dir = tiny["runs"]["npair_mc/seed0"]
    wb = offline_run_of(run_dir, tiny["wandb_dir"])
    record = json.loads((run_dir / "metrics.json").read_text())
    # config: the resolved config, exactly as written to config.yaml
    assert wb.config == OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    assert wb.group == "tiny/npair_mc" and wb.display_name == "tiny/npair_mc/seed0" and wb.project == "npair"
    assert {"npair_mc", "glyphs", "4x2", "seed0", "tiny"} <= set(wb.tags)
    # history: every train_log.csv row (loss, lr, images/s, batch and probe accuracies) at its step ...
    log_rows = list(csv.DictReader(open(run_dir / "train_log.csv")))
    train = [r for r in wb.history if "train/loss" in r]
    assert [r["_step"] for r in train] == [int(r["step"]) for r in log_rows] == [1, 2, 3, 4]
    for wb_row, log_row in zip(train, log_rows):
        for column in [c for c in RunLogger.CSV_FIELDS if c not in ("step", "epoch", "elapsed_s")]:
            assert wb_row[f"train/{column}"] == pytest.approx(float(log_row[column]), rel=1e-12), column
    # ... and every evaluation of metrics.json
    evals = [r for r in wb.history if "eval/recall@1" in r]
    assert [r["_step"] for r in evals] == [h["step"] for h in record["history"]] == [2, 4]
    for wb_row, hist in zip(evals, record["history"]):
        assert {k: wb_row[f"eval/{k}"] for k in hist if k != "step"} == pytest.approx(
            {k: v for k, v in hist.items() if k != "step"}
        )
    # summary: final metrics, status and provenance
    assert {k[6:]: v for k, v in wb.summary.items() if k.startswith("final/")} == pytest.approx(
        record["final"]
    )
    assert wb.summary["status"] == "completed" and record["status"] == "completed"
    assert wb.summary["config_hash"] == record["config_hash"] and wb.summary["similarity"] == "cosine"
    assert wb.summary["seed"] == 0 and wb.summary["steps_done"] == 4
    assert wb.exit_code == 0 and wb.state == "finished"


def test_each_run_is_its_own_finished_wandb_run(tiny: dict[str, Any]) -> None:
    runs = [offline_run_of(tiny["runs"][f"npair_mc/seed{s}"], tiny["wandb_dir"]) for s in (0, 1)]
    assert runs[0].run_id != runs[1].run_id
    assert [r.config["seed"] for r in runs] == [0, 1]
    assert all(r.exit_code == 0 for r in runs)  # the first was finished before the second started
    assert wandb.run is None
    assert len(find_offline_runs(tiny["wandb_dir"])) == 2


def test_offline_runs_print_how_to_sync_each_one_run_once(tiny: dict[str, Any]) -> None:
    for seed in (0, 1):
        wb = json.loads((tiny["runs"][f"npair_mc/seed{seed}"] / "metrics.json").read_text())["wandb"]
        directory = Path(wb["dir"])
        assert directory.is_relative_to(tiny["wandb_dir"])  # WANDB_DIR is honoured
        hint = f"upload it with: wandb sync {directory.parent}/offline-run-*-{wb['id']}\n"  # all its pieces
        assert tiny["stdout"].count(hint) == 1
    assert tiny["stdout"].count("upload it with") == 2  # one hint per W&B run, nothing else


def test_logger_none_writes_nothing_to_wandb(tiny: dict[str, Any]) -> None:
    run_dir = tiny["runs"]["triplet/seed0"]
    assert not tiny["none_wandb_dir"].exists()
    assert not list(run_dir.rglob("wandb")) and not list(run_dir.rglob("*.wandb"))
    record = json.loads((run_dir / "metrics.json").read_text())
    assert "wandb" not in record and record["status"] == "completed"
    assert len(list(csv.DictReader(open(run_dir / "train_log.csv")))) == 4  # local logs still written


def test_a_resumed_run_sends_its_restored_history_to_wandb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    waited: list[Path] = []

    def wait(path: Path, timeout_s: float) -> bool:
        waited.append(path)
        return wait_for_exit_record(path, timeout_s)

    monkeypatch.setattr("npair.loggers.wait_for_exit_record", wait)
    cfg = compose_config(
        [*[o for o in TINY if o != "logger=none"], "logger=wandb", "name=t/resume"], tmp_path
    )
    logger = RunLogger(tmp_path / "run", cfg, {"name": "t/resume", "seed": 0, "resumed_from_step": 2})
    # what the training loop does on resume: restore history and elapsed time, replay train_log rows
    logger.restore(
        {"history": [{"step": 2, "recall@1": 0.25}], "elapsed_s": 5.0},
        [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}],
    )
    logger.log_train({"step": 3, "loss": 0.3})
    logger.log_eval(4, {"recall@1": 0.5})
    with contextlib.redirect_stdout(io.StringIO()):
        logger.finish("completed", {"recall@1": 0.5})
    (file,) = find_offline_runs(tmp_path / "wb")
    assert waited == [file]  # finish() waited for wandb to write the file before reading is safe
    rows = [(r["_step"], r.get("train/loss"), r.get("eval/recall@1")) for r in read_offline_run(file).history]
    assert rows == [(1, 1.0, None), (2, 0.5, 0.25), (3, 0.3, None), (4, None, 0.5)]


# ----------------------------------------------------------------------------- tags and modes
def test_batch_shape_tag_per_sampler() -> None:
    assert batch_shape_tag({"name": "npair", "n_classes": 60, "n_per_class": 2}) == "60x2"
    assert batch_shape_tag({"name": "npair", "n_classes": 32, "n_per_class": 12}) == "32x12"
    assert batch_shape_tag({"name": "triplet", "n_triplets": 40}) == "40x3"
    assert batch_shape_tag({"name": "pair", "n_pairs": 60}) == "60x2"
    assert batch_shape_tag({"name": "tuplet", "n_classes": 8}) == "8x9"
    assert batch_shape_tag({"name": "custom"}) is None


def test_run_tags_and_group_of_an_experiment(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=mini_table2/npair_mc", "seed=3", "tags=[ablation]"], tmp_path)
    shape = f"{cfg.sampler.n_classes}x{cfg.sampler.n_per_class}"
    assert run_tags(cfg) == ["npair_mc", cfg.dataset.name, shape, "seed3", "mini_table2", "ablation"]
    assert cfg.logger.group == cfg.name == "mini_table2/npair_mc"
    cfg = compose_config(["loss=triplet", "sampler.n_triplets=40", "name=demo"], tmp_path)
    assert run_tags(cfg) == ["triplet", "glyphs", "40x3", "seed0"]  # no table: a name without "/"
    assert cfg.logger.group == "demo"


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_mode_auto_is_offline_without_credentials_and_online_with(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_wandb_mode("auto") == "offline"
    with pytest.raises(ValueError, match="logger.mode=online but no W&B credentials"):
        resolve_wandb_mode("online")  # would prompt: refuse instead
    no_credentials.write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    no_credentials.chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment (CI) wins
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode("online") == "offline"


def test_mode_from_api_key_and_bad_values(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("offline") == "offline"
    with pytest.raises(ValueError, match="logger.mode='sometimes'"):
        resolve_wandb_mode("sometimes")


# ----------------------------------------------------------------------------- one W&B run per run directory
def test_a_resumed_run_continues_its_wandb_run_and_hints_one_sync_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import os
    import signal

    import npair.train
    from npair.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    overrides = [
        *[o for o in TINY if o not in ("logger=none", "trainer.max_steps=4")],
        "logger=wandb",
        "trainer.max_steps=5",
        "trainer.probe_classes=0",
        "name=t/resume",
    ]
    real_accuracy, calls = npair.train.batch_accuracy, []

    def stop_at_step_3(*args, **kwargs):  # called once per logged step: SIGTERM, as SLURM sends it
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_accuracy(*args, **kwargs)

    monkeypatch.setattr(npair.train, "batch_accuracy", stop_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config(overrides, tmp_path), tmp_path / "run")
    monkeypatch.setattr(npair.train, "batch_accuracy", real_accuracy)
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert first["status"] == "interrupted"
    capsys.readouterr()
    run(compose_config(overrides, tmp_path), tmp_path / "run")  # resumes from the step-3 checkpoint
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    run_id = first["wandb"]["id"]
    assert record["status"] == "completed" and record["resumed_from_step"] == 3
    assert record["wandb"]["id"] == run_id  # kept in the run directory, continued
    pieces = find_offline_runs(tmp_path / "wb")
    assert len(pieces) == 2 and {read_offline_run(p).run_id for p in pieces} == {run_id}
    first_part, second_part = (read_offline_run(p) for p in pieces)
    steps = [[r["_step"] for r in part.history if "train/loss" in r] for part in (first_part, second_part)]
    assert steps == [[1, 2, 3], [4, 5]]  # nothing sent twice: the W&B run has every step once
    evals = [[r["_step"] for r in part.history if "eval/recall@1" in r] for part in (first_part, second_part)]
    assert evals == [[2], [4, 5]]
    hint = f"upload it with: wandb sync {tmp_path / 'wb' / 'wandb'}/offline-run-*-{run_id}"
    assert printed.count(hint) == 1 and printed.count("wandb sync") == 1


def test_wandb_online_without_network_stops_within_its_timeout_and_records_it(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_API_KEY="k" * 40, WANDB_BASE_URL="http://127.0.0.1:9", HOME=str(tmp_path), WANDB_SILENT="true"
    )  # a key, but the server cannot be reached (port 9: nothing listens)
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "npair.train",
        *[o for o in TINY if o != "logger=none"],
        "logger=wandb",
        "logger.mode=online",
        "logger.init_timeout_s=3",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={run_dir}",
    ]
    start = time.monotonic()
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "W&B (online) did not start within logger.init_timeout_s=3 s" in result.stderr
    assert "logger.mode=offline" in result.stderr
    assert elapsed < 60, f"{elapsed:.0f} s"  # wandb's own default would wait 90 s
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("WandbStartError: W&B (online) did not")
    assert record["wandb"]["mode"] == "online" and record["wandb"]["id"]


# ----------------------------------------------------------------------------- skipped images
def test_images_skipped_at_scan_and_at_load_are_counted_in_metrics_json(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from npair.train import run

    root, rng = tmp_path / "tree", np.random.default_rng(0)
    for c in range(8):  # c0..c3 train (2 images each: every batch reads them all), c4..c7 test (3 each)
        (root / f"c{c}").mkdir(parents=True)
        for k in range(2 if c < 4 else 3):
            pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{k}.jpg", quality=95)
    for path in (root / "c1" / "0.jpg", root / "c5" / "1.jpg"):  # the header is whole, the data stops halfway
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (root / "c4" / "2.jpg").write_bytes(b"not an image")  # dropped by the header scan
    cfg = compose_config(
        [
            *[o for o in TINY if not o.startswith("dataset.")],
            "dataset=folder",
            f"dataset.root={root}",
            "dataset.image_size=32",
            "dataset.embedding_dim=8",
            "dataset.skip_corrupt=true",
            "trainer.probe_classes=0",
            "eval.ks=[1,2,4]",
        ],
        tmp_path,
    )
    run(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed"
    assert record["skipped_images"] == {
        "train_at_scan": 0,
        "train_at_load": 1,
        "test_at_scan": 1,
        "test_at_load": 1,
        "total": 3,
    }


def test_images_skipped_before_a_resume_are_still_counted(tmp_path: Path) -> None:
    from types import SimpleNamespace

    def splits(train_bad: list[str], test_bad: list[str]) -> SimpleNamespace:
        parts = {
            "train": SimpleNamespace(runtime_skipped=train_bad, skipped_files=["scan.jpg"]),
            "test": SimpleNamespace(runtime_skipped=test_bad, skipped_files=[]),
        }
        counts = {
            "train_at_scan": 1,
            "train_at_load": len(train_bad),
            "test_at_scan": 0,
            "test_at_load": len(test_bad),
        }
        return SimpleNamespace(**parts, skipped_images=lambda: {**counts, "total": sum(counts.values())})

    cfg = compose_config(TINY, tmp_path)
    before = RunLogger(tmp_path / "a", cfg, {"name": "t"}, splits=splits(["a.jpg", "b.jpg"], []))
    state = before.state()  # what the checkpoint keeps
    assert state["skipped_at_load"] == {"train": ["a.jpg", "b.jpg"], "test": []}
    before.finish("interrupted", {})
    after = RunLogger(tmp_path / "b", cfg, {"name": "t"}, splits=splits(["b.jpg", "c.jpg"], ["t.jpg"]))
    after.restore(state, [])  # the resumed process found b.jpg again and c.jpg, t.jpg anew
    after.finish("completed", {})
    record = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert record["skipped_images"] == {
        "train_at_scan": 1,
        "train_at_load": 3,
        "test_at_scan": 0,
        "test_at_load": 1,
        "total": 5,
    }
