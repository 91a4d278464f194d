"""The GPU check's wheel folder (scripts/gpu_wheels.py): wheel names, the offline install of what is
missing only, and the 64 MiB budget of what travels to the GPU machine."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import gpu_wheels


def _wheel(folder: Path, name: str, version: str, module: str) -> Path:
    """A minimal pure-Python wheel (PEP 427) holding ``module``.py."""
    dist_info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{module}.py", "VALUE = 7\n")
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(
            f"{dist_info}/RECORD",
            f"{module}.py,,\n{dist_info}/METADATA,,\n{dist_info}/WHEEL,,\n{dist_info}/RECORD,,\n",
        )
    return path


@pytest.mark.parametrize(
    "filename, expected",
    [
        ("hydra_core-1.3.8-py3-none-any.whl", ("hydra-core", "1.3.8")),
        (
            "faiss_cpu-1.15.1-cp310-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            ("faiss-cpu", "1.15.1"),
        ),
        ("Pillow-10.0.0-1-cp312-cp312-manylinux_2_28_x86_64.whl", ("pillow", "10.0.0")),  # with a build tag
    ],
)
def test_wheel_file_names_give_the_distribution_and_version(filename: str, expected: tuple[str, str]) -> None:
    assert gpu_wheels.parse_wheel(Path(filename)) == expected


def test_a_file_that_is_no_wheel_name_is_named() -> None:
    with pytest.raises(ValueError, match=r"notes.whl: not a wheel file name"):
        gpu_wheels.parse_wheel(Path("notes.whl"))


def test_two_versions_of_one_package_are_refused(tmp_path: Path) -> None:
    _wheel(tmp_path, "probe_pkg", "0.1", "probe_a")
    _wheel(tmp_path, "probe_pkg", "0.2", "probe_b")
    with pytest.raises(ValueError, match=r"two wheels of probe-pkg .*keep one"):
        gpu_wheels.find_wheels(tmp_path)


def test_install_puts_only_the_missing_packages_into_the_target(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    probe = _wheel(wheels, "npair_gpu_check_probe", "0.1", "npair_gpu_check_probe")
    (wheels / "numpy-0.0.1-py3-none-any.whl").write_bytes(b"not even a zip: installed numpy wins")
    report = gpu_wheels.install(wheels, tmp_path / "site")
    assert report["pip_exit_code"] == 0, report
    assert report["installed"] == [probe.name]
    assert report["already_present"]["numpy"]["wheel"] == "0.0.1"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", "import npair_gpu_check_probe as p; print(p.VALUE)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "7"


def test_the_budget_counts_the_checkout_and_the_wheels(tmp_path: Path) -> None:
    small = gpu_wheels.budget(gpu_wheels.REPO, tmp_path)
    assert small["wheel_bytes"] == 0 and small["fits"]
    assert 0 < small["checkout_bytes"] == small["total_bytes"] < gpu_wheels.BUDGET_BYTES
    with open(tmp_path / "big-1.0-py3-none-any.whl", "wb") as handle:  # sparse: costs no disk
        handle.truncate(gpu_wheels.BUDGET_BYTES)
    big = gpu_wheels.budget(gpu_wheels.REPO, tmp_path)
    assert big["wheel_bytes"] == gpu_wheels.BUDGET_BYTES
    assert big["total_bytes"] == small["checkout_bytes"] + gpu_wheels.BUDGET_BYTES and not big["fits"]
    assert gpu_wheels.main(["size", "--wheels", str(tmp_path)]) == 1


def test_the_pinned_wheels_are_one_version_each() -> None:
    names = [
        gpu_wheels.normalise(s.split("==")[0])
        for s in [*gpu_wheels.PACKAGES, *gpu_wheels.BUILT_LOCALLY, *gpu_wheels.FAISS["cpu"]]
    ]
    assert len(names) == len(set(names)) and all("==" in s for s in gpu_wheels.PACKAGES)
