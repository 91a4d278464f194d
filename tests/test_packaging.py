"""The wheel carries the configs (npair/configs) and runs outside a checkout; config_dir() finds them.

The end-to-end test builds the wheel from a copy of the checkout, installs it with ``pip install --no-deps
--target`` (reusing the torch of the running interpreter), and runs the two commands a user of the
installed package runs first, from a folder outside the checkout. Measured: 20 s on 2 cores, 77 s while
other jobs kept the load average near 6; most of it generates the glyphs of the 2-step training run. It stays
in the default suite so that CI runs it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from npair import config_location
from npair.config_location import config_dir

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "configs", "src")


def test_config_dir_in_a_checkout_is_the_repository_configs() -> None:
    assert config_dir() == REPO / "configs"
    assert (config_dir() / "train.yaml").is_file()


def test_config_dir_without_configs_names_both_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the module is installed (not under src/) in a package that carries no configs.
    fake = tmp_path / "site-packages" / "npair" / "config_location.py"
    monkeypatch.setattr(config_location, "__file__", str(fake))
    monkeypatch.setattr(
        config_location.resources, "files", lambda package: tmp_path / "site-packages" / package
    )
    with pytest.raises(FileNotFoundError) as error:
        config_dir()
    message = str(error.value)
    assert "train.yaml" in message and str(tmp_path / "site-packages" / "npair" / "configs") in message
    assert "pip install" in message


def _build_wheel(source: Path, dist: Path) -> Path:
    """``pip wheel`` of a copy of the checkout; without build isolation when setuptools is recent enough."""
    source.mkdir(parents=True)
    for name in BUILD_INPUTS:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)]
    try:
        setuptools_major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        setuptools_major = 0
    if setuptools_major >= 77:  # pyproject.toml's build requirement: build offline with what is installed
        command.insert(4, "--no-build-isolation")
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    (wheel,) = dist.glob("npair-*.whl")
    return wheel


def _outside_env(target: Path) -> dict[str, str]:
    """The environment of a user of the installed package: only the target folder on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NPAIR_ROOT")}
    env.update(PYTHONPATH=str(target), WANDB_MODE="offline", WANDB_SILENT="true", MPLBACKEND="Agg")
    return env


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path / "source", tmp_path / "dist")

    names = set(zipfile.ZipFile(wheel).namelist())
    missing_modules = sorted(
        str(p.relative_to(REPO / "src"))
        for p in (REPO / "src" / "npair").rglob("*.py")
        if str(p.relative_to(REPO / "src")) not in names
    )
    assert not missing_modules, (
        f"modules missing from the wheel (add their package to pyproject.toml): {missing_modules}"
    )
    missing_configs = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "configs").rglob("*.yaml")
        if f"npair/{p.relative_to(REPO)}" not in names
    )
    assert not missing_configs, f"configs missing from the wheel: {missing_configs}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-compile",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = _outside_env(target)

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args],
            check=False,
            cwd=outside,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    where = run(
        "-c", "import npair, npair.config_location as c; print(npair.__file__); print(c.config_dir())"
    )
    assert where.returncode == 0, where.stderr
    module_file, configs = where.stdout.split()
    assert Path(module_file).is_relative_to(target), f"imported {module_file}, not the installed copy"
    assert Path(configs) == (target / "npair" / "configs").resolve()

    train = run("-m", "npair.train", "trainer.max_steps=2", "logger=none")
    assert train.returncode == 0, f"training from the installed package failed:\n{train.stderr[-4000:]}"
    (metrics_file,) = (outside / "outputs" / "runs").glob("*/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["status"] == "completed" and "recall@1" in metrics["final"]

    dry_run = run("-m", "npair.tables", "TABLE=smoke", "--dry-run")
    assert dry_run.returncode == 0, dry_run.stderr
    assert "smoke/" in dry_run.stdout and "[missing]" in dry_run.stdout
