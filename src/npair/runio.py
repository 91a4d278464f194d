"""Run-directory I/O: atomic writes, provenance (git commit), metrics.json schema, the names of
a run's files, and where a run's data lives when it is read from elsewhere."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

METRICS_SCHEMA_VERSION = 1
# The files of a run directory.
METRICS_FILE = "metrics.json"  # provenance, evaluation history, final metrics, status (npair.loggers)
CHECKPOINT_FILE = "checkpoint.pt"  # the last good training state (npair.checkpoint)
CONFIG_FILE = "config.yaml"  # the resolved config
TRAIN_LOG_FILE = "train_log.csv"  # one row per log step (npair.loggers.RunLogger.CSV_FIELDS)
REEVAL_DIR = "eval"  # <run>/eval/<slug>.json: a table row's evaluate_with re-evaluation


TEMP_SUFFIX = ".tmp"  # atomic writes go through .<name>.<random>.tmp beside the file (remove_temp_files)
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """This process's umask: from /proc on Linux, else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o022)
        os.umask(umask)
    return umask


def plain_open_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` would leave: the existing file's, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same directory and os.replace: readers never see a partial file.

    The file gets the permissions a plain ``open(path, "w")`` would give it (the umask's, or those of the
    file it replaces), not the 0600 of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, plain_open_mode(path))
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _json_safe(value.item())
    return value


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    data = json.dumps(_json_safe(obj), indent=2, sort_keys=False).encode()
    _atomic_write(Path(path), lambda handle: handle.write(data + b"\n"))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def git_commit(repo_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The commit of the code that ran and whether the work tree had changes; nulls outside git."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's metrics.json, or None when it has none; a corrupt file raises naming the path."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to re-run this run") from err


def is_complete(run_dir: str | os.PathLike) -> bool:
    metrics = read_metrics(run_dir)
    return bool(metrics) and metrics.get("status") == "completed"


def remove_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that atomic writes killed half-way left in ``run_dir`` (and its eval/):
    ``.<file>.<random>.tmp``. The files they were replacing are whole. Call only while holding the run
    directory's lock (npair.locks): another process's write in progress looks the same. Returns them."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / REEVAL_DIR):
        if folder.is_dir():
            for path in sorted(folder.glob(f".*{TEMP_SUFFIX}")):
                if path.is_file() and path.name.count(".") >= 3:  # .<name>.<random>.tmp
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


# ------------------------------------------------------------------------------ a run's data
def rebase_data_dir(cfg: Any, data_dir: str | Path | None) -> Any:
    """Point the run's dataset paths at ``data_dir`` (the run's own paths.data_dir prefix is replaced)."""
    if data_dir is None:
        return cfg
    old = str(cfg.paths.data_dir)
    container = OmegaConf.to_container(cfg, resolve=True)

    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        if isinstance(node, str) and node.startswith(old):
            return str(Path(data_dir)) + node[len(old) :]
        return node

    container["dataset"] = swap(container["dataset"])
    container["paths"]["data_dir"] = str(data_dir)
    return OmegaConf.create(container)


def locate_data_dir(cfg: Any, run_dir: Path) -> Path | None:
    """Where a run's data lives when its relative ``paths.data_dir`` does not resolve from here.

    Runs made from the repository root record ``./data``; read from elsewhere (the notebook runs in
    notebooks/), the run directory's own tree tells the root: ``<root>/<output_dir name>/runs/...``.
    None when the recorded path is absolute, exists as is, or no candidate exists.
    """
    data_dir = Path(str(cfg.paths.data_dir))
    if data_dir.is_absolute() or data_dir.exists():
        return None
    relative = Path(os.path.relpath(data_dir, str(cfg.paths.get("root_dir", "."))))
    out_name = Path(str(cfg.paths.get("output_dir", "outputs"))).name
    for parent in Path(run_dir).resolve().parents:
        if parent.name == out_name and (parent.parent / relative).exists():
            return parent.parent / relative
    return None
