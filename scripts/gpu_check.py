"""The GPU check: does the paper-scale path work on this GPU, and how fast is it? (``scripts/gpu_check.sh``)

    scripts/gpu_check.sh RESULTS_DIR                 # on a GPU machine: at most 8 minutes, installs included
    scripts/gpu_check.sh RESULTS_DIR --cpu-smoke     # every stage at toy size on the CPU (CI runs it)

Stages, each a script of its own run in a fresh process with a time budget (killed past it, with its whole
process group), each recorded as pass / fail with its checks and figures; a failed stage does not stop the
next one:

0. wheels — install, without network, the wheels of the wheel folder whose package is missing
   (scripts/gpu_wheels.py): ``--wheels DIR``, else $GPU_CHECK_WHEELS, else ``.whl/`` in the checkout, else
   ``../wheels`` beside it; none found: the installed packages are used;
1. environment (scripts/gpu_check_env.py) — nvidia-smi, torch / CUDA / cuDNN versions, packages found;
2. training speed (scripts/gpu_check_speed.py → scripts/bench_train.py) — GoogLeNet at 224, 120 images
   per step, bf16, channels_last, compile off / on, 8 workers over generated JPEGs: images/s, peak memory;
3. evaluator (scripts/gpu_check_eval.py) — Online-Products scale on the GPU against pytorch-metric-learning,
   GPU = CPU metrics on a subsample;
4. kill and resume (scripts/gpu_check_resume.py) — a short ``python -m npair.train trainer=gpu`` run
   killed with SIGKILL and resumed, against an uninterrupted one;
5. multi-process (scripts/gpu_check_ddp.py) — ``torchrun ... -m npair.train trainer=ddp`` and the NCCL
   collectives.

RESULTS_DIR receives ``gpu_check.json`` (rewritten after every stage: a check stopped midway keeps the
stages it finished) and ``logs/<n>_<stage>.log``; scratch files (runs, checkpoints, JPEGs) go to a temporary
folder removed at the end (``--keep-work`` keeps it). Exit code 0 when every stage passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))

import gpu_wheels  # stdlib only, like this driver: it runs before any wheel is installed

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    script: str
    budget_s: dict[str, float]  # per mode; the GPU budgets with the install add up to at most 8 minutes


STAGES = (
    Stage(1, "environment", "gpu_check_env.py", {"gpu": 25, "cpu-smoke": 60}),
    Stage(2, "training_speed", "gpu_check_speed.py", {"gpu": 200, "cpu-smoke": 150}),
    Stage(3, "evaluator", "gpu_check_eval.py", {"gpu": 75, "cpu-smoke": 60}),
    Stage(4, "kill_and_resume", "gpu_check_resume.py", {"gpu": 85, "cpu-smoke": 120}),
    Stage(5, "multi_process", "gpu_check_ddp.py", {"gpu": 60, "cpu-smoke": 120}),
)
INSTALL_BUDGET_S = 30  # stage 0 on the GPU (pip, offline): 30 + 25 + 200 + 75 + 85 + 60 = 475 s, 5 s to spare


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------- stage 0
def wheel_folder(explicit: Path | None) -> Path | None:
    """The wheel folder to install from: --wheels, $GPU_CHECK_WHEELS, .whl/ in the checkout, ../wheels."""
    if explicit is not None:
        if not explicit.is_dir():
            raise SystemExit(f"--wheels {explicit}: no such folder (a folder of .whl files)")
        return explicit
    if os.environ.get("GPU_CHECK_WHEELS"):
        folder = Path(os.environ["GPU_CHECK_WHEELS"])
        if not folder.is_dir():
            raise SystemExit(f"GPU_CHECK_WHEELS={folder}: no such folder (a folder of .whl files)")
        return folder
    for folder in (REPO / ".whl", REPO.parent / "wheels"):
        if folder.is_dir() and any(folder.glob("*.whl")):
            return folder
    return None


def install_wheels(
    folder: Path | None, work: Path, log: Path, mode: str
) -> tuple[dict[str, Any], str | None]:
    """Stage 0: the record, and the folder to put on PYTHONPATH (None when nothing was installed)."""
    started = time.perf_counter()
    record: dict[str, Any] = {"stage": 0, "name": "wheels", "log": f"logs/{log.name}"}
    log.parent.mkdir(parents=True, exist_ok=True)
    if folder is None:
        log.write_text(
            "no wheel folder (--wheels, $GPU_CHECK_WHEELS, .whl/, ../wheels): using installed packages\n"
        )
        record.update(
            status="pass",
            checks=[{"name": "wheel folder", "ok": None, "detail": "none found"}],
            figures={},
            seconds=0.0,
        )
        return record, None
    target = work / "site"
    try:
        report = gpu_wheels.install(folder, target, timeout_s=INSTALL_BUDGET_S if mode == "gpu" else None)
    except (ValueError, OSError) as err:
        report = {"folder": str(folder), "error": str(err), "pip_exit_code": None}
    log.write_text(json.dumps(report, indent=2) + "\n")
    ok = report.get("pip_exit_code") == 0
    record.update(
        status="pass" if ok else "fail",
        figures=report,
        seconds=round(time.perf_counter() - started, 1),
        checks=[
            {
                "name": "wheels installed without network",
                "ok": ok,
                "detail": report.get("error")
                or f"{len(report.get('installed', []))} installed, "
                f"{len(report.get('already_present', {}))} present",
            }
        ],
    )
    return record, str(target) if ok and report.get("installed") else None


# ------------------------------------------------------------------------------------- stages 1-5
def run_stage(
    stage: Stage, mode: str, work: Path, out: Path, env: dict[str, str], budget_s: float | None = None
) -> dict[str, Any]:
    """Run one stage script in its own process group with its time budget; its record."""
    budget = float(budget_s if budget_s is not None else stage.budget_s[mode])
    log = out / "logs" / f"{stage.number}_{stage.name}.log"
    result_path = work / f"stage{stage.number}.json"
    result_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(SCRIPTS / stage.script),
        "--mode",
        mode,
        "--work",
        str(work),
        "--result",
        str(result_path),
        "--budget-s",
        str(budget),
    ]
    record: dict[str, Any] = {
        "stage": stage.number,
        "name": stage.name,
        "timeout_s": budget,
        "log": f"logs/{log.name}",
    }
    print(f"stage {stage.number} {stage.name} (at most {budget:.0f} s) ...", flush=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(f"$ {' '.join(cmd)}\n")
        handle.flush()
        proc = subprocess.Popen(
            cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True
        )
        try:
            returncode: int | None = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            _kill_group(proc)
    record["seconds"] = round(time.perf_counter() - started, 1)
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    if result is None:
        why = f"timed out after {budget:.0f} s" if returncode is None else f"exited with code {returncode}"
        record.update(
            status="fail",
            checks=[],
            figures={},
            notes=[],
            error=f"{why} without writing its result; see {record['log']}",
        )
    else:
        record.update(result)
        if returncode is None:
            record.update(
                status="fail", error=f"timed out after {budget:.0f} s; the checks it had done are kept"
            )
        elif returncode != 0 and record["status"] == "pass":
            record.update(status="fail", error=f"exited with code {returncode}; see {record['log']}")
    record["exit_code"] = returncode
    return record


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever of the stage's process group is left (DataLoader workers, torchrun children)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def stage_env(site: str | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [
        str(REPO / "src"),
        *([site] if site else []),
        *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p],
    ]
    env.update(
        PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)),
        PYTHONUNBUFFERED="1",
        WANDB_MODE="disabled",
        MPLBACKEND="Agg",
    )
    return env


# ------------------------------------------------------------------------------------- summary
def headline(record: dict[str, Any]) -> str:
    """One line of figures for the summary table."""
    figures = record.get("figures") or {}
    if record.get("error"):
        return record["error"]
    failed = [f"{c['name']}: {c['detail']}" for c in record.get("checks", []) if c["ok"] is False]
    if failed:
        text = "FAILED " + "; ".join(failed)
        return text if len(text) <= 300 else text[:297] + "..."
    if record["name"] == "wheels":
        return "; ".join(str(c["detail"]) for c in record.get("checks", []))
    if record["name"] == "environment":
        torch = figures.get("torch", {})
        return (
            f"{torch.get('device') or 'no CUDA device'}; torch {torch.get('torch')}, "
            f"CUDA {torch.get('cuda_build')}, cuDNN {torch.get('cudnn')}"
        )
    if record["name"] == "training_speed" and figures.get("bench_train"):
        return "; ".join(
            f"{r['loss']} compile {'on' if r['compile'] else 'off'} {r['images_per_s_median']:.0f} img/s"
            + (f" {r['peak_gpu_allocated_gib']:.1f} GiB" if r["peak_gpu_allocated_gib"] else "")
            for r in figures["bench_train"]["summary"]
        )
    if record["name"] == "evaluator" and figures.get("full"):
        full = figures["full"]
        return (
            f"Recall@K {full['recall_torch']['seconds']} s, NMI+F1 {full['nmi_f1_one_seed']['seconds']} s, "
            f"PML P@1 {full['pml_precision_at_1']['seconds']} s on {figures.get('device')}"
        )
    if record["name"] == "kill_and_resume" and figures.get("comparison"):
        return (
            f"identical: {figures['comparison']['identical']}, killed at step {figures.get('killed_at_step')}"
        )
    if record["name"] == "multi_process" and figures.get("collectives"):
        return f"backend {figures['collectives'].get('backend')}"
    return ""


def summary_table(stages: list[dict[str, Any]]) -> str:
    lines = ["| stage | status | s | figures |", "|---|---|---:|---|"]
    for r in stages:
        lines.append(
            f"| {r['stage']} {r['name']} | {r['status'].upper()} | {r.get('seconds', 0):.0f} | "
            f"{headline(r)} |"
        )
    return "\n".join(lines)


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="results folder (gpu_check.json, logs/)")
    parser.add_argument("--cpu-smoke", action="store_true", help="every stage at toy size on the CPU")
    parser.add_argument("--wheels", type=Path, default=None, help="folder of wheels to install offline")
    parser.add_argument(
        "--stages",
        type=int,
        nargs="+",
        default=None,
        choices=[s.number for s in STAGES],
        help="run only these stages (default: all)",
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for old in (out / "logs").glob("*.log"):
        old.unlink()
    work = (args.work or Path(tempfile.mkdtemp(prefix="npair-gpu-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "check": "npair GPU check",
        "mode": mode,
        "command": " ".join(["scripts/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])]),
        "started": now(),
        "finished": None,
        "host": socket.gethostname(),
        "python": sys.executable,
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "gpu": None,
        "stages": [],
        "summary": None,
    }
    try:
        install, site = install_wheels(wheel_folder(args.wheels), work, out / "logs" / "0_wheels.log", mode)
        payload["stages"].append(install)
        write_json(out / "gpu_check.json", payload)
        env = stage_env(site)
        for stage in STAGES:
            if args.stages and stage.number not in args.stages:
                continue
            record = run_stage(stage, mode, work, out, env)
            payload["stages"].append(record)
            if stage.name == "environment":
                payload["gpu"] = (record.get("figures") or {}).get("torch", {}).get("device")
            print(f"  {record['status'].upper()} in {record['seconds']} s: {headline(record)}", flush=True)
            write_json(out / "gpu_check.json", payload)
    finally:
        if not args.keep_work and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    failed = [f"{r['stage']} {r['name']}" for r in payload["stages"] if r["status"] == "fail"]
    payload.update(
        finished=now(),
        wall_s=round(time.perf_counter() - started, 1),
        summary={
            "status": "fail" if failed else "pass",
            "failed": failed,
            "passed": [f"{r['stage']} {r['name']}" for r in payload["stages"] if r["status"] == "pass"],
        },
    )
    write_json(out / "gpu_check.json", payload)
    print(
        f"\n{summary_table(payload['stages'])}\n\n{mode}: {'FAIL' if failed else 'PASS'} "
        f"in {payload['wall_s']} s ({', '.join(failed) if failed else 'every stage passed'}); "
        f"results in {out / 'gpu_check.json'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
