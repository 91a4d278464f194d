"""npair.build: the one loader of trained runs (checkpoint.load, weights only) behind
`python -m npair.evaluate --run`, re-evaluated table rows and the embedding figure; a checkpoint written
by commit 212a68e loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from npair import checkpoint as ckpt
from npair.build import UntrustedConfigError, evaluate_model, load_run, make
from npair.evaluate import main as evaluate_main
from npair.evaluation.keys import canonical_key
from npair.plots import embedding_projection
from npair.runio import CHECKPOINT_FILE, REEVAL_DIR
from npair.tables import Row, compose_run, evaluate_again, run_dir_of
from npair.train import run
from tests.helpers import TINY, compose_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_212a68e"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, float]]:
    """The smoke table's 4-pair-mc row, trained once: (outputs root, overrides, final metrics)."""
    base = tmp_path_factory.mktemp("smoke")
    overrides = [f"paths.root_dir={base}", "logger=none", "trainer.progress_bar=false"]
    root = base / "outputs"
    final = run(compose_run("smoke/npair_mc", 0, overrides), run_dir_of(root, "smoke/npair_mc", 0))
    return root, overrides, final


def test_a_run_loads_as_it_was_trained(tmp_path: Path) -> None:
    final = run(compose_config(TINY, tmp_path), tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    state = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    assert loaded.step == state["step"] == 4 and loaded.checkpoint == tmp_path / "run" / CHECKPOINT_FILE
    assert loaded.cfg.name == "npair_mc-glyphs" and not loaded.model.training
    assert all(torch.equal(v, state["model"][k]) for k, v in loaded.model.state_dict().items())
    metrics = evaluate_model(
        loaded.model, loaded.loss_fn, loaded.splits, make(loaded.cfg.eval), loaded.cfg, torch.device("cpu")
    )
    assert metrics == pytest.approx(final, abs=1e-9)


def test_a_checkpoint_written_by_commit_212a68e_loads_and_evaluates_as_recorded(tmp_path: Path) -> None:
    loaded = load_run(FIXTURE, data_dir=tmp_path / "data")  # its config records ./data: the glyphs go here
    assert loaded.step == 4 and str(loaded.cfg.dataset.root) == str(tmp_path / "data" / "glyphs")
    metrics = evaluate_model(
        loaded.model, loaded.loss_fn, loaded.splits, make(loaded.cfg.eval), loaded.cfg, torch.device("cpu")
    )
    recorded = json.loads((FIXTURE / "metrics.json").read_text())["final"]
    recorded = {canonical_key(key): value for key, value in recorded.items()}  # it predates the spread names
    assert metrics == pytest.approx(recorded, abs=1e-6)


def test_missing_and_foreign_checkpoints_fail_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / CHECKPOINT_FILE}: no checkpoint"):
        load_run(tmp_path)
    torch.save({"model": {}}, tmp_path / CHECKPOINT_FILE)  # a bare state_dict file, no npair format
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"is not a resumable npair training checkpoint .*pass the "
        r"checkpoint.pt of an npair training run",
    ):
        load_run(tmp_path)


def _with_a_pickled_object(run_dir: Path) -> None:
    """Add an arbitrary pickled object to a real checkpoint: weights_only refuses it, a full unpickle not."""
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    state["note"] = Path("anything")
    torch.save(state, run_dir / CHECKPOINT_FILE)


def test_evaluate_tables_and_plots_read_runs_with_weights_only(smoke_run, tmp_path: Path) -> None:
    root, overrides, _ = smoke_run
    copy = tmp_path / "outputs"
    shutil.copytree(root, copy)
    run_dir = run_dir_of(copy, "smoke/npair_mc", 0)
    _with_a_pickled_object(run_dir)
    unreadable = rf"checkpoint {run_dir / CHECKPOINT_FILE} is unreadable"
    with pytest.raises(ckpt.CheckpointError, match=unreadable):
        evaluate_main(["--run", str(run_dir)])
    with pytest.raises(ckpt.CheckpointError, match=unreadable):
        row = Row("euclidean", "smoke/npair_mc", evaluate_with=["eval.similarity=euclidean"])
        evaluate_again(copy, row, 0, overrides)
    with pytest.raises(ckpt.CheckpointError, match=unreadable):
        embedding_projection(run_dir, tmp_path / "pca.png")


def test_a_re_evaluated_row_evaluates_the_final_checkpoint_under_its_overrides(smoke_run) -> None:
    root, overrides, final = smoke_run
    same = Row("cosine", "smoke/npair_mc", evaluate_with=["eval.similarity=cosine"])
    other = Row("euclidean", "smoke/npair_mc", evaluate_with=["eval.similarity=euclidean"])
    for row in (same, other):
        evaluate_again(root, row, 0, overrides)
    run_dir = run_dir_of(root, "smoke/npair_mc", 0)
    records = {
        row.label: json.loads((run_dir / REEVAL_DIR / f"{row.eval_slug}.json").read_text())
        for row in (same, other)
    }
    assert records["cosine"]["final"] == pytest.approx(final, abs=1e-9)  # the run's own evaluation, again
    assert records["euclidean"]["similarity"] == "euclidean" and records["euclidean"]["step"] == 4
    assert set(records["euclidean"]["final"]) == set(final)


@pytest.mark.parametrize("threads, text", [(1, "cpu (1 thread)"), (2, "cpu (2 threads)")])
def test_the_run_header_names_the_cpu_threads_in_the_right_number(threads: int, text: str) -> None:
    from npair.build import describe_device

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert describe_device(torch.device("cpu")) == text
    finally:
        torch.set_num_threads(before)


def _with_a_target(run_dir: Path, key: str, target: str, **kwargs) -> None:
    """Point ``key`` of the config a real checkpoint holds at another ``_target_`` (weights_only types)."""
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    node = state["config"]
    for part in key.split("."):
        node = node[part]
    node.clear()
    node.update({"_target_": target, **kwargs})
    torch.save(state, run_dir / CHECKPOINT_FILE)


def test_a_stored_config_instantiates_only_npair_and_torch_optim_targets(smoke_run, tmp_path: Path) -> None:
    root, _, _ = smoke_run
    run_dir = tmp_path / "run"
    shutil.copytree(run_dir_of(root, "smoke/npair_mc", 0), run_dir)
    made = tmp_path / "made_by_the_config"
    _with_a_target(run_dir, "dataset.build", "os.makedirs", name=str(made))
    refused = (
        rf"{run_dir / CHECKPOINT_FILE}: its config would instantiate code outside npair and "
        r"torch.optim \(dataset.build._target_: 'os.makedirs'\).*pass --trust-config"
    )
    with pytest.raises(UntrustedConfigError, match=refused):
        evaluate_main(["--run", str(run_dir)])
    with pytest.raises(UntrustedConfigError, match=refused):
        embedding_projection(run_dir, tmp_path / "pca.png")
    assert not made.exists()  # refused before anything was instantiated
    with pytest.raises(Exception):  # noqa: B017  (os.makedirs returns no dataset: what fails next is moot)
        evaluate_main(["--run", str(run_dir), "--trust-config"])
    assert made.is_dir()  # trusted: the config's own target ran
    load_run(run_dir_of(root, "smoke/npair_mc", 0))  # the project's own targets need no trust


def test_every_torch_load_reads_weights_only_and_run_files_only_through_checkpoint_load() -> None:
    import ast

    from tests.helpers import REPO

    readers = {  # the torch.load calls and what each reads
        "src/npair/checkpoint.py": "a run's checkpoint.pt (checkpoint.load; load_run reads through it)",
        "src/npair/evaluate.py": "embedding files named on the command line",
        "src/npair/data/embedded.py": "the generated glyphs cache",
    }
    found = {}
    for path in sorted([*REPO.joinpath("src").rglob("*.py"), *REPO.joinpath("scripts").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert keywords.get("weights_only") == "True", f"{path}:{node.lineno}: no weights_only=True"
                found[str(path.relative_to(REPO))] = node.lineno
    assert set(found) == set(readers), found
