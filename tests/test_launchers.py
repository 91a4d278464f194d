"""Hydra launchers: the joblib launcher runs a sweep's jobs in parallel worker processes; the project's
SLURM launcher config (configs/hydra/launcher/slurm.yaml, over submitit_slurm) composes and renders a
valid sbatch script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.helpers import CONFIG_DIR, TINY, run_cli

# Both default samplers fit: npair_mc takes 60 classes a batch (the glyphs' first half trains: 60 classes).
SWEEPABLE = [
    *[o for o in TINY if not o.startswith(("sampler.", "dataset.build.", "trainer.eval_every"))],
    "dataset.build.n_classes=120",
    "dataset.build.images_per_class=2",
    "trainer.max_steps=2",
    "trainer.eval_every=0",
    "trainer.probe_classes=0",
    "trainer.threads=1",
]


def test_joblib_launcher_runs_the_sweep_jobs_in_parallel_processes(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "npair.train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "loss=triplet,npair_mc",
        *SWEEPABLE,
        f"paths.root_dir={tmp_path}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    launcher = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stdout, stderr = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2," in stdout and "is launching 2 jobs" in stdout
    records = {
        json.loads(p.read_text())["loss"]: (p.parent, json.loads(p.read_text()))
        for p in (tmp_path / "outputs" / "multiruns").rglob("metrics.json")
    }
    assert sorted(records) == ["npair_mc", "triplet"]
    assert all(r["status"] == "completed" for _, r in records.values())
    pids = {r["pid"] for _, r in records.values()}
    assert len(pids) == 2 and launcher.pid not in pids  # two worker processes, not the launching one
    # every job writes under the sweep directory the launcher created (named after its process id)
    sweep_dirs = {d.parent.name for d, _ in records.values()}
    assert sweep_dirs == {next(iter(sweep_dirs))} and next(iter(sweep_dirs)).endswith(f"_{launcher.pid}")


def _slurm_launcher(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def test_the_slurm_launcher_config_composes_on_the_command_line(tmp_path: Path) -> None:
    result = run_cli(
        [
            "npair.train",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "trainer=ddp",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.tasks_per_node=4",
            "logger=none",
            "--cfg",
            "all",
        ],
        cwd=tmp_path,
        timeout=120,
    )  # --cfg all = --cfg job + --cfg hydra
    assert result.returncode == 0, result.stderr[-2000:]
    printed = OmegaConf.create(result.stdout)
    launcher = printed.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (
        launcher.partition,
        launcher.gpus_per_node,
        launcher.tasks_per_node,
        launcher.max_num_timeout,
    ) == ("gpu", 4, 4, 3)
    assert printed.trainer.distributed is True and printed.trainer.resume == "auto"
    assert not (tmp_path / "outputs").exists()


def test_the_slurm_launcher_renders_an_sbatch_script(tmp_path: Path, monkeypatch) -> None:
    import submitit

    monkeypatch.setattr(
        submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1)
    )  # no srun on this machine

    params = _slurm_launcher(
        [
            "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.tasks_per_node=4",
            "hydra.launcher.timeout_min=600",
        ]
    )
    # the same mapping as hydra_submitit_launcher.SlurmLauncher.launch
    base = {
        "timeout_min",
        "cpus_per_task",
        "gpus_per_node",
        "tasks_per_node",
        "mem_gb",
        "nodes",
        "name",
        "stderr_to_stdout",
    }
    executor = submitit.AutoExecutor(
        folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params["max_num_timeout"]
    )
    executor.update_parameters(
        **{
            (k if k in base else f"slurm_{k}"): v
            for k, v in params.items()
            if k not in {"_target_", "submitit_folder", "max_num_timeout"}
            and not (isinstance(v, str) and "${" in v)
        }
    )
    script = executor._executor._make_submission_file_text("python -m npair.train", "0")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --time=600",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
    ):
        assert line in script, script
