"""npair.identity: what makes two runs the same run (paths and cosmetic keys aside), the hashes metrics.json
records, which metrics.json belongs to which config.yaml, and grouping runs by setting (seed excluded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from npair import identity
from npair.runio import CONFIG_FILE, METRICS_FILE
from npair.train import run
from tests.helpers import TINY, compose_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_212a68e"  # written before config_hash_version


def test_paths_and_cosmetic_keys_are_not_part_of_a_run(tmp_path: Path) -> None:
    base = compose_config(TINY, tmp_path)
    same = [
        f"paths.root_dir={tmp_path / 'elsewhere'}",
        "name=renamed",
        "tags=[x]",
        "logger=wandb",
        "trainer.progress_bar=true",
        "trainer.log_every=3",
        "trainer.num_workers=2",
        "trainer.threads=1",
        "trainer.checkpoint_every=7",
        "trainer.eval_batch_size=16",
        "trainer.resume=never",
    ]
    for override in same:
        other = compose_config([*TINY, override], tmp_path)
        assert identity.config_hash(other) == identity.config_hash(base), override
        assert identity.differences(base, other) == [], override
    assert identity.identity(base)["dataset"]["root"] == "${paths.data_dir}/glyphs"  # symbolic, not resolved
    # what a run computes is part of it, the seed included (but not in the group hash)
    for override, keys in [
        ("trainer.max_steps=5", ["trainer.max_steps"]),
        ("seed=1", ["seed"]),
        ("loss.reg_weight=0.5", ["loss.reg_weight"]),
        ("dataset.build.n_classes=22", ["dataset.build.n_classes"]),
        ("dataset.root=/somewhere/else", ["dataset.build.root", "dataset.root"]),
    ]:
        other = compose_config([*TINY, override], tmp_path)
        assert identity.config_hash(other) != identity.config_hash(base), override
        assert [d.split(":")[0] for d in identity.differences(base, other)] == keys, override
    assert identity.group_hash(compose_config([*TINY, "seed=1"], tmp_path)) == identity.group_hash(base)


def test_a_stored_config_yaml_hashes_like_the_config_it_came_from(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "trainer.max_steps=1", "trainer.eval_every=0"], tmp_path)
    run(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    stored = identity.stored_config(tmp_path / "run")
    assert record["config_hash"] == identity.config_hash(stored) == identity.config_hash(cfg)
    assert record["group_hash"] == identity.group_hash(stored) and record["config_hash_version"] == 2
    assert identity.record_problem(tmp_path / "run", record) is None
    assert identity.run_group_hash(tmp_path / "run") == record["group_hash"]


def test_a_metrics_json_that_does_not_belong_to_its_config_yaml_is_named(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    record = json.loads((run_dir / METRICS_FILE).read_text())
    assert "config_hash_version" not in record  # written by an older version: checked with the version-1 hash
    assert identity.record_problem(run_dir, record) is None
    assert identity.legacy_config_hash(identity.stored_config(run_dir)) == record["config_hash"]
    handwritten = {"status": "completed", "final": {"recall@1": 0.99}}
    assert "records no config_hash" in identity.record_problem(run_dir, handwritten)
    forged = {**record, "config_hash": "0123456789abcdef"}
    expected = record["config_hash"]
    assert identity.record_problem(run_dir, forged) == (
        f"its metrics.json says config_hash 0123456789abcdef but its config.yaml hashes to {expected}"
    )
    (run_dir / CONFIG_FILE).unlink()
    assert "no config.yaml" in identity.record_problem(run_dir, record)


@pytest.fixture(scope="module")
def three_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three runs with one name and seed 0 but different configs (the issue's 100-step N=60, 100-step N=32
    and 20-step runs, in miniature), and a second seed of the first."""
    base = tmp_path_factory.mktemp("three")
    fast = [*TINY, "trainer.eval_every=0", "name=demo/npair_mc"]
    runs = {
        "a0": fast,
        "a1": [*fast, "seed=1"],
        "b0": [*fast, "sampler.n_classes=3"],
        "c0": [*fast, "trainer.max_steps=3"],
    }
    out = {}
    for key, overrides in runs.items():
        out[key] = base / "runs" / "demo" / key
        run(compose_config(overrides, base), out[key])
    return out


def test_runs_of_different_configs_are_never_one_group(three_configs: dict[str, Path]) -> None:
    a0, a1, b0, c0 = (three_configs[k] for k in ("a0", "a1", "b0", "c0"))
    groups = identity.runs_by_setting(a0.parents[1])
    assert sorted(groups.values()) == sorted([[a0, a1], [b0], [c0]])  # seeds of one config together
    assert {name for name, _ in groups} == {"demo/npair_mc"}
    assert identity.require_one_setting("demo", [a0, a1]) == identity.run_group_hash(a0)
    with pytest.raises(
        ValueError,
        match=r"demo: these runs are different configurations, not seeds of one: "
        rf".*{a0} \(\w+\), .*{b0} \(\w+\), .*{c0} \(\w+\).*differ in "
        r"sampler.n_classes: 4 -> 3",
    ):
        identity.require_one_setting("demo", [a0, b0, c0])


def test_training_curves_refuse_to_average_different_configs(
    three_configs: dict[str, Path], tmp_path: Path
) -> None:
    from npair.plots import training_curves

    with pytest.raises(ValueError, match=r"label 'npair_mc': these runs are different configurations"):
        training_curves({"npair_mc": [three_configs["a0"], three_configs["c0"]]}, tmp_path / "curves.png")
    out = training_curves({"npair_mc": [three_configs["a0"], three_configs["a1"]]}, tmp_path / "curves.png")
    series = json.loads(out.with_suffix(".json").read_text())["series"]["npair_mc"]
    assert series["nway_acc"]["n_runs"] == 2
    assert series["nway_acc"]["group_hash"] == identity.run_group_hash(three_configs["a0"])


def test_a_table_row_mixing_configs_is_an_error_naming_them(three_configs: dict[str, Path]) -> None:
    from npair.tables import Row, TableSpec, collect

    root = three_configs["a0"].parents[2]
    for src, seed in (("a0", 0), ("b0", 1)):  # seed 1 of the row is a run of another config
        target = root / "runs" / "demo" / "row" / f"seed{seed}"
        shutil.copytree(three_configs[src], target)
        config = OmegaConf.load(target / CONFIG_FILE)
        config.seed = seed  # as if trained with that seed: only the config differs
        (target / CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
        record = json.loads((target / METRICS_FILE).read_text())
        record.update(identity.hashes(identity.stored_config(target)))
        (target / METRICS_FILE).write_text(json.dumps(record))
    spec = TableSpec(
        name="t", title="T", seeds=[0, 1], metrics=[{"key": "recall@1"}], rows=[Row("mc", "demo/row")]
    )
    mixed = (
        r"table t, row 'mc' \(demo/row\): its runs are different configurations, not seeds of one "
        r"\(seed 0: \w{16}, seed 1: \w{16}\)"
    )
    with pytest.raises(ValueError, match=mixed):
        collect(spec, root)
