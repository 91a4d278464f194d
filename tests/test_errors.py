"""A user's mistake on any command line: one message, a non-zero exit, no traceback; --debug (or
HYDRA_FULL_ERROR=1) shows the traceback; a bug always keeps it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from npair import errors
from npair.checkpoint import CheckpointError
from npair.data.download import main as download_main
from npair.evaluate import main as evaluate_main
from npair.models.pretrained import PretrainedWeightsUnavailable
from npair.plots.cli import main as plots_main
from npair.tables import main as tables_main
from npair.wandb_source import MissingCredentials
from tests.helpers import REPO

ENTRY_POINTS = {  # module run with `python -m` -> the file whose __main__ block starts it
    "npair.evaluate": "src/npair/evaluate.py",
    "npair.tables": "src/npair/tables.py",
    "npair.plots": "src/npair/plots/__main__.py",
    "npair.data.download": "src/npair/data/download.py",
}


def _raise_multiline() -> None:
    raise PretrainedWeightsUnavailable("cannot load weights. To fix:\n  * fetch them, or\n  * start afresh")


def no_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" not in text


# ----------------------------------------------------------------------------------------- the helper
@pytest.mark.parametrize(
    "err, user",
    [
        (ValueError("sampler.n_classes=9 is larger than ..."), True),
        (FileNotFoundError("x.npy: no such file"), True),
        (CheckpointError("checkpoint x is unreadable"), True),
        (MissingCredentials("needs credentials"), True),
        (ConfigKeyError("Key 'max_stepz' is not in struct"), True),
        (errors.UserError("bad"), True),
        (TypeError("unsupported operand"), False),
        (AttributeError("no attribute"), False),
        (KeyError("k"), False),
        (RuntimeError("CUDA error: device-side assert"), False),
    ],
)
def test_user_mistakes_are_told_from_bugs(err: Exception, user: bool) -> None:
    assert errors.is_user_error(err) is user


def test_library_errors_keep_their_old_base_class() -> None:
    for cls in (CheckpointError, PretrainedWeightsUnavailable, MissingCredentials):
        assert issubclass(cls, errors.UserError) and issubclass(cls, RuntimeError)


def test_an_instantiation_error_is_described_by_its_cause_with_real_newlines() -> None:
    node = OmegaConf.create({"net": {"_target_": "tests.test_errors._raise_multiline"}})
    with pytest.raises(InstantiationException) as caught:
        instantiate(node.net)
    assert "\\n" in str(caught.value)  # Hydra's own message writes the cause with repr()
    text = errors.describe(caught.value)
    assert text.startswith("cannot load weights. To fix:\n  * fetch them, or\n  * start afresh")
    assert "\\n" not in text and "tests.test_errors._raise_multiline" in text


def test_run_cli_prints_one_message_and_returns_1(capsys: pytest.CaptureFixture[str]) -> None:
    def main(argv: list[str]) -> int:
        raise FileNotFoundError(f"{argv[0]}: no such file")

    assert errors.run_cli(main, ["x.npy"]) == errors.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err == f"error: x.npy: no such file\n{errors.HINT}\n"


def test_run_cli_shows_the_traceback_with_debug_and_for_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    def mistake(argv: list[str]) -> int:
        raise ValueError("bad value")

    def bug(argv: list[str]) -> int:
        raise TypeError("a bug")

    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    with pytest.raises(ValueError, match="bad value"):
        errors.run_cli(mistake, ["--debug"])
    with pytest.raises(TypeError, match="a bug"):
        errors.run_cli(bug, [])
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="bad value"):
        errors.run_cli(mistake, [])


def test_run_cli_passes_exit_codes_and_exits_through() -> None:
    assert errors.run_cli(lambda argv: 2, []) == 2
    assert errors.run_cli(lambda argv: [Path("a.png")], []) == 0  # npair.plots returns what it wrote
    with pytest.raises(SystemExit):
        errors.run_cli(lambda argv: sys.exit(2), [])


def test_raise_for_hydra_makes_a_mistake_compact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    with pytest.raises(errors.ReportedError, match=r"^error: lower sampler.n_classes$") as caught:
        try:
            raise ValueError("lower sampler.n_classes")
        except ValueError as err:
            errors.raise_for_hydra(err)
    assert caught.value.__cause__ is None  # Hydra prints a cause's message again
    with pytest.raises(TypeError):
        try:
            raise TypeError("a bug")
        except TypeError as err:
            errors.raise_for_hydra(err)
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(ValueError):
        try:
            raise ValueError("shown with its traceback")
        except ValueError as err:
            errors.raise_for_hydra(err)


# ----------------------------------------------------------------------------------------- each entry point
@pytest.mark.parametrize("module, path", sorted(ENTRY_POINTS.items()))
def test_every_argparse_entry_point_runs_its_main_through_run_cli(module: str, path: str) -> None:
    tree = ast.parse((REPO / path).read_text())
    (guard,) = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert "sys.exit(run_cli(main))" in ast.unparse(guard), f"{module}: {ast.unparse(guard)}"


CASES = ["evaluate", "evaluate_recognition", "tables", "tables_wandb", "plots", "download"]


@pytest.mark.parametrize("case", CASES)
def test_each_command_line_reports_a_mistake_in_one_message(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with W&B credentials
    np.save(tmp_path / "e.npy", np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
    np.save(tmp_path / "l.npy", np.arange(40) % 4)
    (tmp_path / "a_file").write_text("")
    main, argv, message = {
        "evaluate": (
            evaluate_main,
            ["--embeddings", str(tmp_path / "nope.npy"), "--labels", "l.npy"],
            "--embeddings: no such file",
        ),
        "evaluate_recognition": (
            evaluate_main,
            [
                "--embeddings",
                str(tmp_path / "e.npy"),
                "--labels",
                str(tmp_path / "l.npy"),
                "--eval",
                "recognition",
            ],
            "pass them with --reference-embeddings FILE",
        ),
        "tables": (tables_main, ["TABLE=no_such_table"], "Known tables: "),
        "tables_wandb": (
            tables_main,
            ["TABLE=mini_table2", "source=wandb", "project=p", "--outputs", str(tmp_path)],
            "needs credentials: set WANDB_API_KEY",
        ),
        "plots": (plots_main, ["table", str(tmp_path / "nope.csv")], "no table CSV"),
        "download": (download_main, ["lfw", "--root", str(tmp_path / "a_file")], "is a file; name the"),
    }[case]
    try:
        code = errors.run_cli(main, argv)
    except SystemExit as exit_:  # a message given to SystemExit: printed by Python, status 1
        code, text = 1, str(exit_.code)
    else:
        text = capsys.readouterr().err
    assert code == 1
    assert message in text and no_traceback(text)


def test_training_reports_a_mistake_in_one_message_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-m",
        "npair.train",
        "dataset=digits",
        "sampler.n_classes=50",
        "logger=none",
        f"paths.root_dir={tmp_path}",
        "trainer.max_steps=2",
    ]
    plain = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 1
    assert "error: sampler.n_classes=50 (N classes per batch) is larger than the 10 classes" in plain.stderr
    assert no_traceback(plain.stdout + plain.stderr), plain.stderr[-3000:]
    debug = subprocess.run(
        [*command, "--debug"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "check_sampler_fits_data" in debug.stderr
