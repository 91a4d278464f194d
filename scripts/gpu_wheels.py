"""The wheel folder for the GPU check on a machine without network (scripts/gpu_check.sh), and its size
budget.

A GPU machine may have torch and torchvision (and numpy, scipy, scikit-learn, pillow, tqdm) but not the
rest of what the check imports. On a machine with network, download those packages as wheels for the GPU
machine's Python, place the folder in the checkout (``.whl/``, ignored by git) or beside it (``../wheels``),
and copy the checkout over; the check installs, without network, the wheels whose package is missing there.

    python scripts/gpu_wheels.py prepare               # hydra-core, omegaconf, antlr4, PyYAML, PML,
                                                       # faiss-cpu -> .whl/
    python scripts/gpu_wheels.py prepare --wandb       # ... and wandb with its dependencies
    python scripts/gpu_wheels.py prepare --faiss none  # without faiss (the evaluator then uses torch alone)
    python scripts/gpu_wheels.py size                  # what would travel: checkout + .whl/ against 64 MiB
    python scripts/gpu_wheels.py install --wheels .whl --target /tmp/site   # what gpu_check.py does

``prepare`` runs ``pip download --no-deps --only-binary=:all:`` for the target platform (default CPython
3.12 on manylinux x86-64) and builds the one package that has no wheel on PyPI (antlr4-python3-runtime
4.9.3, pure Python) with ``pip wheel``; then it reports the sizes against the budget (``size``). faiss-gpu
is not offered: faiss-gpu-cu12 needs CUDA 12's cuBLAS wheel, about 0.6 GB in all, far over the budget (and
a CUDA 13 machine does not load it); the evaluator runs on the GPU through its torch backend without it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUDGET_BYTES = 64 * 2**20  # the largest copy of the checkout the GPU machine is given
# The versions this checkout is tested with (the development environment's), each a wheel on PyPI except
# antlr4.
PACKAGES = [
    "hydra-core==1.3.8",
    "omegaconf==2.3.1",
    "PyYAML==6.0.4",
    "packaging==26.4",
    "pytorch-metric-learning==2.9.0",
    "tqdm==4.70.1",
]
BUILT_LOCALLY = ["antlr4-python3-runtime==4.9.3"]  # omegaconf 2.3 needs 4.9.*; PyPI has only its sdist
FAISS = {"cpu": ["faiss-cpu==1.15.1"], "none": []}
WANDB = "wandb==0.31.0"  # with --wandb, downloaded with its dependencies (the check itself runs logger=none)
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


# ------------------------------------------------------------------------------------------ wheels
def parse_wheel(path: Path) -> tuple[str, str]:
    """(distribution name, version) of a wheel file name (PEP 427), the name normalised (PEP 503)."""
    match = WHEEL_NAME.match(path.name)
    if not match:
        raise ValueError(f"{path}: not a wheel file name (<name>-<version>-<python>-<abi>-<platform>.whl)")
    return normalise(match["name"]), match["version"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    """The version of distribution ``name`` this interpreter has, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def find_wheels(folder: Path) -> list[Path]:
    """The wheels of ``folder``; two versions of one package are an error (pip would refuse both)."""
    wheels = sorted(folder.glob("*.whl"))
    seen: dict[str, Path] = {}
    for wheel in wheels:
        name, _ = parse_wheel(wheel)
        if name in seen:
            raise ValueError(f"{folder}: two wheels of {name} ({seen[name].name}, {wheel.name}); keep one")
        seen[name] = wheel
    return wheels


def install(folder: Path, target: Path, timeout_s: float | None = None) -> dict[str, Any]:
    """Install, without network, the wheels of ``folder`` whose package this interpreter lacks, into
    ``target``.

    Wheels of packages already installed are left out (the installed version wins: a wheel on PYTHONPATH
    would shadow it). Returns what was installed, what was left out and pip's exit code.
    """
    wheels = find_wheels(folder)
    chosen, present = [], {}
    for wheel in wheels:
        name, version = parse_wheel(wheel)
        have = installed_version(name)
        if have is not None:
            present[name] = {"wheel": version, "installed": have}
        else:
            chosen.append(wheel)
    report: dict[str, Any] = {
        "folder": str(folder),
        "target": str(target),
        "wheels": len(wheels),
        "installed": [w.name for w in chosen],
        "already_present": present,
        "pip_exit_code": 0,
    }
    if chosen:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(target),
            *map(str, chosen),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            report.update(pip_exit_code=None, error=f"pip install took longer than {timeout_s:.0f} s")
        else:
            report.update(pip_exit_code=proc.returncode, pip_output=(proc.stdout + proc.stderr)[-3000:])
    return report


# ------------------------------------------------------------------------------------------ budget
def travelling_files(repo: Path) -> list[Path]:
    """What a copy of the checkout holds: git's tracked and untracked-not-ignored files (else every file)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo,
            capture_output=True,
            check=True,
        ).stdout.decode()
        return [repo / p for p in out.split("\0") if p and (repo / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts]


def budget(repo: Path, wheels: Path) -> dict[str, Any]:
    """Bytes of the checkout's files and of the wheel folder (when git would not copy it anyway), against
    BUDGET_BYTES."""
    files = {p.resolve() for p in travelling_files(repo)}
    checkout = sum(p.stat().st_size for p in files)
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    rows = [{"wheel": w.name, "bytes": w.stat().st_size} for w in found]
    extra = sum(w.stat().st_size for w in found if w.resolve() not in files)
    total = checkout + extra
    return {
        "checkout_bytes": checkout,
        "wheel_bytes": sum(r["bytes"] for r in rows),
        "total_bytes": total,
        "budget_bytes": BUDGET_BYTES,
        "fits": total <= BUDGET_BYTES,
        "wheels": rows,
    }


def print_budget(report: dict[str, Any]) -> None:
    mib = 2**20
    for row in report["wheels"]:
        print(f"{row['bytes'] / mib:9.2f} MiB  {row['wheel']}")
    print(
        f"{report['wheel_bytes'] / mib:9.2f} MiB  wheels\n"
        f"{report['checkout_bytes'] / mib:9.2f} MiB  checkout files\n"
        f"{report['total_bytes'] / mib:9.2f} MiB  in all, budget {report['budget_bytes'] / mib:.0f} MiB: "
        f"{'fits' if report['fits'] else 'DOES NOT FIT'}"
    )


# ------------------------------------------------------------------------------------------ prepare
def pip_download(specs: list[str], dest: Path, python_version: str, deps: bool) -> None:
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platform_args,
        "-d",
        str(dest),
        *([] if deps else ["--no-deps"]),
        *specs,
    ]
    subprocess.run(cmd, check=True)


def prepare(dest: Path, faiss: str, wandb: bool, python_version: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    pip_download([*PACKAGES, *FAISS[faiss]], dest, python_version, deps=False)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), *BUILT_LOCALLY],
        check=True,
    )
    if wandb:
        pip_download([WANDB], dest, python_version, deps=True)
    find_wheels(dest)  # one version of each package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download the wheels, then report the size budget")
    p.add_argument("--dest", type=Path, default=REPO / ".whl")
    p.add_argument("--faiss", choices=sorted(FAISS), default="cpu", help="faiss-cpu (default) or none")
    p.add_argument("--wandb", action="store_true", help="also wandb and its dependencies (about 25 MB)")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    s = sub.add_parser("size", help="the checkout + wheel folder against the 64 MiB budget")
    s.add_argument("--wheels", type=Path, default=REPO / ".whl")
    i = sub.add_parser("install", help="install the missing packages' wheels into a target folder, offline")
    i.add_argument("--wheels", type=Path, required=True)
    i.add_argument("--target", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "install":
        report = install(args.wheels, args.target)
        print(json.dumps(report, indent=2))
        return 0 if report["pip_exit_code"] == 0 else 1
    if args.command == "prepare":
        prepare(args.dest, args.faiss, args.wandb, args.python_version)
        args.wheels = args.dest
    report = budget(REPO, args.wheels)
    print_budget(report)
    return 0 if report["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
