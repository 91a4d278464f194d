"""A run's identity: what its resolved config computes, less where it lives and how it is watched.

Two runs are the same run when their *identity* is equal: the resolved config without the keys of
:data:`EXCLUDED`, and with every value under ``paths`` written as the symbol it came from
(``./data/glyphs`` with ``paths.data_dir: ./data`` is ``${paths.data_dir}/glyphs``), so that a run
moved to another root (``NPAIR_ROOT``, ``paths.root_dir``) keeps its identity, while a dataset folder
given as a path of its own is part of it. Hashes of the identity (SHA-256, first 16 hex digits):

- :func:`config_hash`: the run (metrics.json ``config_hash``, checkpoints, W&B summary);
- :func:`group_hash`: the run without its ``seed`` (metrics.json ``group_hash``): the runs that share it are
  seeds of one setting, the only runs that tables, curves and the notebook average together.

metrics.json records which hash it holds (``config_hash_version``: 2; records written before it have
none and carry :func:`legacy_config_hash`). The run directory's ``config.yaml`` is the identity's source:
:func:`record_problem` checks that a metrics.json header belongs to the config.yaml beside it, and
:func:`differences` names the keys in which two configs differ (docs/design.md §7).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npair.runio import CONFIG_FILE, METRICS_FILE, read_metrics

HASH_VERSION = 2

# Keys left out of a run's identity: they say where a run lives or how it is watched, not what it computes.
EXCLUDED = (
    "paths",  # where data and outputs live (values under it are written as ${paths.<key>})
    "name",  # names the run directory and the W&B group
    "tags",  # free-form labels
    "logger",  # whether and where W&B mirrors the run
    "trainer.resume",  # how this process starts: continue or start over
    "trainer.progress_bar",  # the terminal's progress bar
    "trainer.log_every",  # train_log.csv / W&B resolution; the training itself is the same
    "trainer.save_checkpoint",  # whether checkpoint.pt is kept
    "trainer.checkpoint_every",  # how often it is written
    "trainer.num_workers",  # DataLoader processes (the batches are the same; npair.stream)
    "trainer.pin_memory",  # host-to-device copies
    "trainer.threads",  # CPU threads
    "trainer.eval_batch_size",  # embedding chunk size at evaluation
    "trainer.ddp.timeout_min",  # how long ranks wait for each other
    "loss.gather_across_ranks",  # set under DDP from trainer.ddp.gather_negatives; no effect in one process
)
PATH_KEYS = ("data_dir", "output_dir", "root_dir")  # the paths.* values written as symbols elsewhere

# The version-1 hash (records without config_hash_version): the resolved config less these keys (paths kept).
_LEGACY_EXCLUDED = ("paths", "logger", "tags")
_LEGACY_EXCLUDED_TRAINER = (
    "progress_bar",
    "num_workers",
    "eval_batch_size",
    "save_checkpoint",
    "log_every",
    "resume",
    "checkpoint_every",
    "pin_memory",
    "threads",
)


def as_container(config: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """A plain dict of ``config`` (a DictConfig is resolved; a dict, e.g. a read config.yaml, is copied)."""
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return copy.deepcopy(dict(config))


def identity(config: DictConfig | dict[str, Any], seed: bool = True) -> dict[str, Any]:
    """The part of ``config`` that says what the run computes (module docstring); without ``seed`` if not
    ``seed``."""
    container = as_container(config)
    paths = container.get("paths") or {}
    prefixes = {k: paths[k].rstrip("/") for k in PATH_KEYS if isinstance(paths.get(k), str)}
    # longest first: ./data/glyphs is ${paths.data_dir}/glyphs, not ${paths.root_dir}/data/glyphs
    symbols = sorted(((v, f"${{paths.{k}}}") for k, v in prefixes.items() if v), key=lambda p: -len(p[0]))
    for dotted in (*EXCLUDED, *(() if seed else ("seed",))):
        *parents, last = dotted.split(".")
        node: Any = container
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)

    def symbolic(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: symbolic(item) for key, item in value.items()}
        if isinstance(value, list):
            return [symbolic(item) for item in value]
        if isinstance(value, str):
            for prefix, symbol in symbols:
                if value == prefix or value.startswith(prefix + "/"):
                    return symbol + value[len(prefix) :]
        return value

    return symbolic(container)


def _digest(container: Any) -> str:
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(config: DictConfig | dict[str, Any]) -> str:
    """The run's hash: SHA-256 (16 hex digits) of its :func:`identity`."""
    return _digest(identity(config))


def group_hash(config: DictConfig | dict[str, Any]) -> str:
    """The hash of the run's identity without its seed: equal for the seeds of one setting."""
    return _digest(identity(config, seed=False))


def legacy_config_hash(config: DictConfig | dict[str, Any]) -> str:
    """The hash metrics.json held before ``config_hash_version`` (1): resolved paths included."""
    container = as_container(config)
    for key in _LEGACY_EXCLUDED:
        container.pop(key, None)
    for key in _LEGACY_EXCLUDED_TRAINER:
        container.get("trainer", {}).pop(key, None)
    return _digest(container)


def hashes(config: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """What metrics.json records of a run's identity: config_hash, group_hash and config_hash_version."""
    return {
        "config_hash": config_hash(config),
        "group_hash": group_hash(config),
        "config_hash_version": HASH_VERSION,
    }


# ------------------------------------------------------------------------------ comparing configs
def differences(
    stored: DictConfig | dict[str, Any], current: DictConfig | dict[str, Any], seed: bool = True
) -> list[str]:
    """``key: stored -> current`` for every dotted key whose value differs between the two identities
    (``<absent>`` where one has no such key)."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                dotted = f"{prefix}.{key}" if prefix else str(key)
                walk(a.get(key, "<absent>"), b.get(key, "<absent>"), dotted)
        elif a != b:
            out.append(f"{prefix}: {a!r} -> {b!r}")

    walk(identity(stored, seed), identity(current, seed), "")
    return out


def listing(diffs: list[str], limit: int = 8) -> str:
    """The differences on one line, the first ``limit`` of them."""
    return "; ".join(diffs[:limit]) + (f"; ... {len(diffs) - limit} more" if len(diffs) > limit else "")


# ------------------------------------------------------------------------------ run directories
def stored_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The resolved config a run directory holds (its config.yaml) as a plain dict, read without resolving
    anything in it; None when there is none. An unreadable file raises naming it."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    version = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)  # a rewrite changes one
    return copy.deepcopy(_read_config(str(path), version))


@functools.lru_cache(maxsize=1024)
def _read_config(path_name: str, version: tuple[int, ...]) -> dict[str, Any]:
    """config.yaml as a dict, read once per version of the file (tables read each run's several times)."""
    path = Path(path_name)
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # YAML syntax, not a mapping ...
        raise ValueError(
            f"{path} is not a readable config ({type(err).__name__}: {err}); delete or restore "
            "it (or move the run directory aside) to train this run again"
        ) from err
    container = OmegaConf.to_container(loaded, resolve=False)
    if not isinstance(container, dict):
        raise ValueError(  # noqa: TRY004  (a bad file, reported as such)
            f"{path} holds no config mapping; delete or restore it to train this run again"
        )
    return container


def record_problem(run_dir: str | Path, record: dict[str, Any]) -> str | None:
    """Why a metrics.json ``record`` does not belong to the config.yaml in ``run_dir`` (None when it does):
    its ``config_hash`` (and ``group_hash``) must be the hash of that config.yaml."""
    recorded = record.get("config_hash")
    if not recorded:
        return "its metrics.json records no config_hash (not written by npair.train?)"
    stored = stored_config(run_dir)
    if stored is None:
        return "it has no config.yaml to check its metrics.json against"
    version = record.get("config_hash_version", 1)
    if version not in (1, HASH_VERSION):
        return f"its metrics.json has config_hash_version={version!r}, which this code does not know"
    expected = config_hash(stored) if version == HASH_VERSION else legacy_config_hash(stored)
    if recorded != expected:
        return f"its metrics.json says config_hash {recorded} but its config.yaml hashes to {expected}"
    if version == HASH_VERSION and record.get("group_hash") != group_hash(stored):
        return (
            f"its metrics.json says group_hash {record.get('group_hash')} but its config.yaml hashes to "
            f"{group_hash(stored)}"
        )
    return None


def run_group_hash(run_dir: str | Path) -> str | None:
    """The group hash of the run in ``run_dir``: metrics.json's ``group_hash``, else the hash of its
    config.yaml (runs written before group hashes existed), else None."""
    record = read_metrics(run_dir) or {}
    if record.get("config_hash_version") == HASH_VERSION and record.get("group_hash"):
        return str(record["group_hash"])
    stored = stored_config(run_dir)
    return group_hash(stored) if stored is not None else None


def require_one_setting(label: str, run_dirs: Iterable[str | Path]) -> str | None:
    """The group hash shared by ``run_dirs`` (None when none is known); raises naming every run and its hash
    when they are different settings, not seeds of one, with the keys in which the first two that differ
    differ."""
    dirs = [Path(d) for d in run_dirs]
    known = {d: h for d in dirs if (h := run_group_hash(d)) is not None}
    distinct = sorted(set(known.values()))
    if len(distinct) <= 1:
        return distinct[0] if distinct else None
    named = ", ".join(f"{d} ({h})" for d, h in known.items())
    one = next(iter(known))
    first = [one, next(d for d, h in known.items() if h != known[one])]  # the first two that differ
    configs = [stored_config(d) for d in first]
    keys = listing(differences(configs[0], configs[1], seed=False)) if None not in configs else "unknown"
    raise ValueError(
        f"{label}: these runs are different configurations, not seeds of one: {named}; "
        f"{first[0]} and {first[1]} differ in {keys}. Give each configuration its own label"
    )


def runs_by_setting(runs_root: str | Path) -> dict[tuple[str, str | None], list[Path]]:
    """Every run directory under ``runs_root`` (a folder holding a metrics.json), grouped by (run name,
    group hash): the runs of one group are seeds of one setting. Groups and runs in path order."""
    groups: dict[tuple[str, str | None], list[Path]] = {}
    for path in sorted(Path(runs_root).rglob(METRICS_FILE)):
        run_dir = path.parent
        record = read_metrics(run_dir) or {}
        name = str(record.get("name") or run_dir.parent.name)
        groups.setdefault((name, run_group_hash(run_dir)), []).append(run_dir)
    return groups
