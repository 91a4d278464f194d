"""Hyperparameters chosen on validation classes carved from the training classes, never on the test split.

    python -m npair.select --grid loss.temperature=0.03,0.05,0.1,0.2 loss=npair_mc_cosine \\
        dataset=folder dataset.root=/path/to/tree

1. **Selection runs**: one training run per grid value (and per ``--seeds`` seed) with
   ``dataset.validation.fraction`` (default 0.2) of the training classes held out, class-disjoint
   (:mod:`npair.data.validation`, seed ``--split-seed``); the held-out classes replace the test split, whose
   items are never read. Each run is scored on them by ``--metric`` (default Recall@1).
2. **Choice**: the value with the best mean score over the selection seeds; a tie goes to the value listed
   first.
3. **Final runs**: the same configuration with the chosen value, trained on all training classes and
   evaluated on the test split as usual (``--final-seeds``).

Everything goes under ``<outputs>/selection/<name>/``: ``<key>-<value>/seed<k>/`` (selection runs),
``final/seed<k>/`` and ``selection.json`` (grid, every validation score, the chosen value, the held-out
classes), also copied into every final run directory. Already completed runs are not trained again, and a
run directory is reused only for the config it must hold (npair.run_checks): selection runs are checked
before anything trains, final runs once the value is chosen; one of another config, or with a hand-written
metrics.json, stops the build naming it and the differing keys (``--rerun-stale`` moves it aside).

The command line is :mod:`npair.select`. The table runner (:mod:`npair.tables`) does the same for table
rows with a ``select:`` entry; their final runs are the rows' usual ``outputs/runs/<experiment>/seed<k>/``
(see :func:`select_and_train`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from omegaconf import OmegaConf

from npair.run_checks import RunCheck, check_dir, settle
from npair.runio import atomic_write_json, is_complete

if TYPE_CHECKING:
    from omegaconf import DictConfig

SELECTION_FILE = "selection.json"


# ------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Grid:
    """One config key and the values tried for it."""

    key: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", self.key):
            raise ValueError(f"grid key {self.key!r} is not a dotted config key (e.g. loss.temperature)")
        if len(self.values) < 2 or len(set(map(str, self.values))) != len(self.values):
            raise ValueError(f"grid {self.key}: {list(self.values)}; give at least 2 distinct values")

    @classmethod
    def parse(cls, text: str) -> Grid:
        """``key=v1,v2,...`` (values read as YAML scalars: numbers stay numbers)."""
        key, sep, values = text.partition("=")
        if not sep or not values:
            raise ValueError(f"--grid {text!r}: write key=value1,value2,... (e.g. loss.temperature=0.05,0.1)")
        return cls(key.strip(), tuple(yaml.safe_load(v) for v in values.split(",")))

    @property
    def tail(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    def run_name(self, value: Any) -> str:
        """The directory of one grid point, ``<last key part>-<value>`` (as Hydra renders the value)."""
        return f"{self.tail}-{value}"


@dataclass(frozen=True)
class Settings:
    """How selection runs are made and scored (a table's ``selection:`` block, or the CLI options)."""

    fraction: float = 0.2  # of the training classes held out as validation classes
    split_seed: int = 0  # which ones
    seeds: tuple[int, ...] = (0,)  # training seeds per grid point
    metric: str = "recall@1"
    higher_is_better: bool = True

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Settings:
        spec = dict(spec or {})
        known = {"fraction", "split_seed", "seeds", "metric", "higher_is_better"}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"selection: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        if "seeds" in spec:
            spec["seeds"] = tuple(int(s) for s in spec["seeds"])
        return cls(**spec)

    def overrides(self) -> list[str]:
        """Training overrides of a selection run: validation classes in place of the test split, and only the
        Recall@K the choice reads (``recall@K``; other metrics: the run's own evaluation, reference-free)."""
        out = [
            f"dataset.validation.fraction={self.fraction}",
            f"dataset.validation.seed={self.split_seed}",
            "eval.needs_reference=false",
        ]
        if re.fullmatch(r"recall@\d+", self.metric):
            out += ["eval.metrics=[recall]", f"eval.ks=[{self.metric.split('@')[1]}]"]
        return out


# ------------------------------------------------------------------------------------ running
@dataclass
class Sweep:
    """One ``python -m npair.train -m`` process, which trains its jobs one after another."""

    label: str
    overrides: list[str]
    sweep_dir: Path
    subdir: str

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "npair.train",
            "-m",
            *self.overrides,
            f"hydra.sweep.dir={self.sweep_dir}",
            f"hydra.sweep.subdir={self.subdir}",
        ]


@dataclass
class Task:
    """A unit of work for :func:`run_tasks`: ``start()`` (called once every task in ``after`` is done)
    returns the sweep to run, or None when nothing is missing; ``finish()`` runs when the sweep succeeded."""

    name: str
    start: Callable[[], Sweep | None]
    after: tuple[str, ...] = ()
    finish: Callable[[], None] = lambda: None


def run_tasks(tasks: Sequence[Task], jobs: int, log_dir: Path) -> None:
    """Run the tasks' sweeps, ``jobs`` processes at a time, each after the tasks it depends on.

    Each process's output goes to ``<log_dir>/<task>.log``; a failure stops everything with the command and
    the end of its log.
    """
    names = {t.name for t in tasks}
    for t in tasks:
        if missing := [a for a in t.after if a not in names]:
            raise ValueError(f"task {t.name!r} waits for unknown task(s) {missing}")
    pending, done = list(tasks), set()
    running: list[tuple[Task, Sweep, subprocess.Popen, Path]] = []
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        while pending or running:
            ready = [t for t in pending if all(a in done for a in t.after)]
            while ready and len(running) < max(1, jobs):
                task = ready.pop(0)
                pending.remove(task)
                sweep = task.start()
                if sweep is None:
                    task.finish()
                    done.add(task.name)
                    ready = [t for t in pending if all(a in done for a in t.after)]
                    continue
                log = log_dir / f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', task.name)}.log"
                print(f"training {sweep.label}  (log: {log})", flush=True)
                with open(log, "w") as handle:
                    proc = subprocess.Popen(sweep.command(), stdout=handle, stderr=subprocess.STDOUT)
                running.append((task, sweep, proc, log))
            if not running:
                if pending:
                    raise RuntimeError(f"tasks {[t.name for t in pending]} wait for each other")
                break
            time.sleep(0.2)
            for item in list(running):
                task, sweep, proc, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if proc.returncode != 0:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
                    raise SystemExit(
                        f"training failed (exit {proc.returncode}) for {sweep.label}; command:\n  "
                        f"{' '.join(sweep.command())}\nend of {log}:\n{tail}"
                    )
                task.finish()
                done.add(task.name)
    finally:
        for _task, _sweep, proc, _log in running:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()


# ------------------------------------------------------------------------------------ composing runs
def compose_seeds(overrides: Sequence[str], seeds: Iterable[int]) -> dict[int, DictConfig]:
    """The config ``python -m npair.train <overrides> seed=<k>`` trains, for each seed: composed once, the
    seed set on a copy (interpolations of ``${seed}`` resolve to it as when composed with it)."""
    import copy

    from npair.build import compose_train

    seeds = list(seeds)
    if not seeds:
        return {}
    cfg = compose_train([*overrides, f"seed={seeds[0]}"])
    out = {}
    for seed in seeds:
        out[seed] = copy.deepcopy(cfg)
        out[seed].seed = int(seed)
    return out


# ------------------------------------------------------------------------------------ reading runs
def run_value(run_dir: Path, key: str) -> Any:
    """The value of ``key`` in a run's resolved config.yaml."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    return OmegaConf.select(cfg, key, throw_on_missing=False, default="<absent>")


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def same_values(a: Any, b: Any) -> bool:
    """:func:`same_value` element by element for lists (a grid read back from JSON)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return same_value(a, b)


def read_score(run_dir: Path, metric: str) -> float:
    record = json.loads((run_dir / "metrics.json").read_text())
    final = record.get("final", {})
    if final.get(metric) is None:
        raise ValueError(
            f"{run_dir / 'metrics.json'}: no final {metric!r} (have {sorted(final)}); selection "
            "scores runs by that metric (selection.metric / --metric)"
        )
    return float(final[metric])


def held_out_classes(run_dir: Path) -> dict[str, Any]:
    """The validation classes of a selection run, recomputed from its resolved config (training labels)."""
    from hydra.utils import instantiate

    from npair.data.validation import validation_classes

    cfg = OmegaConf.load(run_dir / "config.yaml")
    splits = instantiate(cfg.dataset.build)
    labels = np.asarray(splits.train.labels)
    held = validation_classes(
        labels, float(cfg.dataset.validation.fraction), int(cfg.dataset.validation.seed)
    )
    return {
        "fraction": float(cfg.dataset.validation.fraction),
        "seed": int(cfg.dataset.validation.seed),
        "n_training_classes": int(np.unique(labels).size),
        "n_validation_classes": len(held),
        "classes": [int(c) for c in held],
    }


# ------------------------------------------------------------------------------------ one selection
@dataclass
class Selection:
    """A grid searched on validation classes: where its runs live and what they scored."""

    name: str
    base: list[str]  # training overrides shared by every run (experiment=..., user overrides)
    grid: Grid
    settings: Settings
    root: Path  # <outputs>/selection/<name>
    record: dict[str, Any] = field(default_factory=dict)

    def run_dir(self, value: Any, seed: int) -> Path:
        return self.root / self.grid.run_name(value) / f"seed{seed}"

    def run_overrides(self, value: Any) -> list[str]:
        """The training overrides of the selection runs of one grid value (the seed aside)."""
        return [*self.base, *self.settings.overrides(), f"{self.grid.key}={value}"]

    def checks(self) -> list[RunCheck]:
        """Every selection run directory checked against the config it must hold (npair.run_checks): a run
        of another config, or a metrics.json its config.yaml does not account for, is never reused."""
        out = []
        for value in self.grid.values:
            configs = compose_seeds(self.run_overrides(value), self.settings.seeds)
            for seed, cfg in configs.items():
                label = f"{self.name} {self.grid.key}={value}"
                out.append(check_dir(self.run_dir(value, seed), cfg, label, seed))
        return out

    def record_mismatch(self, record: Mapping[str, Any]) -> str | None:
        """Why a ``selection.json`` record is not the choice of this selection (None when it is): another
        key, grid, overrides, seeds, metric or validation split."""
        validation = record.get("validation") or {}
        wanted = {
            "key": (record.get("key"), self.grid.key),
            "values": (record.get("values"), list(self.grid.values)),
            "overrides": (record.get("overrides"), list(self.base)),
            "seeds": (record.get("seeds"), list(self.settings.seeds)),
            "metric": (record.get("metric"), self.settings.metric),
            "higher_is_better": (record.get("higher_is_better"), self.settings.higher_is_better),
            "validation fraction": (validation.get("fraction"), self.settings.fraction),
            "validation seed": (validation.get("seed"), self.settings.split_seed),
        }
        differ = [
            f"{name}: {have!r} -> {want!r}"
            for name, (have, want) in wanted.items()
            if not same_values(have, want)
        ]
        return "; ".join(differ) or None

    def missing(self) -> list[Any]:
        return [
            v
            for v in self.grid.values
            if not all(is_complete(self.run_dir(v, s)) for s in self.settings.seeds)
        ]

    def sweep(self) -> Sweep | None:
        """The selection runs still missing, as one sweep (values × seeds)."""
        values = self.missing()
        if not values:
            return None
        return Sweep(
            label=f"{self.name}: {self.grid.key} ∈ {values} on validation classes",
            overrides=[
                *self.base,
                *self.settings.overrides(),
                f"{self.grid.key}={','.join(map(str, values))}",
                f"seed={','.join(map(str, self.settings.seeds))}",
            ],
            sweep_dir=self.root,
            subdir=f"{self.grid.tail}-${{{self.grid.key}}}/seed${{seed}}",
        )

    def choose(self) -> dict[str, Any]:
        """Score every selection run, pick the best value, write ``selection.json``; returns the record."""
        scores, means = [], {}
        for value in self.grid.values:
            per_seed = []
            for seed in self.settings.seeds:
                run_dir = self.run_dir(value, seed)
                if not is_complete(run_dir):
                    raise RuntimeError(f"selection run {run_dir} is missing or incomplete")
                if not same_value(have := run_value(run_dir, self.grid.key), value):
                    raise RuntimeError(
                        f"{run_dir} was trained with {self.grid.key}={have}, not {value}; "
                        "delete it to train it again"
                    )
                score = read_score(run_dir, self.settings.metric)
                per_seed.append(score)
                scores.append(
                    {
                        "value": value,
                        "seed": seed,
                        "score": score,
                        "run_dir": str(run_dir.relative_to(self.root)),
                    }
                )
            means[str(value)] = float(np.mean(per_seed))
        sign = 1.0 if self.settings.higher_is_better else -1.0
        best = max(range(len(self.grid.values)), key=lambda i: (sign * means[str(self.grid.values[i])], -i))
        self.record = {
            "name": self.name,
            "key": self.grid.key,
            "values": list(self.grid.values),
            "metric": self.settings.metric,
            "higher_is_better": self.settings.higher_is_better,
            "seeds": list(self.settings.seeds),
            "scores": scores,
            "mean": means,
            "chosen": self.grid.values[best],
            "validation": held_out_classes(self.run_dir(self.grid.values[0], self.settings.seeds[0])),
            "rule": "best mean validation score over the selection seeds; ties go to the value listed first",
            "overrides": self.base,
        }
        atomic_write_json(self.root / SELECTION_FILE, self.record)
        return self.record


def final_sweep(
    label: str,
    base: list[str],
    record: Mapping[str, Any],
    run_dirs: Mapping[int, Path],
    sweep_dir: Path,
    subdir: str,
    rerun_stale: bool = False,
) -> Sweep | None:
    """Final runs (all training classes, test split) with the chosen value, for the seeds not yet complete.

    Each final run directory is checked against the config ``base`` + ``<key>=<chosen>`` composes
    (npair.run_checks): one of another config (another chosen value, other overrides) or with an
    unverified metrics.json stops the build naming it and the differing keys, or with ``rerun_stale`` is
    moved aside and trained again.
    """
    key, chosen = record["key"], record["chosen"]
    overrides = [*base, f"{key}={chosen}"]
    configs = compose_seeds(overrides, run_dirs)
    checks = [check_dir(run_dirs[seed], cfg, label, seed) for seed, cfg in configs.items()]
    settle(checks, rerun_stale, f"the final runs of {label} ({key}={chosen}, chosen on validation classes)")
    missing = [c.seed for c in checks if c.state != "completed"]
    if not missing:
        return None
    return Sweep(
        label=f"{label}: final runs with {key}={chosen}, seeds {missing}",
        overrides=[*overrides, f"seed={','.join(map(str, missing))}"],
        sweep_dir=sweep_dir,
        subdir=subdir,
    )


def record_in_runs(record: Mapping[str, Any], run_dirs: Iterable[Path]) -> None:
    """Copy the selection record (chosen value, every validation score) into each final run directory."""
    for run_dir in run_dirs:
        if is_complete(run_dir):
            atomic_write_json(run_dir / SELECTION_FILE, dict(record))


# ------------------------------------------------------------------------------------ tables
def _row_selects(spec: Any) -> list[Any]:
    return [row for row in spec.rows if getattr(row, "select", None)]


def check_table(spec: Any) -> None:
    """A table's ``select:`` rows: a grid (``key``, ``values``) or ``same_as: <experiment>``, and every grid
    of one table of the same size, so that no row is tuned more than another."""
    sizes = {}
    for row in _row_selects(spec):
        sel = dict(row.select)
        if "same_as" in sel:
            if set(sel) != {"same_as"}:
                raise ValueError(f"table {spec.name}, row {row.label!r}: select.same_as takes no other key")
            continue
        if set(sel) != {"key", "values"}:
            raise ValueError(
                f"table {spec.name}, row {row.label!r}: select needs key and values (or same_as), "
                f"got {sorted(sel)}"
            )
        sizes[row.label] = len(Grid(str(sel["key"]), tuple(sel["values"])).values)
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"table {spec.name}: every selected row must try the same number of values, got {sizes}"
        )


def plan(
    specs: Sequence[Any], root: Path, overrides: Sequence[str]
) -> tuple[dict[str, Selection], dict[str, tuple[str, set[int]]]]:
    """The selections the tables' ``select:`` rows make (by experiment) and their final runs: experiment ->
    (the experiment whose choice it uses, the seeds of its final runs)."""
    grids: dict[str, Selection] = {}
    finals: dict[str, tuple[str, set[int]]] = {}  # experiment -> (experiment whose choice it uses, seeds)
    for spec in specs:
        check_table(spec)
        settings = Settings.from_spec(getattr(spec, "selection", None))
        for row in _row_selects(spec):
            sel = dict(row.select)
            source = str(sel.get("same_as", row.experiment))
            if "same_as" not in sel:
                grid = Grid(str(sel["key"]), tuple(sel["values"]))
                known = grids.get(row.experiment)
                if known and (known.grid != grid or known.settings != settings):
                    raise ValueError(f"experiment {row.experiment} is selected twice with different grids")
                grids[row.experiment] = Selection(
                    row.experiment,
                    [f"experiment={row.experiment}", *overrides],
                    grid,
                    settings,
                    root / "selection" / row.experiment,
                )
            used, seeds = finals.setdefault(row.experiment, (source, set()))
            if used != source:
                raise ValueError(f"experiment {row.experiment} takes its value from both {used} and {source}")
            seeds.update(spec.seeds)
    plain = {row.experiment for spec in specs for row in spec.rows if not getattr(row, "select", None)}
    if both := sorted(plain & set(finals)):
        raise ValueError(
            f"experiment(s) {both} are rows with select: in one table and without in another: "
            "their runs would be one directory for two configs"
        )
    return grids, finals


def chosen_values(
    specs: Sequence[Any], root: Path, overrides: Sequence[str]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """What the tables' selected rows were chosen, from the ``selection.json`` records on disk: experiment ->
    the override of its chosen value (``[key=value]``), and experiment -> why its value is not chosen yet (no
    record, or a record of another grid, other overrides or settings: that choice is not this table's)."""
    grids, finals = plan(specs, root, overrides)
    chosen: dict[str, list[str]] = {}
    not_chosen: dict[str, str] = {}
    for experiment, (source, _seeds) in finals.items():
        path = root / "selection" / source / SELECTION_FILE
        if not path.exists():
            not_chosen[experiment] = f"no {path} yet"
            continue
        record = json.loads(path.read_text())
        if source in grids:
            problem = grids[source].record_mismatch(record)
        else:
            base = [f"experiment={source}", *overrides]
            have = record.get("overrides")
            problem = None if have == base else f"overrides: {have!r} -> {base!r}"
        if problem:
            not_chosen[experiment] = f"{path} is the choice of another selection ({problem})"
        else:
            chosen[experiment] = [f"{record['key']}={record['chosen']}"]
    return chosen, not_chosen


def selection_checks(specs: Sequence[Any], root: Path, overrides: Sequence[str]) -> list[RunCheck]:
    """Every selection run of the tables' ``select:`` rows, checked (:meth:`Selection.checks`)."""
    grids, _finals = plan(specs, root, overrides)
    return [check for selection in grids.values() for check in selection.checks()]


def select_and_train(
    specs: Sequence[Any], root: Path, overrides: Sequence[str], jobs: int, rerun_stale: bool = False
) -> dict[str, Any]:
    """For the rows with ``select:``: selection runs, choice, then the rows' final runs with the chosen value.

    Selection runs: ``<root>/selection/<experiment>/<key>-<value>/seed<k>/`` (settings from the table's
    ``selection:`` block, :class:`Settings`); the choice: ``<root>/selection/<experiment>/selection.json``;
    final runs: the rows' ``<root>/runs/<experiment>/seed<k>/`` (the table's seeds), each with a copy of
    ``selection.json``. ``same_as: <experiment>`` reuses that experiment's choice (it must be selected by
    a row of one of ``specs``). Returns the records by experiment. Tables without ``select:`` rows: nothing.

    Every selection run is checked before anything trains, every final run once its value is chosen
    (npair.run_checks): a run of another config, or an unverified one, stops the build naming it, or with
    ``rerun_stale`` is moved aside and trained again.
    """
    grids, finals = plan(specs, root, overrides)
    if not finals:
        return {}
    settle(
        [check for selection in grids.values() for check in selection.checks()],
        rerun_stale,
        "the selection",
    )
    on_disk: dict[str, dict[str, Any]] = {}  # same_as an experiment selected by an earlier table run
    for experiment, (source, _seeds) in finals.items():
        path = root / "selection" / source / SELECTION_FILE
        if source not in grids and source not in on_disk:
            if not path.exists():
                raise ValueError(
                    f"experiment {experiment}: select.same_as {source}, which no row of the tables "
                    f"{[s.name for s in specs]} selects and {path} does not exist; run the table "
                    "that selects it first (or both together, e.g. TABLE=claim_check)"
                )
            on_disk[source] = json.loads(path.read_text())
            base = [f"experiment={source}", *overrides]
            if on_disk[source].get("overrides") != base:
                raise ValueError(
                    f"experiment {experiment}: select.same_as {source}, whose choice {path} was made with "
                    f"the overrides {on_disk[source].get('overrides')}, not {base}; build the table that "
                    "selects it with these overrides first (or both together, e.g. TABLE=claim_check)"
                )

    def record_of(source: str) -> dict[str, Any]:
        return grids[source].record if source in grids else on_disk[source]

    def final_task(experiment: str, source: str, seeds: set[int]) -> Task:
        run_dirs = {s: root / "runs" / experiment / f"seed{s}" for s in sorted(seeds)}

        def start() -> Sweep | None:
            return final_sweep(
                experiment,
                [f"experiment={experiment}", *overrides],
                record_of(source),
                run_dirs,
                root / "runs",
                "${name}/seed${seed}",
                rerun_stale,
            )

        def finish() -> None:
            record = {**record_of(source), "experiment": experiment, "selected_for": source}
            record_in_runs(record, run_dirs.values())

        after = (f"select {source}",) if source in grids else ()
        return Task(f"final {experiment}", start, after=after, finish=finish)

    # Ready tasks start in list order: each grid is followed by the final runs that wait for it (those of
    # other experiments first), and grids that other experiments borrow go first, so that the long final
    # runs start early and short grids fill the end.
    borrowed = {source for experiment, (source, _s) in finals.items() if source != experiment}
    tasks = [final_task(e, source, seeds) for e, (source, seeds) in finals.items() if source in on_disk]
    for source in sorted(grids, key=lambda e: e not in borrowed):
        tasks.append(Task(f"select {source}", grids[source].sweep, finish=grids[source].choose))
        waiting = [e for e, (used, _s) in finals.items() if used == source]
        tasks += [final_task(e, source, finals[e][1]) for e in sorted(waiting, key=lambda e: e == source)]
    run_tasks(tasks, jobs, root / "selection" / "logs")
    return {e: record_of(source) for e, (source, _s) in finals.items()}


def selection_report(spec: Any, root: Path, decimals: int = 2) -> tuple[str, str]:
    """Markdown and CSV text of a table's selections: every validation score and the chosen value
    (both empty for a table without ``select:`` rows)."""
    rows = _row_selects(spec)
    if not rows:
        return "", ""
    lines = [
        "",
        "Hyperparameters chosen on validation classes (never the test split):",
        "",
        "| method | key | validation score per value (mean over selection seeds) | chosen |",
        "|---|---|---|---|",
    ]
    csv_rows: list[list[Any]] = [
        [
            "table",
            "method",
            "experiment",
            "selected_for",
            "key",
            "value",
            "metric",
            "validation_score",
            "chosen",
        ]
    ]
    validation = None
    for row in rows:
        source = str(dict(row.select).get("same_as", row.experiment))
        path = root / "selection" / source / SELECTION_FILE
        if not path.exists():
            lines.append(f"| {row.label} | — | not selected yet | — |")
            continue
        record = json.loads(path.read_text())
        validation, metric = validation or record.get("validation"), record["metric"]
        scale = getattr(spec, "scale", 100.0)
        cells = []
        for value in record["values"]:
            mean = record["mean"][str(value)]
            text = f"{value}: {mean * scale:.{decimals}f}"
            cells.append(f"**{text}**" if same_value(value, record["chosen"]) else text)
            csv_rows.append(
                [
                    spec.name,
                    row.label,
                    row.experiment,
                    source,
                    record["key"],
                    value,
                    record["metric"],
                    mean,
                    same_value(value, record["chosen"]),
                ]
            )
        borrowed = "" if source == row.experiment else f" (chosen for {source})"
        lines.append(
            f"| {row.label} | `{record['key']}` | {', '.join(cells)}{borrowed} | {record['chosen']} |"
        )
    if validation:
        lines += [
            "",
            (
                f"Validation: {validation['n_validation_classes']} of the {validation['n_training_classes']} "
                f"training classes (fraction {validation['fraction']}, seed {validation['seed']}), "
                f"class-disjoint from the classes the selection runs train on; metric {metric} (%); "
                "bold: the chosen value (the best mean; a tie goes to the value listed first)."
            ),
        ]
    out = io.StringIO()
    csv.writer(out).writerows(csv_rows)
    return "\n".join(lines) + "\n", out.getvalue()
