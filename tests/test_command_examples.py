"""The example commands a user reads — in --help texts, docstrings, comments, configs, the README and docs —
name tables and experiments that exist, and `--help` of training lists training options only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from npair.tables import parse_args
from tests.helpers import CONFIG_DIR, REPO

TABLES = {p.stem for p in (CONFIG_DIR / "table").glob("*.yaml")}
EXPERIMENTS = {
    p.relative_to(CONFIG_DIR / "experiment").with_suffix("").as_posix()
    for p in (CONFIG_DIR / "experiment").rglob("*.yaml")
}
# `TABLE=mini`, `TABLE=table2_sop`; `experiment=mini_table2/npair_mc` or a sweep `experiment=x/a,x/b`.
# Placeholders (`TABLE=<name>`, `experiment=<table>/<row>`, `experiment=...`, `TABLE=$(TABLE)`, f-string
# fields) and Python keyword arguments (`experiment=str(...)`) do not match.
TABLE_EXAMPLE = re.compile(r"\bTABLE=([A-Za-z0-9_]+)")
EXPERIMENT_EXAMPLE = re.compile(r"\bexperiment=([A-Za-z0-9_][A-Za-z0-9_./,-]*)(?![A-Za-z0-9_./,(-])")
SOURCES = [
    "README.md",
    "CONTRIBUTING.md",
    "Makefile",
    "docs/*.md",
    "configs/**/*.yaml",
    "src/**/*.py",
    "scripts/*",
    "notebooks/*.ipynb",
    ".ci/*",
]


def example_files() -> list[Path]:
    return sorted({p for pattern in SOURCES for p in REPO.glob(pattern) if p.is_file()})


def examples(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(file:line, name) for every match of ``pattern`` in the files a user reads."""
    found = []
    for path in example_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for match in pattern.finditer(line):
                for name in match.group(1).rstrip(".,").split(","):
                    found.append((f"{path.relative_to(REPO)}:{number}", name))
    return found


def test_the_scan_finds_the_examples_it_must() -> None:
    tables = examples(TABLE_EXAMPLE)
    assert ("src/npair/tables.py:3", "mini") in tables and len(tables) > 20
    slurm = "configs/hydra/launcher/slurm.yaml"
    assert any(where.startswith(slurm) for where, _ in examples(EXPERIMENT_EXAMPLE))
    assert TABLE_EXAMPLE.findall("python -m npair.tables TABLE=broken --dry-run") == ["broken"]


def test_every_example_table_exists() -> None:
    unknown = [(where, name) for where, name in examples(TABLE_EXAMPLE) if name not in TABLES]
    assert not unknown, f"examples name tables that configs/table/ does not have: {unknown}"


def test_every_example_experiment_exists() -> None:
    unknown = [(where, name) for where, name in examples(EXPERIMENT_EXAMPLE) if name not in EXPERIMENTS]
    assert not unknown, f"examples name experiments that configs/experiment/ does not have: {unknown}"


def test_table_overrides_are_accepted_after_options() -> None:
    args = parse_args(["--jobs", "1", "trainer.max_steps=600", "--no-train", "TABLE=smoke", "seed=3"])
    assert (args.table, args.jobs, args.no_train) == ("smoke", 1, True)
    assert args.overrides == ["trainer.max_steps=600", "seed=3"]


def test_training_help_lists_the_training_groups_and_not_the_table_specs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "npair.train", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    groups = dict(
        line.split(": ", 1)
        for line in result.stdout.splitlines()
        if re.fullmatch(r"[a-z_/0-9]+: .+", line) and not line.startswith(" ")
    )
    assert "table" not in groups
    training = {
        "backbone",
        "dataset",
        "eval",
        "logger",
        "loss",
        "optimizer",
        "sampler",
        "scheduler",
        "trainer",
    }
    assert training <= set(groups)
    assert "npair_mc" in groups["loss"].split(", ") and "triplet" in groups["sampler"].split(", ")
    assert "--debug" in result.stdout and "name: ${loss.name}-${dataset.name}" in result.stdout


@pytest.mark.parametrize("module", ["npair.tables", "npair.evaluate", "npair.plots", "npair.data.download"])
def test_each_command_line_offers_debug(module: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "--debug" in result.stdout, result.stderr[-2000:]
