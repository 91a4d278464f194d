"""The GPU check's driver (scripts/gpu_check.py): every stage runs in its own process group with its time
budget, a failing, crashing or hanging stage is recorded and the next one still runs, the results JSON
and logs land in the results folder, and the exit code says whether any stage failed.

The stages themselves run end to end in CI through ``make gpu-check-smoke`` (.ci/run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gpu_check
from gpu_check import Stage
from gpu_check_common import Result, stage_main

STAGE_SCRIPT = """
import argparse, json, os, subprocess, sys, time
p = argparse.ArgumentParser()
for a in ("--mode", "--work", "--result", "--budget-s"):
    p.add_argument(a)
args = p.parse_args()
print("stage output for the log", flush=True)
{body}
"""
BODIES = {
    "pass": 'json.dump({"status": "pass", "checks": [{"name": "it works", "ok": True, "detail": 1}], '
    '"figures": {"value": 42}, "notes": []}, open(args.result, "w"))',
    "fail": 'json.dump({"status": "fail", "checks": [{"name": "it works", "ok": False, "detail": "no"}], '
    '"figures": {}, "notes": []}, open(args.result, "w")); sys.exit(1)',
    "crash": "sys.exit(3)",
    "hang": 'json.dump({"status": "pass", "checks": [{"name": "first part", "ok": True, "detail": 1}], '
    '"figures": {}, "notes": []}, open(args.result, "w")); '
    'child = subprocess.Popen(["sleep", "60"]); open(os.path.join(args.work, "child.pid"), "w")'
    ".write(str(child.pid)); time.sleep(60)",
}


def _script(tmp_path: Path, kind: str) -> str:
    path = tmp_path / f"stage_{kind}.py"
    path.write_text(STAGE_SCRIPT.format(body=BODIES[kind]))
    return str(path)  # absolute: SCRIPTS / path is path


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_every_stage_runs_and_a_failing_crashing_or_hanging_one_is_recorded(
    tmp_path: Path, monkeypatch
) -> None:
    stages = tuple(
        Stage(n, name, _script(tmp_path, kind), {"cpu-smoke": 3 if kind == "hang" else 60})
        for n, name, kind in [
            (1, "environment", "pass"),
            (2, "training_speed", "fail"),
            (3, "evaluator", "crash"),
            (4, "kill_and_resume", "hang"),
            (5, "multi_process", "pass"),
        ]
    )
    monkeypatch.setattr(gpu_check, "STAGES", stages)
    (tmp_path / "wheels").mkdir()
    out, work = tmp_path / "results", tmp_path / "work"
    code = gpu_check.main(
        [str(out), "--cpu-smoke", "--wheels", str(tmp_path / "wheels"), "--work", str(work)]
    )

    assert code == 1
    payload = json.loads((out / "gpu_check.json").read_text())
    assert payload["mode"] == "cpu-smoke" and payload["schema_version"] == 1
    assert [(r["stage"], r["status"]) for r in payload["stages"]] == [
        (0, "pass"),
        (1, "pass"),
        (2, "fail"),
        (3, "fail"),
        (4, "fail"),
        (5, "pass"),
    ]
    assert payload["summary"]["failed"] == ["2 training_speed", "3 evaluator", "4 kill_and_resume"]
    by_name = {r["name"]: r for r in payload["stages"]}
    assert by_name["environment"]["figures"] == {"value": 42}
    assert by_name["training_speed"]["checks"][0]["ok"] is False
    assert "exited with code 3 without writing its result" in by_name["evaluator"]["error"]
    assert "timed out after 3 s; the checks it had done are kept" in by_name["kill_and_resume"]["error"]
    assert by_name["kill_and_resume"]["checks"][0]["name"] == "first part"  # saved before it hung
    assert by_name["kill_and_resume"]["seconds"] < 30
    assert not _running(int((work / "child.pid").read_text()))  # the stage's whole process group was killed
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs == [
        "0_wheels.log",
        "1_environment.log",
        "2_training_speed.log",
        "3_evaluator.log",
        "4_kill_and_resume.log",
        "5_multi_process.log",
    ]
    assert "stage output for the log" in (out / "logs" / "5_multi_process.log").read_text()


def test_all_stages_passing_exits_zero_and_keeps_no_scratch_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(
        gpu_check, "STAGES", (Stage(1, "environment", _script(tmp_path, "pass"), {"gpu": 60}),)
    )
    monkeypatch.setattr(gpu_check.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "scratch"))
    (tmp_path / "wheels").mkdir()
    assert gpu_check.main([str(tmp_path / "out"), "--wheels", str(tmp_path / "wheels")]) == 0
    payload = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert payload["mode"] == "gpu" and payload["summary"]["status"] == "pass"
    assert not (tmp_path / "scratch").exists()


def test_a_missing_wheel_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"--wheels .*nowhere: no such folder"):
        gpu_check.main([str(tmp_path / "out"), "--wheels", str(tmp_path / "nowhere")])


def test_the_gpu_budgets_and_the_install_fit_in_eight_minutes() -> None:
    assert (
        gpu_check.INSTALL_BUDGET_S + sum(s.budget_s["gpu"] for s in gpu_check.STAGES) <= 8 * 60 - 5
    )  # driver
    assert [s.number for s in gpu_check.STAGES] == [1, 2, 3, 4, 5]
    assert all((gpu_check.SCRIPTS / s.script).exists() for s in gpu_check.STAGES)


def test_a_stage_that_raises_is_a_failed_check_in_its_result(tmp_path: Path, monkeypatch) -> None:
    def broken(mode: str, work: Path, result: Result, budget_s: float) -> None:
        result.check("first part", True, "fine")
        raise RuntimeError("CUDA error: out of memory")

    result_path = tmp_path / "r.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "stage",
            "--mode",
            "gpu",
            "--work",
            str(tmp_path / "w"),
            "--result",
            str(result_path),
            "--budget-s",
            "5",
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        stage_main(broken)
    assert exit_.value.code == 1
    result = json.loads(result_path.read_text())
    assert result["status"] == "fail"
    assert [c["ok"] for c in result["checks"]] == [True, False]
    assert "RuntimeError: CUDA error: out of memory" in result["checks"][1]["detail"]


def test_a_skipped_check_does_not_fail_a_stage() -> None:
    result = Result()
    result.check("faiss backend", None, "skipped: faiss is not installed")
    result.check("torch backend", True, "ok")
    assert result.status == "pass"


def test_the_shell_entry_point_prints_its_usage_without_a_results_folder() -> None:
    script = gpu_check.REPO / "scripts" / "gpu_check.sh"
    assert os.access(script, os.X_OK)
    proc = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "usage: scripts/gpu_check.sh RESULTS_DIR" in proc.stderr
    proc = subprocess.run([str(script), "--cpu-smoke"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2


def test_the_nondeterminism_warning_names_the_op() -> None:
    from gpu_check_resume import NONDETERMINISTIC

    line = textwrap.dedent("""\
        UserWarning: max_pool2d_with_indices_backward_cuda does not have a deterministic implementation, but
        you set 'torch.use_deterministic_algorithms(True, warn_only=True)'.""")
    assert NONDETERMINISTIC.findall(line) == ["max_pool2d_with_indices_backward_cuda"]


def test_the_evaluator_subsample_keeps_whole_classes() -> None:
    import numpy as np

    from gpu_check_eval import class_subsample, sop_like

    x, labels = sop_like(600, 110, 8)
    assert x.shape == (600, 8) and np.bincount(labels).min() >= 2 and np.unique(labels).size == 110
    sub = class_subsample(labels, 200)
    chosen = np.unique(labels[sub])
    assert 200 <= len(sub) < 200 + np.bincount(labels).max()
    assert np.array_equal(
        np.sort(sub), np.flatnonzero(np.isin(labels, chosen))
    )  # every item of those classes
