"""GPU check, stage 1 — the environment: nvidia-smi; torch, CUDA and cuDNN versions; which packages were
found.

Fails when the check cannot run here: no CUDA device in ``gpu`` mode, or a package the later stages need
(hydra-core and omegaconf for training, pytorch-metric-learning for the evaluator comparison) missing —
bring it as a wheel (scripts/gpu_wheels.py prepare). faiss and wandb are optional: reported, not required.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_common import REPO, Result, nccl_version, stage_main

# import name -> distribution name. Required: the later stages import them.
REQUIRED = {
    "numpy": "numpy",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "tqdm": "tqdm",
    "yaml": "PyYAML",
    "omegaconf": "omegaconf",
    "hydra": "hydra-core",
    "antlr4": "antlr4-python3-runtime",
    "pytorch_metric_learning": "pytorch-metric-learning",
}
OPTIONAL = {"faiss": "faiss-cpu / faiss-gpu", "wandb": "wandb", "triton": "triton"}


def package(module: str) -> dict[str, Any]:
    """Whether ``module`` imports, its version and where it was loaded from."""
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 (an import can fail in many ways; all mean "not usable")
        return {"found": False, "error": f"{type(err).__name__}: {err}"}
    version = getattr(mod, "__version__", None)
    return {
        "found": True,
        "version": str(version) if version is not None else None,
        "path": str(Path(getattr(mod, "__file__", "") or "").parent),
    }


def nvidia_smi(result: Result, mode: str) -> None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        result.check(
            "nvidia-smi runs",
            False if mode == "gpu" else None,
            "nvidia-smi not found" + ("" if mode == "gpu" else " (cpu-smoke: not needed)"),
        )
        return
    full = subprocess.run([exe], capture_output=True, text=True, timeout=60, check=False)
    print(full.stdout, full.stderr, sep="\n", flush=True)
    query = subprocess.run(
        [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    gpus = [line.strip() for line in query.stdout.splitlines() if line.strip()]
    result.figures["nvidia_smi"] = gpus
    ok = full.returncode == 0 and bool(gpus)
    result.check("nvidia-smi runs", ok if mode == "gpu" else (ok or None), gpus or full.stderr.strip()[-300:])


def torch_versions(result: Result, mode: str) -> None:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception as err:  # noqa: BLE001
        info["torchvision"] = f"not importable: {type(err).__name__}: {err}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device_count=torch.cuda.device_count(),
            device=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            bf16_supported=torch.cuda.is_bf16_supported(),
            nccl=nccl_version(),
        )
    result.figures["torch"] = info
    if mode == "gpu":
        result.check(
            "CUDA device available to torch",
            info["cuda_available"],
            info.get("device")
            or "torch.cuda.is_available() is False: use --cpu-smoke on a machine without a GPU",
        )
    else:
        result.check("CUDA device available to torch", None, "cpu-smoke: CPU only")
    result.check(
        "torchvision imports", not str(info["torchvision"]).startswith("not importable"), info["torchvision"]
    )


def packages(result: Result) -> None:
    required = {name: package(module) for module, name in REQUIRED.items()}
    optional = {name: package(module) for module, name in OPTIONAL.items()}
    if optional["faiss-cpu / faiss-gpu"]["found"]:
        import faiss

        optional["faiss-cpu / faiss-gpu"]["gpu_support"] = hasattr(faiss, "StandardGpuResources")
        optional["faiss-cpu / faiss-gpu"]["gpus"] = (
            faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        )
    result.figures["packages"] = {"required": required, "optional": optional}
    missing = [name for name, info in required.items() if not info["found"]]
    result.check(
        "required packages import",
        not missing,
        f"missing: {', '.join(missing)} — put their wheels in the wheel folder "
        "(python scripts/gpu_wheels.py prepare) and run again"
        if missing
        else "all found",
    )
    for name, info in optional.items():
        print(f"optional {name}: {info}", flush=True)
    import npair

    where = Path(npair.__file__).resolve()
    result.check("npair imports from this checkout", REPO / "src" in where.parents, str(where))


def machine(result: Result) -> None:
    result.figures["machine"] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "c_compiler": shutil.which("cc") or shutil.which("gcc"),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }


def run(mode: str, work: Path, result: Result, budget_s: float) -> None:
    machine(result)
    nvidia_smi(result, mode)
    torch_versions(result, mode)
    packages(result)


if __name__ == "__main__":
    stage_main(run)
