"""Hyperparameter selection on validation classes (npair.selection): the CLI, the table runner's hook."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from npair import identity, select
from npair.runio import atomic_write_json, atomic_write_text
from npair.selection import (
    Grid,
    Selection,
    Settings,
    check_table,
    compose_seeds,
    final_sweep,
    select_and_train,
)
from npair.tables import Row, TableSpec, load_spec, write_table
from npair.train import run
from tests.data.test_validation import ImagesTouched
from tests.helpers import REPO, TINY, compose_config

GUARDED = "dataset.build._target_=tests.data.test_validation.build_glyphs_guarded"
# TINY's glyphs_faces-free data: 20 classes (10 train), 6 images; build_glyphs_guarded adds the face protocol,
# which needs >= 20 test identities.
SELECT_TINY = [o for o in TINY if not o.startswith("dataset.build.n_classes")] + [
    "dataset.build.n_classes=40"
]


@pytest.fixture
def subprocess_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Training subprocesses import this checkout and the tests package; W&B stays offline."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NPAIR_ROOT", str(tmp_path))


def test_grid_parsing_and_names() -> None:
    grid = Grid.parse("loss.temperature=0.03,0.05,0.1")
    assert grid.key == "loss.temperature" and grid.values == (0.03, 0.05, 0.1)
    assert grid.run_name(0.05) == "temperature-0.05"
    assert Grid.parse("loss.mining=semihard,hardest").values == ("semihard", "hardest")
    for bad in ("loss.temperature", "loss.temperature=0.1", "=0.1,0.2", "loss.t=0.1,0.1"):
        with pytest.raises(ValueError):
            Grid.parse(bad)
    with pytest.raises(ValueError, match="unknown key"):
        Settings.from_spec({"fractoin": 0.2})


def test_tables_must_give_every_selected_row_as_many_values() -> None:
    rows = [
        Row("a", "x/a", select={"key": "loss.temperature", "values": [0.1, 0.2, 0.5]}),
        Row("b", "x/b", select={"key": "loss.margin", "values": [0.1, 0.2]}),
    ]
    spec = TableSpec(name="t", title="t", rows=rows, seeds=[0], metrics=["recall@1"])
    with pytest.raises(ValueError, match="same number of values"):
        check_table(spec)
    rows[1].select = {"key": "loss.margin", "values": [0.1, 0.2, 0.5]}
    check_table(spec)
    rows[1].select = {"same_as": "x/a", "key": "loss.margin"}
    with pytest.raises(ValueError, match="same_as takes no other key"):
        check_table(spec)


def _fake_run(run_dir: Path, root: Path, key_value: dict, score: float) -> None:
    cfg = {
        "dataset": {
            "build": {
                "_target_": "npair.data.embedded.build_glyphs",
                "root": str(root / "data"),
                "n_classes": 20,
                "images_per_class": 2,
            },
            "validation": {"fraction": 0.2, "seed": 0},
        },
        "loss": key_value,
    }
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    atomic_write_json(run_dir / "metrics.json", {"status": "completed", "final": {"recall@1": score}})


def test_choice_is_the_best_mean_and_a_tie_goes_to_the_first_value(tmp_path: Path) -> None:
    grid = Grid("loss.temperature", (0.05, 0.1, 0.2))
    sel = Selection("x", [], grid, Settings(seeds=(0, 1)), tmp_path / "sel")
    scores = {
        (0.05, 0): 0.30,
        (0.05, 1): 0.34,
        (0.1, 0): 0.33,
        (0.1, 1): 0.31,
        (0.2, 0): 0.36,
        (0.2, 1): 0.28,
    }
    for (value, seed), score in scores.items():
        _fake_run(sel.run_dir(value, seed), tmp_path, {"temperature": value}, score)
    assert sel.missing() == [] and sel.sweep() is None
    record = sel.choose()
    assert record["chosen"] == 0.05  # 0.32 = 0.32 = 0.32: the first listed value
    assert record["mean"] == pytest.approx({"0.05": 0.32, "0.1": 0.32, "0.2": 0.32})
    assert len(record["scores"]) == 6
    assert record["validation"]["n_training_classes"] == 10 and len(record["validation"]["classes"]) == 2
    assert json.loads((tmp_path / "sel" / "selection.json").read_text())["chosen"] == 0.05
    (tmp_path / "sel" / "temperature-0.2" / "seed1" / "metrics.json").write_text(
        json.dumps({"status": "completed", "final": {"recall@1": 0.40}})
    )
    assert sel.choose()["chosen"] == 0.2


def _composed_run(run_dir: Path, overrides: list[str], seed: int = 0, score: float = 0.5) -> str:
    """A completed run directory as npair.train leaves it for ``overrides``: the resolved config.yaml and a
    metrics.json whose header hashes it. Returns its config hash."""
    cfg = compose_seeds(overrides, [seed])[seed]
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    hashes = identity.hashes(cfg)
    record = {"status": "completed", **hashes, "final": {"recall@1": score}}
    atomic_write_json(run_dir / "metrics.json", record)
    return hashes["config_hash"]


FINAL_BASE = ["experiment=smoke/npair_mc", "logger=none"]


def test_a_final_run_trained_with_another_value_is_not_mixed_in(tmp_path: Path) -> None:
    old = _composed_run(tmp_path / "runs" / "seed0", [*FINAL_BASE, "loss.reg_weight=0.0"])
    record = {"key": "loss.reg_weight", "chosen": 0.02}
    dirs = {0: tmp_path / "runs" / "seed0"}
    with pytest.raises(
        SystemExit,
        match=r"(?s)stopped: 1 run directory.*final runs of x "
        r"\(loss.reg_weight=0.02, chosen on validation classes\).*another config.*"
        r"loss.reg_weight: 0.0 -> 0.02",
    ):
        final_sweep("x", FINAL_BASE, record, dirs, tmp_path, "seed${seed}")
    sweep = final_sweep("x", FINAL_BASE, record, dirs, tmp_path, "seed${seed}", rerun_stale=True)
    assert sweep is not None and sweep.overrides == [*FINAL_BASE, "loss.reg_weight=0.02", "seed=0"]
    assert (tmp_path / "runs" / f"seed0.stale-{old}" / "metrics.json").exists()  # moved aside, not deleted
    _composed_run(tmp_path / "ok" / "seed0", [*FINAL_BASE, "loss.reg_weight=0.02"])
    sweep = final_sweep(
        "x",
        FINAL_BASE,
        record,
        {0: tmp_path / "ok" / "seed0", 1: tmp_path / "ok" / "seed1"},
        tmp_path / "ok",
        "seed${seed}",
    )
    assert sweep is not None and sweep.overrides == [*FINAL_BASE, "loss.reg_weight=0.02", "seed=1"]


def test_a_final_run_of_other_overrides_or_a_hand_written_result_is_refused(tmp_path: Path) -> None:
    record = {"key": "loss.reg_weight", "chosen": 0.02}
    _composed_run(tmp_path / "a" / "seed0", [*FINAL_BASE, "loss.reg_weight=0.02", "trainer.max_steps=3"])
    with pytest.raises(SystemExit, match="trainer.max_steps: 3 -> 4"):
        final_sweep("x", FINAL_BASE, record, {0: tmp_path / "a" / "seed0"}, tmp_path / "a", "seed${seed}")
    atomic_write_json(tmp_path / "b" / "seed0" / "metrics.json", {"status": "completed", "final": {}})
    with pytest.raises(SystemExit, match="an unverified result.*records no config_hash"):
        final_sweep("x", FINAL_BASE, record, {0: tmp_path / "b" / "seed0"}, tmp_path / "b", "seed${seed}")


def _smoke_selection(root: Path, overrides: list[str] = ()) -> Selection:
    return Selection(
        "smoke/npair_mc",
        ["experiment=smoke/npair_mc", *overrides],
        Grid("loss.reg_weight", (0.0, 0.02)),
        Settings(),
        root / "selection" / "smoke/npair_mc",
    )


def test_selection_runs_are_checked_against_the_config_they_must_hold(tmp_path: Path) -> None:
    sel = _smoke_selection(tmp_path)
    _composed_run(sel.run_dir(0.0, 0), sel.run_overrides(0.0))
    _composed_run(sel.run_dir(0.02, 0), [*sel.run_overrides(0.02), "trainer.max_steps=3"])  # another config
    states = {c.run_dir: (c.state, c.reason) for c in sel.checks()}
    assert states[sel.run_dir(0.0, 0)] == ("completed", "")
    assert states[sel.run_dir(0.02, 0)] == ("stale", "trainer.max_steps: 3 -> 4")
    hand_written = {"status": "completed", "final": {"recall@1": 1.0}}
    atomic_write_json(sel.run_dir(0.0, 0) / "metrics.json", hand_written)
    state, reason = next((c.state, c.reason) for c in sel.checks() if c.run_dir == sel.run_dir(0.0, 0))
    assert state == "unverified" and "records no config_hash" in reason  # a hand-written metrics.json


def test_a_table_build_refuses_stale_selection_runs_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = load_spec("smoke_select")
    root = tmp_path / "outputs"
    sel = _smoke_selection(root, ["logger=none"])
    old = _composed_run(sel.run_dir(0.0, 0), [*sel.run_overrides(0.0), "trainer.max_steps=3"])
    with pytest.raises(SystemExit) as stopped:
        select_and_train([spec], root, ["logger=none"], jobs=1)
    message = str(stopped.value)
    assert message.startswith(
        "stopped: 1 run directory would be reused for another config than the selection"
    )
    assert f"{sel.run_dir(0.0, 0)} (another config, config {old}): trainer.max_steps: 3 -> 4" in message
    assert "training" not in capsys.readouterr().out  # refused before anything trains
    assert not (root / "selection" / "smoke/npair_mc" / "selection.json").exists()


def test_the_guarded_test_split_stops_a_normal_run(tmp_path: Path) -> None:
    # the guard works: without validation classes, training evaluates on (reads) the test split
    with pytest.raises(ImagesTouched):
        run(compose_config([*SELECT_TINY, GUARDED], tmp_path), tmp_path / "run")


def test_selection_never_reads_the_test_split(tmp_path: Path, subprocess_env: None) -> None:
    record = select.main(
        [
            "--grid",
            "loss.temperature=0.5,1.0",
            "--final-seeds",
            "",
            "--jobs",
            "1",
            "--outputs",
            str(tmp_path / "outputs"),
            "--name",
            "guarded",
            *SELECT_TINY,
            GUARDED,
            "trainer.eval_every=0",
        ]
    )
    assert record["chosen"] in (0.5, 1.0) and len(record["scores"]) == 2
    assert (
        record["validation"]["n_training_classes"] == 20 and record["validation"]["n_validation_classes"] == 4
    )


def test_selection_cli_chooses_then_trains_the_final_run(
    tmp_path: Path, subprocess_env: None, capsys: pytest.CaptureFixture
) -> None:
    args = [
        "--grid",
        "loss.reg_weight=0.0,0.002",
        "--final-seeds",
        "0",
        "--jobs",
        "2",
        "--outputs",
        str(tmp_path / "outputs"),
        "--name",
        "tiny",
        *TINY,
        "trainer.eval_every=0",
    ]
    record = select.main(args)
    root = tmp_path / "outputs" / "selection" / "tiny"
    means = record["mean"]
    assert record["chosen"] == max(
        record["values"], key=lambda v: (means[str(v)], -record["values"].index(v))
    )
    for value in (0.0, 0.002):
        cfg = OmegaConf.load(root / f"reg_weight-{value}" / "seed0" / "config.yaml")
        assert cfg.loss.reg_weight == value and cfg.dataset.validation.fraction == 0.2
        assert list(cfg.eval.metrics) == ["recall"] and list(cfg.eval.ks) == [1]
    final = root / "final" / "seed0"
    final_cfg = OmegaConf.load(final / "config.yaml")
    assert final_cfg.loss.reg_weight == record["chosen"] and final_cfg.dataset.validation.fraction == 0.0
    assert json.loads((final / "selection.json").read_text())["chosen"] == record["chosen"]
    assert {"recall@1", "nmi", "f1"} <= set(json.loads((final / "metrics.json").read_text())["final"])
    capsys.readouterr()
    select.main(args)  # everything is done: nothing is trained again
    assert "training" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:  # other overrides: the selection runs are not reused
        select.main([*args, "optimizer.weight_decay=0.001"])
    message = str(stopped.value)
    assert message.startswith(
        "stopped: 2 run directories would be reused for another config than the selection"
    )
    assert message.count("optimizer.weight_decay: ") == 2
    assert str(root / "reg_weight-0.0" / "seed0") in message
    assert "training" not in capsys.readouterr().out


def test_table_rows_are_selected_then_trained_and_reported(
    tmp_path: Path, subprocess_env: None, capsys: pytest.CaptureFixture
) -> None:
    rows = [
        Row(
            "4-pair-mc (λ selected)",
            "smoke/npair_mc",
            select={"key": "loss.reg_weight", "values": [0.0, 0.02]},
        ),
        Row("triplet (λ of 4-pair-mc)", "smoke/triplet", select={"same_as": "smoke/npair_mc"}),
    ]
    spec = TableSpec(
        name="select_smoke",
        title="t",
        rows=rows,
        seeds=[0],
        metrics=[{"key": "recall@1"}],
        selection={"fraction": 0.2, "seeds": [0]},
    )
    root = tmp_path / "outputs"
    records = select_and_train([spec], root, ["logger=none"], jobs=2)
    chosen = records["smoke/npair_mc"]["chosen"]
    assert records["smoke/triplet"]["chosen"] == chosen
    for experiment in ("smoke/npair_mc", "smoke/triplet"):
        run_dir = root / "runs" / experiment / "seed0"
        assert OmegaConf.load(run_dir / "config.yaml").loss.reg_weight == chosen
        saved = json.loads((run_dir / "selection.json").read_text())
        assert saved["chosen"] == chosen and saved["selected_for"] == "smoke/npair_mc"
    assert not (root / "selection" / "smoke/triplet").exists()  # borrowed, not selected again
    paths = write_table(spec, root)
    md = paths["md"].read_text()
    assert "Hyperparameters chosen on validation classes" in md and "`loss.reg_weight`" in md
    assert "(chosen for smoke/npair_mc)" in md
    assert paths["selection"].read_text().count("\n") == 1 + 2 * 2  # header + 2 rows × 2 values
    capsys.readouterr()
    select_and_train([spec], root, ["logger=none"], jobs=2)
    assert "training" not in capsys.readouterr().out


def test_shipped_selection_tables_load_and_are_balanced() -> None:
    for name in ("claim_check_glyphs", "claim_check_large"):
        spec = load_spec(name)
        check_table(spec)
        assert all(row.select for row in spec.rows)
