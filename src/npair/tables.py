"""Tables: run what is missing, aggregate run directories, write them next to the paper's numbers.

    python -m npair.tables TABLE=mini                 # the default of `make reproduce-table`
    python -m npair.tables TABLE=mini_table2 --dry-run # its runs and their resolved configs; runs nothing
    python -m npair.tables TABLE=mini --no-train      # aggregate only
    python -m npair.tables TABLE=smoke --jobs 1 trainer.max_steps=20   # overrides go to every run trained
    python -m npair.tables TABLE=mini source=wandb project=npair       # aggregate a W&B project

A table spec (``configs/table/<name>.yaml``) lists rows (an experiment config each), seeds and metrics,
the paper's reference numbers and the bolding rule; or ``include:`` a list of other tables. Runs live in
``outputs/runs/<experiment>/seed<k>/``; a run whose ``metrics.json`` says ``completed`` is never re-run.
Each table is written to ``outputs/tables/<name>.{md,csv,tex}``, naming the config hashes of its runs.

Which runs a table uses (:func:`check_runs`): a run directory is used only for the config the table composes
now, seed for seed (npair.identity; paths and cosmetic keys aside), and only when its metrics.json belongs
to its config.yaml. Any other run directory (``stale``: another config; ``unverified``: a metrics.json its
config.yaml does not account for) stops the build, naming each one and the keys that differ, unless
``--rerun-stale``, which moves each aside (``seed0.stale-<its hash>``, nothing deleted) and trains it again.
A build holds a lock per table (npair.locks): a second build of a table waits for the first; a run that
another process is training is skipped, waited for, and then aggregated (or trained, if it did not finish).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from npair import identity, locks
from npair.configuration import CONFIG_DIR
from npair.errors import DEBUG_ENV, add_debug_option, run_cli
from npair.evaluation.keys import read_metric, spread_key, spread_of, within_run_spread
from npair.run_checks import BLOCKING, RunCheck, add_run_dir_options, check_dir, settle, stale_message
from npair.runio import CONFIG_FILE, METRICS_FILE, REEVAL_DIR, atomic_write_text, is_complete, read_metrics
from npair.stats import mean_se
from npair.table_notes import seeds_note, spread_notes


# ------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Cell:
    """One table cell: our mean ± standard error over ``n`` of ``expected`` seeds, and the paper's value."""

    mean: float | None
    se: float | None
    n: int
    expected: int
    paper: float | None = None
    runs: int = 0  # completed runs; runs > 0 with n == 0 means the metric does not apply to this row
    group_hash: str | None = None  # the row's runs' config hash without the seed (npair.identity)
    config_hashes: tuple[str, ...] = ()  # "<seed>:<config hash>" of each run aggregated

    @property
    def missing(self) -> bool:
        return self.n == 0

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


def bold_mask(cells: list[Cell], higher_is_better: bool = True) -> list[bool]:
    """The paper's rule: bold the best mean and every entry whose mean ± SE interval overlaps the best's.

    An entry without a standard error (one seed) is bold only when it is the best.
    """
    present = [c for c in cells if c.mean is not None]
    if not present:
        return [False] * len(cells)
    sign = 1.0 if higher_is_better else -1.0
    best = max(present, key=lambda c: sign * c.mean)
    best_lo, best_hi = best.mean - (best.se or 0.0), best.mean + (best.se or 0.0)
    out = []
    for c in cells:
        if c.mean is None:
            out.append(False)
        elif c is best:
            out.append(True)
        elif c.se is None or best.se is None:
            out.append(c.mean == best.mean)
        else:
            out.append(c.mean - c.se <= best_hi and c.mean + c.se >= best_lo)
    return out


# ------------------------------------------------------------------------------------ table specs
@dataclass
class Row:
    """One table row: an experiment config, optionally evaluated differently from how it was trained.

    ``evaluate_with`` lists config overrides (e.g. ``[dataset=glyphs_faces, eval=faces]``) under which the
    run's final checkpoint is evaluated again; the row then reports those metrics.
    """

    label: str
    experiment: str
    paper: dict[str, float] = field(default_factory=dict)
    evaluate_with: list[str] = field(default_factory=list)
    paper_se: dict[str, float] = field(default_factory=dict)
    select: dict[str, Any] | None = None  # a grid chosen on validation classes first (npair.selection)

    @property
    def eval_slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "+".join(self.evaluate_with))


@dataclass
class TableSpec:
    name: str
    title: str
    rows: list[Row]
    seeds: list[int]
    metrics: list[dict[str, Any]]
    scale: float = 100.0
    decimals: int = 2
    paper_source: str | None = None
    notes: str | None = None
    curves: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None  # how select: rows are selected (npair.selection.Settings)

    def run_dir(self, root: Path, row: Row, seed: int) -> Path:
        """Runs are keyed by experiment and seed, so tables that share an experiment share its runs."""
        return run_dir_of(root, row.experiment, seed)

    def result_path(self, root: Path, row: Row, seed: int) -> Path:
        """Where the row's metrics for one seed live: metrics.json, or a re-evaluation's JSON."""
        run_dir = self.run_dir(root, row, seed)
        if not row.evaluate_with:
            return run_dir / METRICS_FILE
        return run_dir / REEVAL_DIR / f"{row.eval_slug}.json"


def run_dir_of(root: Path, experiment: str, seed: int) -> Path:
    return root / "runs" / experiment / f"seed{seed}"


def table_names(name: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """Expand a name into the tables it stands for (``include:`` collections, ``all``)."""
    path = config_dir / "table" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (config_dir / "table").glob("*.yaml"))
        raise SystemExit(f"TABLE={name!r}: no {path}. Known tables: {', '.join(known)}")
    spec = OmegaConf.load(path)
    if "include" in spec:
        return [t for sub in spec.include for t in table_names(str(sub), config_dir)]
    return [name]


def load_spec(name: str, config_dir: Path = CONFIG_DIR) -> TableSpec:
    path = config_dir / "table" / f"{name}.yaml"
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    missing = [k for k in ("rows", "seeds", "metrics") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    rows = [
        Row(
            label=str(r["label"]),
            experiment=str(r["experiment"]),
            paper=dict(r.get("paper") or {}),
            evaluate_with=list(r.get("evaluate_with") or []),
            paper_se=dict(r.get("paper_se") or {}),
            select=r.get("select"),
        )
        for r in raw["rows"]
    ]
    metrics = [m if isinstance(m, dict) else {"key": m, "label": m} for m in raw["metrics"]]
    return TableSpec(
        name=str(raw.get("name", name)),
        title=str(raw.get("title", name)),
        rows=rows,
        seeds=[int(s) for s in raw["seeds"]],
        metrics=metrics,
        scale=float(raw.get("scale", 100.0)),
        decimals=int(raw.get("decimals", 2)),
        paper_source=raw.get("paper_source"),
        notes=raw.get("notes"),
        curves=raw.get("curves"),
        selection=raw.get("selection"),
    )


def compose_run(experiment: str, seed: int, overrides: list[str] = ()) -> DictConfig:
    """The training config of one run, exactly as ``npair.train`` composes it."""
    from npair.build import compose_train

    cfg = compose_train([f"experiment={experiment}", f"seed={seed}", *overrides])
    if cfg.name != experiment:
        raise ValueError(
            f"configs/experiment/{experiment}.yaml sets name={cfg.name!r}; it must equal the "
            f"experiment's path {experiment!r} (the run directory is keyed by it)"
        )
    return cfg


class NotChosen(LookupError):
    """The config of a ``select:`` row's run is not known yet: its value is not chosen (the reason says
    why)."""


class Composer:
    """``compose(experiment, seed)``: :func:`compose_run` with the build's overrides, plus, for a row with
    ``select:``, its chosen value (``chosen``: experiment -> ``[key=value]``, from the selection record on
    disk); composed once per experiment (the seed is set on a copy: interpolations of ``${seed}`` resolve to
    it as when composed with it). An experiment of ``not_chosen`` raises :class:`NotChosen` with its reason.
    """

    def __init__(
        self,
        overrides: list[str],
        chosen: dict[str, list[str]] | None = None,
        not_chosen: dict[str, str] | None = None,
    ) -> None:
        self.overrides = list(overrides)
        self.chosen = dict(chosen or {})
        self.not_chosen = dict(not_chosen or {})
        self._cache: dict[str, DictConfig] = {}

    def overrides_of(self, experiment: str) -> list[str]:
        """The overrides a run of ``experiment`` is trained with (the chosen value last)."""
        if experiment in self.not_chosen:
            raise NotChosen(f"value not chosen yet: {self.not_chosen[experiment]}")
        return [*self.overrides, *self.chosen.get(experiment, [])]

    def __call__(self, experiment: str, seed: int) -> DictConfig:
        if experiment not in self._cache:
            self._cache[experiment] = compose_run(experiment, seed, self.overrides_of(experiment))
        cfg = copy.deepcopy(self._cache[experiment])
        cfg.seed = int(seed)
        return cfg


def composer(
    overrides: list[str], chosen: dict[str, list[str]] | None = None, not_chosen: dict[str, str] | None = None
) -> Composer:
    """A :class:`Composer` of ``overrides`` (and the chosen values of selected rows)."""
    return Composer(overrides, chosen, not_chosen)


def table_composer(specs: list[TableSpec], root: Path, overrides: list[str]) -> Composer:
    """The :class:`Composer` of these tables now: their ``select:`` rows with the values chosen so far
    (npair.selection.chosen_values: a record of another grid, overrides or settings counts as not chosen)."""
    from npair.selection import chosen_values

    return composer(overrides, *chosen_values(specs, root, overrides))


# ------------------------------------------------------------------------------------ which runs
def check_run(experiment: str, seed: int, root: Path, compose: Composer) -> RunCheck:
    """:class:`RunCheck` of one run directory against ``compose(experiment, seed)``. A ``select:`` row whose
    value is not chosen yet: ``missing`` if the directory holds nothing, else ``unselected`` (which config it
    must hold is not known, so it is not reused)."""
    run_dir = run_dir_of(root, experiment, seed)
    try:
        expected = compose(experiment, seed)
    except NotChosen as err:
        held = (run_dir / CONFIG_FILE).exists() or (run_dir / METRICS_FILE).exists()
        stored_hash = identity.config_hash(stored) if (stored := identity.stored_config(run_dir)) else None
        return RunCheck(experiment, seed, run_dir, "unselected" if held else "missing", str(err), stored_hash)
    return check_dir(run_dir, expected, experiment, seed)


def check_runs(specs: list[TableSpec], root: Path, compose: Composer) -> list[RunCheck]:
    """Every run of the given tables, once each (tables share runs), in table order."""
    seen: dict[tuple[str, int], RunCheck] = {}
    for spec in specs:
        for row in spec.rows:
            for seed in spec.seeds:
                if (row.experiment, seed) not in seen:
                    seen[row.experiment, seed] = check_run(row.experiment, seed, root, compose)
    return list(seen.values())


@contextlib.contextmanager
def table_locks(specs: list[TableSpec], root: Path) -> Iterator[None]:
    """Hold the build lock of every given table (in name order), waiting for another build of one of them."""
    held: list[locks.Lock] = []
    try:
        for name in sorted({spec.name for spec in specs}):
            lock = locks.table_lock(root / "tables", name)
            lock.acquire(
                on_wait=lambda who, name=name: print(
                    f"another build of table {name} is running ({who}): waiting for it to finish", flush=True
                )
            )
            held.append(lock)
        yield
    finally:
        for lock in reversed(held):
            lock.release()


# ------------------------------------------------------------------------------------ running
def missing_runs(checks: list[RunCheck]) -> dict[str, list[int]]:
    """Experiment → seeds to train (``missing``), from :func:`check_runs`."""
    missing: dict[str, list[int]] = {}
    for check in checks:
        if check.state == "missing":
            missing.setdefault(check.experiment, []).append(check.seed)
    return missing


def busy_runs(missing: dict[str, list[int]], root: Path) -> dict[tuple[str, int], str]:
    """The runs of ``missing`` that another process is training now, and who."""
    busy = {}
    for experiment, seeds in missing.items():
        for seed in seeds:
            who = locks.holder(locks.run_lock(run_dir_of(root, experiment, seed)).path)
            if who is not None:
                busy[experiment, seed] = who
    return busy


def train_missing(
    specs: list[TableSpec], root: Path, overrides: list[str], jobs: int, compose: Composer, rerun_stale: bool
) -> None:
    """Train what the tables miss. A run another process is training is skipped, waited for, then looked
    at again (and trained here if it did not complete there); stale runs stop the build or, with
    ``rerun_stale``, are moved aside and trained again."""
    for attempt in range(2):
        checks = check_runs(specs, root, compose)
        bad = settle(checks, rerun_stale)
        missing = missing_runs(check_runs(specs, root, compose) if bad else checks)
        busy = busy_runs(missing, root) if attempt == 0 else {}
        for (experiment, seed), who in busy.items():
            print(
                f"{run_dir_of(root, experiment, seed)} is being trained by {who}: skipped here; this build "
                "waits for it before aggregating",
                flush=True,
            )
            missing[experiment].remove(seed)
        launch({e: seeds for e, seeds in missing.items() if seeds}, root, overrides, jobs, compose)
        if not busy:
            return
        for experiment, seed in busy:
            run_dir = run_dir_of(root, experiment, seed)
            with locks.locked(locks.run_lock(run_dir)):
                pass
            print(f"{run_dir}: the other process is done", flush=True)


def check_data(cfg: DictConfig) -> str | None:
    """A message when the dataset must be downloaded first, else None."""
    download = cfg.dataset.get("download")
    root = cfg.dataset.get("root")
    if download and root and not Path(str(root)).exists():
        return (
            f"dataset {cfg.dataset.name!r} not found at {root}.\n"
            f"  fetch it with:  make data DATASET={download}   "
            f"(or python -m npair.data.download {download} --root data)"
        )
    return None


def launch(
    missing: dict[str, list[int]],
    root: Path,
    overrides: list[str],
    jobs: int,
    compose: Composer | None = None,
) -> int:
    """Train the missing runs with Hydra multiruns (the joblib launcher, ``jobs`` at a time).

    Experiments missing the same seeds (and trained with the same overrides: a selected row's chosen value)
    form one sweep ``experiment=<a>,<b>,... seed=<seeds>``; each job writes
    ``<root>/runs/<experiment>/seed<k>/``. Every run's settings are checked (npair.guards) and its data
    looked for before anything starts. Returns the number of runs launched.
    """
    from npair.guards import SettingsError, validate_settings

    compose = compose or composer(overrides)
    problems, invalid = set(), []
    for experiment, seeds in missing.items():
        for seed in seeds:
            cfg = compose(experiment, seed)
            try:
                validate_settings(cfg)
            except SettingsError as err:
                invalid.append(f"{experiment} seed {seed}: {str(err).split(chr(10), 1)[1].strip()}")
            if problem := check_data(cfg):
                problems.add(problem)
    if invalid:
        raise SystemExit("stopped before training: settings out of range.\n" + "\n".join(invalid))
    if problems:
        raise SystemExit("stopped before training: data is missing.\n" + "\n".join(sorted(problems)))
    groups: dict[tuple[tuple[int, ...], tuple[str, ...]], list[str]] = {}  # (seeds, overrides) -> experiments
    for experiment, seeds in missing.items():
        groups.setdefault((tuple(sorted(seeds)), tuple(compose.overrides_of(experiment))), []).append(
            experiment
        )
    launched = 0
    for (seeds, run_overrides), experiments in groups.items():
        n = len(seeds) * len(experiments)
        launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 and n > 1 else []
        cmd = [
            sys.executable,
            "-m",
            "npair.train",
            "-m",
            *launcher,
            f"experiment={','.join(experiments)}",
            f"seed={','.join(map(str, seeds))}",
            f"hydra.sweep.dir={root / 'runs'}",
            "hydra.sweep.subdir=${name}/seed${seed}",
            *run_overrides,
        ]
        print(f"training {plural(n, 'run')}: {', '.join(experiments)} × seeds {list(seeds)}", flush=True)
        result = subprocess.run(cmd, check=False)
        if result.returncode != 0:
            raise SystemExit(f"training failed (exit {result.returncode}); command:\n  {' '.join(cmd)}")
        launched += n
    return launched


def evaluate_again(root: Path, row: Row, seed: int, overrides: list[str]) -> None:
    """Evaluate a completed run's final checkpoint under ``row.evaluate_with``; writes eval/<slug>.json.

    The model is rebuilt from the config the table composes (which the run's own config matches,
    :func:`check_runs`), never from the run directory's: only the checkpoint's weights are read."""
    import torch

    from npair.build import evaluate_model, load_run, make
    from npair.runio import atomic_write_json

    run_dir = run_dir_of(root, row.experiment, seed)
    cfg = compose_run(row.experiment, seed, [*overrides, *row.evaluate_with])
    run = load_run(run_dir, cfg=cfg)
    evaluator = make(cfg.eval)
    metrics = evaluate_model(run.model, run.loss_fn, run.splits, evaluator, cfg, torch.device("cpu"))
    atomic_write_json(
        run_dir / REEVAL_DIR / f"{row.eval_slug}.json",
        {
            "status": "completed",
            "evaluate_with": row.evaluate_with,
            "step": run.step,
            "run_config_hash": (read_metrics(run_dir) or {}).get("config_hash"),
            "similarity": getattr(evaluator, "similarity", None),
            "final": metrics,
        },
    )


def evaluate_missing(specs: list[TableSpec], root: Path, compose: Composer) -> None:
    """Re-evaluate each completed run a row's ``evaluate_with`` needs, once even when tables share the row."""
    todo: dict[Path, tuple[Row, int]] = {}
    for spec in specs:
        for row in spec.rows:
            for seed in spec.seeds if row.evaluate_with else []:
                result = spec.result_path(root, row, seed)
                if is_complete(spec.run_dir(root, row, seed)) and not result.exists():
                    todo.setdefault(result, (row, seed))
    for row, seed in tqdm(todo.values(), desc="evaluating again", unit="run", disable=not todo):
        evaluate_again(root, row, seed, compose.overrides_of(row.experiment))


def dry_run(specs: list[TableSpec], root: Path, compose: Composer) -> str:
    """Print every run, its state (:class:`RunCheck`: done, missing, stale, unverified, unselected) and
    resolved config, the selection runs of ``select:`` rows first (npair.selection); return (and print) the
    summary."""
    from npair.selection import selection_checks

    selection: dict[Path, str] = {}  # selection run directory -> done, missing, stale, unverified
    for check in selection_checks(specs, root, compose.overrides):
        state = selection[check.run_dir] = "done" if check.usable else check.state
        print(f"--- selection {check.experiment} / seed {check.seed} [{state}] -> {check.run_dir}")
        if check.reason:
            print(f"    {check.reason}")
    runs: dict[tuple[str, int], str] = {}  # (experiment, seed) -> done, missing, stale, ...; counted once
    not_chosen: set[tuple[str, int]] = set()  # runs of select: rows whose value is not chosen yet
    reevaluations: set[tuple[str, int, str]] = set()  # (experiment, seed, evaluation), counted once
    data_missing: set[str] = set()
    for spec in specs:
        for row in spec.rows:
            for seed in spec.seeds:
                check = check_run(row.experiment, seed, root, compose)
                state = runs[(row.experiment, seed)] = "done" if check.usable else check.state
                try:
                    cfg, chosen = compose(row.experiment, seed), compose.chosen.get(row.experiment)
                except NotChosen:  # the row's config less the value its selection will choose
                    cfg, chosen = compose_run(row.experiment, seed, compose.overrides), None
                    not_chosen.add((row.experiment, seed))
                if row.evaluate_with:
                    reevaluations.add((row.experiment, seed, row.eval_slug))
                if state != "done" and (problem := check_data(cfg)):
                    data_missing.add(problem)
                extra = f" then evaluated with {row.evaluate_with}" if row.evaluate_with else ""
                if row.select:
                    extra += (
                        f" with {', '.join(chosen)} (chosen on validation classes)"
                        if chosen
                        else f" with {dict(row.select).get('key', 'its selected key')}: value not chosen yet"
                    )
                print(f"--- {spec.name} / {row.label} / seed {seed} [{state}] -> {check.run_dir}{extra}")
                if check.reason:
                    print(f"    {check.reason}")
                print(OmegaConf.to_yaml(cfg, resolve=True))
    summary = dry_run_summary(
        specs, runs, len(reevaluations), sorted(data_missing), selection, len(not_chosen)
    )
    print(summary)
    return summary


def dry_run_summary(
    specs: list[TableSpec],
    runs: dict[tuple[str, int], str],
    reevaluations: int,
    data_missing: list[str],
    selection: dict[Path, str] | None = None,
    not_chosen: int = 0,
) -> str:
    """The last lines of a dry run: tables, distinct runs (done / to train, and how many of those hold another
    config or an unverified result, or wait for a value not chosen yet), the selection runs of ``select:``
    rows (done / to train), re-evaluations, missing data."""
    states = list(runs.values())
    done = states.count("done")
    blocked = sum(states.count(state) for state in ("stale", "unverified"))
    lines = [
        f"=== dry run: {plural(len(specs), 'table')} ({', '.join(s.name for s in specs)}), "
        f"{plural(len(runs), 'distinct run')}: {done} done, {len(runs) - done} to train; "
        f"{plural(reevaluations, 're-evaluation')} of trained runs"
    ]
    if selection:
        picked = list(selection.values())
        blocked += sum(picked.count(state) for state in ("stale", "unverified"))
        lines.append(
            f"{plural(len(picked), 'selection run')} (validation classes) of the select: rows: "
            f"{picked.count('done')} done, {len(picked) - picked.count('done')} to train"
        )
    if not_chosen:
        lines.append(
            f"{not_chosen} of the runs are final runs of select: rows whose value is not chosen "
            "yet: the build chooses it first (a completed one is reused only if it holds that value)"
        )
    if blocked:
        lines.append(
            f"{blocked} of the runs to train hold another config or an unverified result: the build "
            "stops on them unless --rerun-stale moves them aside"
        )
    if data_missing:
        lines.append(
            f"{plural(len(data_missing), 'dataset')} missing for the runs to train "
            "(training would stop before it starts):"
        )
        lines += ["  " + problem.replace("\n", "\n  ") for problem in data_missing]
    else:
        lines.append("no dataset missing for the runs to train")
    return "\n".join(lines)


def plural(count: int, noun: str) -> str:
    """``1 table``, ``2 tables``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


# ------------------------------------------------------------------------------------ aggregation
Lookup = Callable[[Row, int], "dict[str, Any] | None"]


def local_lookup(spec: TableSpec, root: Path) -> Lookup:
    """Results from run directories: metrics.json, or a re-evaluation's JSON for ``evaluate_with`` rows, each
    with its run's ``config_hash`` and ``group_hash``. A completed run whose metrics.json does not belong to
    its config.yaml is refused (npair.identity.record_problem), naming it."""

    def lookup(row: Row, seed: int) -> dict[str, Any] | None:
        run_dir, path = spec.run_dir(root, row, seed), spec.result_path(root, row, seed)
        if not path.exists():
            return None
        result = json.loads(path.read_text())
        if result.get("status") != "completed":
            return result
        record = read_metrics(run_dir) or {}
        if problem := identity.record_problem(run_dir, record):
            raise ValueError(
                f"{run_dir} is not aggregated: {problem}. Train it again (python -m "
                "npair.tables ... --rerun-stale moves it aside)"
            )
        group = identity.run_group_hash(run_dir)
        return {**result, "config_hash": record["config_hash"], "group_hash": group}

    return lookup


def wandb_lookup(project: str, entity: str | None = None, compose: Composer | None = None) -> Lookup:
    """Results from a W&B project (runs grouped by experiment name); re-evaluated rows are not on W&B. With
    ``compose``, only runs of the config it composes count (by config hash: the current hash, or the
    version-1 hash of runs logged before it)."""
    from npair.wandb_source import fetch_records, select_record

    records = fetch_records(project, entity=entity)

    def lookup(row: Row, seed: int) -> dict[str, Any] | None:
        if row.evaluate_with:
            return None
        expected = None
        if compose is not None:
            try:
                cfg = compose(row.experiment, seed)
            except NotChosen:
                return None  # which config the row's runs hold is not known yet
            expected = {identity.config_hash(cfg), identity.legacy_config_hash(cfg)}
        return select_record(records, name=row.experiment, seed=seed, config_hash=expected)

    return lookup


def collect(spec: TableSpec, root: Path, lookup: Lookup | None = None) -> dict[str, dict[str, Cell]]:
    """Cells per row label and metric key, from the completed runs' final metrics (scaled)."""
    lookup = lookup or local_lookup(spec, root)
    table: dict[str, dict[str, Cell]] = {}
    for row in spec.rows:
        finals, hashes, groups = [], [], {}
        for seed in spec.seeds:
            metrics = lookup(row, seed)
            if metrics and metrics.get("status") == "completed":
                finals.append(metrics.get("final", {}))
                hashes.append(f"{seed}:{metrics.get('config_hash') or '?'}")
                groups[seed] = metrics.get("group_hash")
        group = one_group(spec, row, groups)
        table[row.label] = {}
        for metric in spec.metrics:
            key = metric["key"]
            found = [
                read_metric(f, key) for f in finals
            ]  # current or legacy key names (npair.evaluation.keys)
            values = [float(v) * spec.scale for v in found if v is not None]
            mean, se = mean_se(values)
            paper = row.paper.get(key)
            table[row.label][key] = Cell(
                mean,
                se,
                len(values),
                len(spec.seeds),
                None if paper is None else float(paper),
                runs=len(finals),
                group_hash=group,
                config_hashes=tuple(hashes),
            )
    return table


def one_group(spec: TableSpec, row: Row, groups: dict[int, str | None]) -> str | None:
    """The group hash shared by a row's runs (npair.identity.group_hash); mixing configurations is an error
    naming each seed's hash (None when no run records one)."""
    known = {seed: g for seed, g in groups.items() if g}
    if len(set(known.values())) > 1:
        named = ", ".join(f"seed {seed}: {g}" for seed, g in known.items())
        raise ValueError(
            f"table {spec.name}, row {row.label!r} ({row.experiment}): its runs are different "
            f"configurations, not seeds of one ({named}); train them with one config"
        )
    return next(iter(known.values()), None)


def bold_masks(spec: TableSpec, table: dict[str, dict[str, Cell]]) -> dict[str, list[bool]]:
    """Per metric, which rows are bold (``bold: false`` on a metric turns bolding off for it)."""
    out = {}
    for metric in spec.metrics:
        cells = [table[r.label][metric["key"]] for r in spec.rows]
        out[metric["key"]] = (
            bold_mask(cells, metric.get("higher_is_better", True))
            if metric.get("bold", True)
            else [False] * len(cells)
        )
    return out


def _fmt(value: float | None, decimals: int) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


def cell_text(cell: Cell, decimals: int) -> str:
    if cell.missing:
        return "n/a" if cell.runs else f"missing (0/{cell.expected})"
    text = _fmt(cell.mean, decimals) + (f" ± {_fmt(cell.se, decimals)}" if cell.se is not None else "")
    if cell.n < cell.expected:
        text += f" ({cell.n}/{cell.expected} seeds)"
    return text


def to_markdown(spec: TableSpec, table: dict[str, dict[str, Cell]]) -> str:
    keys = [m["key"] for m in spec.metrics]
    labels = [m.get("label", m["key"]) for m in spec.metrics]
    bold = bold_masks(spec, table)
    has_paper = any(r.paper for r in spec.rows)
    out = io.StringIO()
    out.write(f"### {spec.title}\n\n")
    out.write("| method | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels) + "\n")
    for i, row in enumerate(spec.rows):
        cells = []
        for k in keys:
            text = cell_text(table[row.label][k], spec.decimals)
            cells.append(f"**{text}**" if bold[k][i] else text)
        out.write(f"| {row.label} | " + " | ".join(cells) + " |\n")
        if has_paper:
            paper = [
                _fmt(table[row.label][k].paper, spec.decimals)
                + (f" ± {row.paper_se[k]:.{spec.decimals}f}" if k in row.paper_se else "")
                for k in keys
            ]
            diff = [
                (
                    "—"
                    if table[row.label][k].diff is None
                    else f"{table[row.label][k].diff:+.{spec.decimals}f}"
                )
                for k in keys
            ]
            out.write("| ↳ paper | " + " | ".join(paper) + " |\n")
            out.write("| ↳ ours − paper | " + " | ".join(diff) + " |\n")
    out.write(
        f"\n{seeds_note(spec.seeds)}; bold: the best and those whose ±SE interval overlaps it "
        "(the paper's rule)."
    )
    for note in footer_notes(spec):
        out.write(f" {note}.")
    if has_paper and spec.paper_source:
        out.write(f" Paper numbers: {spec.paper_source}.")
    if spec.notes:
        out.write(f" {spec.notes.strip()}")
    out.write(f"\n\n{hash_footer(spec, table)}\n")
    return out.getvalue()


def footer_notes(spec: TableSpec) -> list[str]:
    """What the within-run spreads of the table's columns and the paper's ``±`` are (npair.table_notes)."""
    return spread_notes(spec.metrics, has_paper_se=any(row.paper_se for row in spec.rows))


def hash_footer(spec: TableSpec, table: dict[str, dict[str, Cell]]) -> str:
    """One line naming each row's config hash (the runs' ``group_hash``: their config without the seed)."""
    parts = []
    for row in spec.rows:
        cell = next(iter(table[row.label].values()), None)
        parts.append(f"{row.label} `{cell.group_hash if cell and cell.group_hash else '—'}`")
    return "Config hashes (seed excluded; `group_hash` in each run's metrics.json): " + ", ".join(parts) + "."


def to_csv(spec: TableSpec, table: dict[str, dict[str, Cell]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "table",
            "method",
            "metric",
            "mean",
            "se",
            "n_seeds",
            "expected_seeds",
            "paper",
            "diff",
            "completed_runs",
            "metric_label",
            "group_hash",
            "config_hashes",
            "se_over",
            "value_is_se_over",
            "within_run_spread",
        ]
    )
    for row in spec.rows:
        for metric in spec.metrics:
            key = metric["key"]
            c = table[row.label][key]
            over = within_run_spread(key)
            writer.writerow(
                [
                    spec.name,
                    row.label,
                    key,
                    c.mean,
                    c.se,
                    c.n,
                    c.expected,
                    c.paper,
                    c.diff,
                    c.runs,
                    metric.get("label", key),
                    c.group_hash or "",
                    " ".join(c.config_hashes),
                    "training_seeds",
                    (spread_of(key) or ("", ""))[1],
                    spread_key(key, over) if over else "",
                ]
            )
    return out.getvalue()


def to_latex(spec: TableSpec, table: dict[str, dict[str, Cell]]) -> str:
    keys = [m["key"] for m in spec.metrics]
    bold = bold_masks(spec, table)
    lines = [
        r"\begin{tabular}{l" + "c" * len(keys) + "}",
        r"\toprule",
        "Method & " + " & ".join(m.get("label", m["key"]).replace("%", r"\%") for m in spec.metrics) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(spec.rows):
        cells = []
        for k in keys:
            c = table[row.label][k]
            text = (
                "--"
                if c.missing
                else _fmt(c.mean, spec.decimals)
                + (f" $\\pm$ {_fmt(c.se, spec.decimals)}" if c.se is not None else "")
            )
            cells.append(f"\\textbf{{{text}}}" if bold[k][i] else text)
        lines.append(row.label.replace("_", r"\_") + " & " + " & ".join(cells) + r" \\")
    notes = [f"{seeds_note(spec.seeds)}.", *(f"{note}." for note in footer_notes(spec))]
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        *(f"% {note}" for note in notes),
        "% " + hash_footer(spec, table),
        "",
    ]
    return "\n".join(lines)


def write_table(spec: TableSpec, root: Path, lookup: Lookup | None = None) -> dict[str, Path]:
    """Write ``<root>/tables/<name>.{md,csv,tex}`` and the table's figures under ``<root>/figures``."""
    from npair.plots import table_figures, training_curves
    from npair.selection import selection_report

    table = collect(spec, root, lookup)
    out_dir = root / "tables"
    paths = {ext: out_dir / f"{spec.name}.{ext}" for ext in ("md", "csv", "tex")}
    selected_md, selected_csv = selection_report(spec, root, spec.decimals)
    atomic_write_text(paths["md"], to_markdown(spec, table) + selected_md)
    if selected_csv:
        paths["selection"] = out_dir / f"{spec.name}_selection.csv"
        atomic_write_text(paths["selection"], selected_csv)
    atomic_write_text(paths["csv"], to_csv(spec, table))
    atomic_write_text(paths["tex"], to_latex(spec, table))
    for i, figure in enumerate(table_figures(paths["csv"], root / "figures")):
        paths[f"figure{i}"] = figure
    if spec.curves:
        runs = {
            label: [d for seed in spec.seeds if is_complete(d := spec.run_dir(root, by_label[label], seed))]
            for by_label in [{r.label: r for r in spec.rows}]
            for label in spec.curves["rows"]
        }
        if all(runs.values()):  # training_curves refuses runs of different configs under one label
            paths["curves"] = training_curves(
                runs, root / "figures" / f"{spec.name}_curves.png", title=spec.curves.get("title", "")
            )
    return paths


# ------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m npair.tables",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("assignments", nargs="*", help="TABLE=<name> and extra training overrides key=value")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the runs and their resolved configs; run nothing"
    )
    parser.add_argument("--no-train", action="store_true", help="aggregate existing runs only")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained at once (default: 1 with a GPU, else 2 or the number of CPU cores if fewer)",
    )
    parser.add_argument(
        "--seeds", default=None, help="comma-separated seeds replacing the tables' own (quick checks)"
    )
    add_run_dir_options(parser)
    add_debug_option(parser)
    args = parser.parse_intermixed_args(argv)  # assignments may come before, between or after the options
    args.table, args.source, args.project, args.entity, args.overrides = "mini", "local", None, None, []
    for item in args.assignments:
        key, _, value = item.partition("=")
        if key in ("TABLE", "source", "project", "entity"):
            setattr(args, key.lower(), value)
        else:
            args.overrides.append(item)
    if args.source not in ("local", "wandb"):
        parser.error(
            f"source={args.source!r}: use source=local (run directories) or source=wandb project=<name>"
        )
    if args.source == "wandb" and not args.project:
        parser.error("source=wandb needs project=<W&B project> (and entity=<team> if not your default)")
    if args.rerun_stale and args.no_train:
        parser.error("--rerun-stale trains the stale runs again: it cannot go with --no-train")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.debug:  # the training runs it starts show their tracebacks too
        os.environ[DEBUG_ENV] = "1"
    root = Path(args.outputs or Path(os.environ.get("NPAIR_ROOT", ".")) / "outputs").resolve()
    specs = [load_spec(name) for name in table_names(args.table)]
    if args.seeds:
        for spec in specs:
            spec.seeds = [int(seed) for seed in args.seeds.split(",")]
    compose = table_composer(specs, root, args.overrides)  # select: rows with the values chosen so far
    if args.dry_run:
        dry_run(specs, root, compose)
        return
    start = time.time()
    if args.source == "wandb":  # aggregate a W&B project: nothing is trained
        for spec in specs:
            paths = write_table(spec, root, wandb_lookup(args.project, args.entity, compose))
            print(paths["md"].read_text())
        return
    if args.jobs is None:
        import torch

        args.jobs = 1 if torch.cuda.is_available() else min(2, os.cpu_count() or 1)
    with table_locks(specs, root):
        if args.no_train:
            bad = [c for c in check_runs(specs, root, compose) if c.state in BLOCKING]
            if bad:
                raise SystemExit(stale_message(bad))
        else:
            from npair.selection import select_and_train

            # rows with select: choose, then train their final runs with the chosen value
            select_and_train(specs, root, args.overrides, args.jobs, args.rerun_stale)
            compose = table_composer(specs, root, args.overrides)  # the values just chosen
            train_missing(specs, root, args.overrides, args.jobs, compose, args.rerun_stale)
            evaluate_missing(specs, root, compose)
        for spec in specs:
            paths = write_table(spec, root)
            print(paths["md"].read_text())
            print("wrote " + ", ".join(str(p) for p in paths.values()) + "\n")
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
