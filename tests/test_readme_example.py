"""The README's code runs as printed: the library example, and the own-loss / own-dataset recipe.

The code is read from README.md itself (fenced blocks of the two sections), so an edit to the README that
breaks the example fails here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_section(title: str) -> str:
    """The text of the README section ``## <title>`` up to the next ``## `` heading."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def code_blocks(section: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(section) if lang == language]


def user_env() -> dict[str, str]:
    """The test's environment with ``python`` on PATH being this interpreter; W&B off, no NPAIR_ROOT."""
    env = {k: v for k, v in os.environ.items() if k != "NPAIR_ROOT"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", MPLBACKEND="Agg")
    return env


def test_library_example_runs(tmp_path: Path) -> None:
    (example,) = code_blocks(readme_section("Use it as a library"), "python")
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        cwd=tmp_path,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    for key in ("recall@1", "recall@2", "recall@4", "nmi", "f1"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    assert metrics["recall@1"] <= metrics["recall@2"] <= metrics["recall@4"]


def _write_recipe_files(section: str, root: Path) -> list[Path]:
    """Each python/yaml block whose first line is ``# <relative path>`` is a file of the recipe."""
    written = []
    for lang in ("python", "yaml"):
        for body in code_blocks(section, lang):
            first, _, rest = body.partition("\n")
            assert first.startswith("# my_project/"), f"a {lang} block without its file name: {first!r}"
            path = root / first[2:].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rest if lang == "python" else body, encoding="utf-8")
            written.append(path)
    return written


def test_own_loss_and_dataset_recipe_runs(tmp_path: Path) -> None:
    section = readme_section("Add your own loss or dataset")
    files = _write_recipe_files(section, tmp_path)
    assert {p.name for p in files} == {
        "my_losses.py",
        "my_data.py",
        "cosine_npair.yaml",
        "unseen_digits.yaml",
    }
    (command,) = code_blocks(section, "bash")
    result = subprocess.run(
        ["bash", "-c", "set -e\n" + command],
        check=False,
        cwd=tmp_path,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    (run_dir,) = (tmp_path / "my_project" / "outputs" / "runs" / "cosine_npair-unseen_digits").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0.0 <= metrics["final"]["recall@1"] <= 1.0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["loss"]["_target_"] == "my_losses.CosineNPairLoss"
    assert config["dataset"]["build"]["_target_"] == "my_data.build_unseen_digits"

    # The new loss names no sampler: it gets its layout's default sampler (class_blocks: the N-pair sampler).
    assert not re.search(r"(^|\s)sampler=", command)
    sampler = config["sampler"]
    assert sampler["_target_"] == "npair.samplers.NPairSampler"
    assert (sampler["name"], sampler["n_classes"], sampler["n_per_class"]) == ("npair", 4, 2)
    assert metrics["sampler"] == "npair"
