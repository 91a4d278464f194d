"""Experiment configs and table specs, without data and without training.

Every ``configs/experiment/**.yaml`` composes, its ``name`` is its path (the table runner keys run
directories by it) and its loss reads the batch layout its sampler makes. Every row of a full-scale table
trains with the paper's batch (2N images for "N-pair", N·M for "N×M", the same number of images for the
triplet/softmax rows: 144 in Table 1, 120 in Table 2, 384 on WebFace but 640 / 1,440 for 320- / 720-pair-mc)
on the table's dataset, loss and evaluation. Every table spec loads and points at existing experiments.
The table runner lists a table's runs without the data and stops before training when the data is missing.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import DictConfig

from npair.guards import validate_settings
from npair.tables import load_spec, table_names
from tests.helpers import CONFIG_DIR

EXPERIMENT_DIR = CONFIG_DIR / "experiment"
TABLE_DIR = CONFIG_DIR / "table"
EXPERIMENTS = sorted(
    p.relative_to(EXPERIMENT_DIR).with_suffix("").as_posix() for p in EXPERIMENT_DIR.rglob("*.yaml")
)
SPEC_FILES = sorted(p.stem for p in TABLE_DIR.glob("*.yaml"))
LAPTOP_PREFIXES = ("mini", "ablation", "smoke", "claim_check")  # embedded data; every other spec: full scale

# The paper's images per batch for each full table (docs/paper.md §3.1, LFW-table caption) and the two rows
# that break the LFW table's fixed 384.
PAPER_BATCH = {"table1_": 144, "table2_": 120, "table3_": 384, "table4_": 384, "curves_": 384}
BATCH_EXCEPTIONS = {"320-pair-mc": 640, "720-pair-mc": 1440}
# What each full table trains on and how it is evaluated (docs/paper.md §4).
TABLE_SETUP = {
    "table1_car333": ("car333", "recognition", "googlenet"),
    "table1_flower610": ("flower610", "recognition", "googlenet"),
    "table1_flowers102": ("flowers102", "recognition", "googlenet"),
    "table2_sop": ("sop", "sop", "googlenet"),
    "table2_cars196": ("cars196", "retrieval", "googlenet"),
    "table2_cub200": ("cub200", "retrieval", "googlenet"),
    "table3_lfw": ("webface_lfw", "faces", "casia_net"),
    "table4_nxm": ("webface_lfw", "faces", "casia_net"),
    "curves_webface": ("webface_lfw", "faces", "casia_net"),
}
EMBEDDING_DIM = {"sop": 512, "cub200": 64, "cars196": 64}  # docs/design.md §3


@pytest.fixture(scope="module", autouse=True)
def hydra_context():
    """One Hydra initialisation for the module: composing ~50 experiments stays fast."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        yield
    compose_experiment.cache_clear()


@functools.cache
def compose_experiment(experiment: str) -> DictConfig:
    """The run config exactly as ``python -m npair.train experiment=<experiment>`` composes it."""
    return compose("train", overrides=[f"experiment={experiment}"])


def is_collection(name: str) -> bool:
    return table_names(name) != [name]


FULL_TABLES = [n for n in SPEC_FILES if not n.startswith(LAPTOP_PREFIXES) and not is_collection(n)]


def images_per_batch(cfg: DictConfig) -> int:
    """Images in one training batch, from the sampler's layout and its size keys."""
    layout = get_class(cfg.sampler._target_).layout
    s = cfg.sampler
    if layout == "class_blocks":
        return int(s.n_classes) * int(s.n_per_class)
    if layout == "triplets":
        return 3 * int(s.n_triplets)
    if layout == "tuplets":
        return int(s.n_classes) * (int(s.n_classes) + 1)
    if layout == "pairs":
        return 2 * int(s.n_pairs)
    raise AssertionError(f"unknown sampler layout {layout!r}")


def paper_batch(table: str, label: str) -> int:
    if label in BATCH_EXCEPTIONS:
        return BATCH_EXCEPTIONS[label]
    return next(size for prefix, size in PAPER_BATCH.items() if table.startswith(prefix))


def expected_loss_and_sampler(label: str) -> tuple[str, str]:
    """The loss and sampler a row label of the paper names (docs/paper.md §5: "60-pair-mc-nm", "96×4")."""
    if re.fullmatch(r"\d+×\d+", label):
        return "npair_mc", "npair"
    if m := re.fullmatch(r"\d+-pair-(mc|ovo)(-nm)?", label):
        return f"npair_{m.group(1)}", "npair_hard_class" if m.group(2) else "npair"
    return {
        "triplet": ("triplet", "triplet"),
        "triplet-nm": ("triplet_nm", "npair"),
        "softmax": ("softmax", "npair"),
    }[label]


# ------------------------------------------------------------------------------------------ experiments
def test_experiment_configs_exist() -> None:
    for table in ("table1", "table2", "table3", "table4"):
        assert any(e.startswith(f"{table}/") for e in EXPERIMENTS), f"no configs/experiment/{table}/*.yaml"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_with_its_path_as_name_and_matching_layouts(experiment: str) -> None:
    cfg = compose_experiment(experiment)
    assert cfg.name == experiment, f"configs/experiment/{experiment}.yaml sets name={cfg.name!r}"
    loss_layout = get_class(cfg.loss._target_).layout
    sampler_layout = get_class(cfg.sampler._target_).layout
    assert loss_layout in ("any", sampler_layout), (
        f"{experiment}: loss {cfg.loss.name} reads {loss_layout!r} batches, sampler {cfg.sampler.name} makes "
        f"{sampler_layout!r}"
    )
    if getattr(get_class(cfg.loss._target_), "layout", None) == "class_blocks":
        assert int(cfg.sampler.n_per_class) >= 2
    validate_settings(cfg)  # every setting within its range (npair.guards.SETTINGS)


@pytest.mark.parametrize("table", FULL_TABLES)
def test_full_table_rows_train_the_papers_batch_loss_and_setup(table: str) -> None:
    spec = load_spec(table)
    dataset, evaluation, backbone = TABLE_SETUP[table]
    schedules = set()
    for row in spec.rows:
        cfg = compose_experiment(row.experiment)
        where = f"{table} / {row.label} ({row.experiment})"
        assert images_per_batch(cfg) == paper_batch(table, row.label), where
        if m := re.fullmatch(r"(\d+)-pair-.*", row.label):
            assert (int(cfg.sampler.n_classes), int(cfg.sampler.n_per_class)) == (int(m.group(1)), 2), where
        if m := re.fullmatch(r"(\d+)×(\d+)", row.label):
            n_by_m = (int(cfg.sampler.n_classes), int(cfg.sampler.n_per_class))
            assert n_by_m == tuple(map(int, m.groups())), where
        assert (cfg.loss.name, cfg.sampler.name) == expected_loss_and_sampler(row.label), where
        assert (cfg.dataset.name, cfg.eval.name, cfg.backbone.name) == (dataset, evaluation, backbone), where
        # ImageNet-pretrained GoogLeNet for objects, the CASIA net from scratch for faces
        assert bool(cfg.backbone.net.pretrained) is (backbone == "googlenet"), where
        if dataset in EMBEDDING_DIM:
            assert int(cfg.dataset.embedding_dim) == EMBEDDING_DIM[dataset], where
        if evaluation == "recognition":
            assert list(cfg.eval.vrf_negatives) == [1, 71], where  # Table 1: VRF (neg=1), VRF (neg=71)
        if evaluation == "sop":
            assert list(cfg.eval.ks) == [1, 10, 100, 1000], where
        if evaluation == "retrieval":
            assert list(cfg.eval.ks) == [1, 2, 4, 8], where
        # every row of a table: the same optimiser, schedule and number of steps
        schedules.add(
            (cfg.optimizer.name, float(cfg.optimizer.lr), cfg.scheduler.name, int(cfg.trainer.max_steps))
        )
    assert len(schedules) == 1, f"{table}: rows differ in optimiser/schedule/steps: {schedules}"


def test_webface_schedule_follows_the_training_curve_figure() -> None:
    cfg = compose_experiment("table3/webface_npair_mc_192")
    assert int(cfg.trainer.max_steps) == 240_000  # the figure's x-axis
    assert list(cfg.scheduler.milestones) == [160_000, 200_000]  # its step changes
    assert int(cfg.trainer.probe_classes) == 192  # measured as a 192-way problem


# ------------------------------------------------------------------------------------------ table specs
@pytest.mark.parametrize("name", SPEC_FILES)
def test_table_spec_loads_and_its_rows_exist(name: str) -> None:
    for table in table_names(name):
        spec = load_spec(table)
        assert spec.seeds and spec.rows and spec.metrics, table
        labels = [row.label for row in spec.rows]
        keys = [metric["key"] for metric in spec.metrics]
        assert len(set(labels)) == len(labels) and len(set(keys)) == len(keys), table
        for row in spec.rows:
            assert row.experiment in EXPERIMENTS, (
                f"{table} / {row.label}: no configs/experiment/{row.experiment}.yaml"
            )
            assert set(row.paper) <= set(keys), f"{table} / {row.label}: paper numbers for unknown metrics"
        if spec.curves:
            assert set(spec.curves["rows"]) <= set(labels), table


def test_all_includes_every_full_table() -> None:
    assert sorted(table_names("all")) == sorted(FULL_TABLES)
    assert not set(FULL_TABLES) & set(table_names("mini"))


def test_full_tables_carry_the_papers_numbers() -> None:
    for table in FULL_TABLES:
        spec = load_spec(table)
        assert spec.paper_source, table
        assert all(row.paper for row in spec.rows), f"{table}: a row without the paper's numbers"
    # spot checks against docs/paper.md §5 (Table 2a with its odd bold R@1000, the LFW table, the N×M table)
    sop = {row.label: row.paper for row in load_spec("table2_sop").rows}
    assert sop["60-pair-mc-nm"]["recall@1000"] == 97.81 and sop["60-pair-mc"]["recall@1000"] == 97.92
    lfw = {row.label: row.paper for row in load_spec("table3_lfw").rows}
    assert (lfw["720-pair-mc"]["lfw_acc"], lfw["720-pair-mc"]["dir@far=1%"]) == (98.45, 73.93)
    nxm = {row.label: row.paper for row in load_spec("table4_nxm").rows}
    assert nxm["192×2"] == lfw["192-pair-mc"]


# ------------------------------------------------------------------------------------------ the runner
def run_tables(args: list[str], root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NPAIR_ROOT": str(root), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, "-m", "npair.tables", *args],
        check=False,
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dry_run_lists_every_run_with_its_resolved_config_without_data(tmp_path: Path) -> None:
    result = run_tables(["TABLE=table2_cub200", "--dry-run"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    spec = load_spec("table2_cub200")
    for row in spec.rows:
        for seed in spec.seeds:
            assert f"--- table2_cub200 / {row.label} / seed {seed} [missing]" in out
    assert out.count("--- table2_cub200 / ") == len(spec.rows) * len(spec.seeds)
    assert "name: table2/cub200_npair_mc" in out and "name: table2/cub200_triplet" in out
    assert f"root: {tmp_path}/data/CUB_200_2011" in out  # resolved under NPAIR_ROOT
    assert "max_steps: 7500" in out and "n_triplets: 40" in out
    assert not (tmp_path / "outputs").exists()  # nothing run, nothing written


def test_missing_data_stops_before_training_and_says_how_to_fetch_it(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = run_tables(["TABLE=table2_cub200", "--outputs", str(outputs)], tmp_path)
    assert result.returncode != 0
    assert "make data DATASET=cub200" in result.stdout + result.stderr
    assert not (outputs / "runs").exists()  # stopped before any training run started
