"""`python -m npair.tables` end to end on the `smoke` table: killed mid-run, it finishes only what is missing;
runs of another config stop it (or are moved aside and trained again); concurrent builds and runs wait for
each other (npair.locks), each with another real process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO


def tables_cmd(outputs: Path) -> list[str]:
    return [sys.executable, "-m", "npair.tables", "TABLE=smoke", "--jobs", "1", "--outputs", str(outputs)]


def completed_runs(outputs: Path) -> dict[Path, float]:
    done = {}
    for path in (outputs / "runs").rglob("metrics.json"):
        if json.loads(path.read_text()).get("status") == "completed":
            done[path] = path.stat().st_mtime
    return done


def test_killed_table_run_restarts_only_the_missing_runs(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "NPAIR_ROOT": str(tmp_path)}
    outputs = tmp_path / "outputs"
    first = subprocess.Popen(
        tables_cmd(outputs),
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not completed_runs(outputs):
        time.sleep(0.2)
    assert first.poll() is None, "the table finished before it could be interrupted"
    os.killpg(first.pid, signal.SIGKILL)  # the runner and its training processes, mid-table
    first.wait()
    before = completed_runs(outputs)
    assert 1 <= len(before) < 4

    second = subprocess.run(
        tables_cmd(outputs), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    launched = [int(n) for n in re.findall(r"^training (\d+) runs?: ", second.stdout, flags=re.MULTILINE)]
    assert sum(launched) == 4 - len(before)  # one sweep per set of missing seeds
    after = completed_runs(outputs)
    assert len(after) == 4
    assert all(after[path] == mtime for path, mtime in before.items())  # finished runs were not touched
    table = (outputs / "tables" / "smoke.md").read_text()
    assert "missing" not in table and "(1/2 seeds)" not in table

    third = subprocess.run(
        tables_cmd(outputs), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert third.returncode == 0, third.stderr[-3000:]
    # nothing left to train: no "training N runs: ..." line, the table is rebuilt from the runs
    assert not re.search(r"^training \d+ runs?: ", third.stdout, flags=re.M)
    assert completed_runs(outputs) == after
    assert (outputs / "tables" / "smoke.md").read_text() == table


# ------------------------------------------------------------------------------------ which runs count
def test_stale_runs_stop_the_table_naming_them_and_rerun_stale_moves_them_aside(tmp_path: Path) -> None:
    from npair import identity
    from npair.tables import compose_run, main, run_dir_of
    from npair.train import run

    root = tmp_path / "outputs"
    overrides = [f"paths.root_dir={tmp_path}", "logger=none"]
    rows = ("smoke/triplet", "smoke/npair_mc")
    for experiment in rows:  # trained with trainer.max_steps=3; the table composes 4 steps
        run(compose_run(experiment, 0, [*overrides, "trainer.max_steps=3"]), run_dir_of(root, experiment, 0))
    old = {e: json.loads((run_dir_of(root, e, 0) / "metrics.json").read_text()) for e in rows}
    table = ["TABLE=smoke", *overrides, "--seeds", "0", "--jobs", "1", "--outputs", str(root)]
    for extra in ([], ["--no-train"]):
        with pytest.raises(SystemExit) as stopped:
            main([*table, *extra])
        message = str(stopped.value)
        assert message.startswith("stopped: 2 run directories would be reused for another config")
        for experiment in rows:
            stored = old[experiment]["config_hash"]
            line = (
                f"{run_dir_of(root, experiment, 0)} (another config, config {stored}): "
                "trainer.max_steps: 3 -> 4"
            )
            assert line in message
        assert "--rerun-stale" in message
    assert not (root / "tables" / "smoke.md").exists()

    main([*table, "--rerun-stale"])
    for experiment in rows:
        run_dir = run_dir_of(root, experiment, 0)
        aside = run_dir.with_name(f"seed0.stale-{old[experiment]['config_hash']}")
        assert json.loads((aside / "metrics.json").read_text()) == old[experiment]  # nothing lost
        fresh = json.loads((run_dir / "metrics.json").read_text())
        assert fresh["status"] == "completed" and fresh["steps_done"] == 4
        assert fresh["config_hash"] == identity.config_hash(compose_run(experiment, 0, overrides))
    md, csv_text = (root / "tables" / "smoke.md").read_text(), (root / "tables" / "smoke.csv").read_text()
    for experiment, label in zip(rows, ("triplet", "4-pair-mc")):
        fresh = json.loads((run_dir_of(root, experiment, 0) / "metrics.json").read_text())
        assert f"{label} `{fresh['group_hash']}`" in md  # the footer names each row's config hash
        assert f",{fresh['group_hash']},0:{fresh['config_hash']}" in csv_text
    assert md.splitlines()[-1].startswith("Config hashes (seed excluded; `group_hash` in each run's metrics")


def test_a_hand_written_metrics_json_is_refused_and_named(tmp_path: Path) -> None:
    from npair.tables import main, run_dir_of

    root = tmp_path / "outputs"
    run_dir = run_dir_of(root, "smoke/triplet", 0)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "final": {"recall@1": 0.99}}))
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "TABLE=smoke",
                f"paths.root_dir={tmp_path}",
                "--seeds",
                "0",
                "--no-train",
                "--outputs",
                str(root),
            ]
        )
    message = str(stopped.value)
    assert (
        f"{run_dir} (an unverified result, config unknown): its metrics.json records no config_hash"
        in message
    )
    assert not (root / "tables" / "smoke.md").exists()


# ------------------------------------------------------------------------------------ concurrency
def _wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = path.read_text() if path.exists() else ""
        if text in out:
            return out
        assert proc.poll() is None, f"ended ({proc.returncode}) before printing {text!r}:\n{out[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {timeout} s:\n{out[-3000:]}")


def test_a_second_build_of_a_table_waits_for_the_first_and_says_so(tmp_path: Path) -> None:
    from npair.locks import table_lock

    outputs = tmp_path / "outputs"
    lock = table_lock(outputs / "tables", "smoke")
    assert lock.acquire(wait=False)  # this process is "the first build"
    log = tmp_path / "second.log"
    env = {**os.environ, "WANDB_MODE": "offline", "NPAIR_ROOT": str(tmp_path)}
    with open(log, "w") as out:
        second = subprocess.Popen(
            [*tables_cmd(outputs), "--no-train"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_text(log, f"another build of table smoke is running (process {os.getpid()} on", second)
        time.sleep(1.0)
        assert second.poll() is None and not (outputs / "tables" / "smoke.md").exists()  # still waiting
    finally:
        lock.release()
    assert second.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert (outputs / "tables" / "smoke.md").exists()


def test_a_run_another_process_trains_is_skipped_waited_for_then_completed(tmp_path: Path) -> None:
    from npair.locks import run_lock
    from npair.tables import run_dir_of

    outputs = tmp_path / "outputs"
    busy = run_dir_of(outputs, "smoke/npair_mc", 0)
    lock = run_lock(busy)
    assert lock.acquire(wait=False)  # this process "trains" smoke/npair_mc seed 0
    log = tmp_path / "build.log"
    env = {**os.environ, "WANDB_MODE": "offline", "NPAIR_ROOT": str(tmp_path)}
    with open(log, "w") as out:
        build = subprocess.Popen(
            [*tables_cmd(outputs), "--seeds", "0"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_text(log, f"{busy} is being trained by process {os.getpid()} on", build)
        done = run_dir_of(outputs, "smoke/triplet", 0) / "metrics.json"
        deadline = time.time() + 240
        while not (done.exists() and json.loads(done.read_text())["status"] == "completed"):
            assert time.time() < deadline and build.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)  # the other row trains meanwhile
        assert not (busy / "metrics.json").exists()  # ... but nothing is written where another process works
    finally:
        lock.release()  # "the other process" ended without completing the run: the build trains it
    assert build.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert f"{busy}: the other process is done" in log.read_text()
    assert json.loads((busy / "metrics.json").read_text())["status"] == "completed"
    assert "missing" not in (outputs / "tables" / "smoke.md").read_text()


def test_two_builds_of_one_table_at_once_train_each_run_once(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    env = {**os.environ, "WANDB_MODE": "offline", "NPAIR_ROOT": str(tmp_path)}
    logs = [tmp_path / f"build{i}.log" for i in range(2)]
    builds = []
    for log in logs:
        with open(log, "w") as out:
            builds.append(
                subprocess.Popen(
                    [*tables_cmd(outputs), "--seeds", "0"],
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    assert [b.wait(timeout=600) for b in builds] == [0, 0], [log.read_text()[-2000:] for log in logs]
    texts = [log.read_text() for log in logs]
    assert sum("another build of table smoke is running" in t for t in texts) == 1  # one waited for the other
    trained = sum(len(re.findall(r"^training \d+ run", t, flags=re.MULTILINE)) for t in texts)
    assert trained == 1  # one of them trained
    for experiment in ("smoke/triplet", "smoke/npair_mc"):
        run_dir = outputs / "runs" / experiment / "seed0"
        record = json.loads((run_dir / "metrics.json").read_text())
        assert record["status"] == "completed" and record["resumed_from_step"] is None
        header, *rows = (run_dir / "train_log.csv").read_text().splitlines()
        steps = [int(r.split(",")[0]) for r in rows]
        assert steps and steps == sorted(set(steps))  # each logged step once, in order ...
        assert all(r.count(",") == header.count(",") for r in rows)  # ... on whole lines


# ------------------------------------------------------------------------------------ select: rows
def test_a_table_with_select_rows_is_rebuilt_without_training_and_refuses_other_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from npair.tables import main

    root = tmp_path / "outputs"
    table = [
        "TABLE=smoke_select",
        f"paths.root_dir={tmp_path}",
        "logger=none",
        "--jobs",
        "2",
        "--outputs",
        str(root),
    ]
    selection = root / "selection" / "smoke/npair_mc"

    def results() -> dict[Path, float]:  # every completed run, selection runs included, and when written
        return {
            p: p.stat().st_mtime_ns
            for p in root.rglob("metrics.json")
            if json.loads(p.read_text()).get("status") == "completed"
        }

    def trained(out: str) -> list[str]:
        return re.findall(r"^training .*", out, flags=re.MULTILINE)

    main(table)
    assert len(trained(capsys.readouterr().out)) == 3  # the selection runs, then each row's final run
    built = results()
    assert len(built) == 4  # 2 selection runs, 2 final runs
    tables = {p: p.read_bytes() for p in (root / "tables").glob("smoke_select*")}
    assert len(tables) == 4  # md, csv, tex and the selection's csv
    for extra in ([], ["--no-train"]):  # the final runs hold the chosen value: reused as they are
        main([*table, *extra])
        assert trained(capsys.readouterr().out) == []
        assert results() == built
        assert {p: p.read_bytes() for p in tables} == tables  # byte-identical

    changed = [*table, "trainer.max_steps=3"]
    with pytest.raises(SystemExit) as stopped:
        main(changed)
    message = str(stopped.value)
    assert message.startswith(
        "stopped: 2 run directories would be reused for another config than the selection"
    )
    for value in ("0.0", "0.02"):
        assert f"{selection / f'reg_weight-{value}' / 'seed0'} (another config, config " in message
    assert message.count("trainer.max_steps: 4 -> 3") == 2
    with pytest.raises(
        SystemExit,
        match=r"(?s)stopped: 2 run directories.*value not chosen yet.*"
        r"is the choice of another selection \(overrides: ",
    ):
        main([*changed, "--no-train"])  # the choice on disk was made with other overrides
    assert results() == built
    capsys.readouterr()

    main([*changed, "--rerun-stale"])
    out = capsys.readouterr().out
    assert out.count("moved stale run ") == 4  # the 2 selection runs, then the 2 final runs (4 steps)
    fresh = results()
    assert len(fresh) == 8 and set(built) <= set(fresh)  # trained again; the old runs kept, moved aside
    for path in built:
        assert fresh[path] != built[path] and json.loads(path.read_text())["steps_done"] == 3
    for path in set(fresh) - set(built):
        assert ".stale-" in path.parent.name and json.loads(path.read_text())["steps_done"] == 4
    assert len(list(selection.glob("reg_weight-*/seed0.stale-*"))) == 2
    assert len(list((root / "runs").glob("smoke/*/seed0.stale-*"))) == 2
