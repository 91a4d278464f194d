"""npair.runio: the files of a run get the permissions a plain open gives them (the umask), and the temporary
files of writes killed half-way are removed when a run starts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from npair.runio import atomic_write_text, remove_temp_files
from npair.tables import Row, TableSpec, write_table
from npair.train import run
from tests.helpers import TINY, compose_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_tables_figures_and_glyph_caches_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        run_dir = tmp_path / "outputs" / "runs" / "t" / "npair_mc" / "seed0"
        run(compose_config([*TINY, "name=t/npair_mc"], tmp_path), run_dir)
        spec = TableSpec(
            name="perm",
            title="Perm",
            seeds=[0],
            metrics=[{"key": "recall@1"}, {"key": "nmi"}],
            rows=[Row("mc", "t/npair_mc")],
        )
        tables = write_table(spec, tmp_path / "outputs")
    finally:
        os.umask(previous)
    files = [run_dir / name for name in ("metrics.json", "config.yaml", "checkpoint.pt", "train_log.csv")]
    files += [*tables.values(), *(p.with_suffix(".json") for p in tables.values() if p.suffix == ".png")]
    files += list((tmp_path / "data" / "glyphs").glob("glyphs-*.pt"))  # the generated data's cache
    assert len(files) >= 9
    expected = 0o666 & ~umask  # what open(path, "w") gives
    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in files} == {
        str(p.relative_to(tmp_path)): oct(expected) for p in files
    }


def test_an_atomic_write_keeps_the_permissions_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "{}")
    path.chmod(0o600)  # the user made it private: a plain open would keep that
    atomic_write_text(path, '{"a": 1}')
    assert mode(path) == 0o600 and path.read_text() == '{"a": 1}'


def test_temporary_files_of_killed_writes_are_removed_when_the_run_starts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "eval").mkdir(parents=True)
    left = [
        run_dir / ".metrics.json.k3j2h1.tmp",
        run_dir / ".checkpoint.pt.a1b2c3.tmp",
        run_dir / ".config.yaml.zz9.tmp",
        run_dir / "eval" / ".faces.json.q0.tmp",
    ]
    for path in left:
        path.write_text("half a write")
    keep = run_dir / ".keep.tmp"  # not a temporary file of an atomic write (.<name>.<random>.tmp)
    keep.write_text("mine")
    run(compose_config([*TINY, "trainer.max_steps=1", "trainer.eval_every=0"], tmp_path), run_dir)
    assert [p for p in left if p.exists()] == []
    assert keep.exists() and (run_dir / "metrics.json").exists()
    assert remove_temp_files(run_dir) == []
