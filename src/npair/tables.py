"""Tables: run what is missing, aggregate run directories, write them next to the paper's numbers.

    python -m npair.tables TABLE=mini                 # the default of `make reproduce-table`
    python -m npair.tables TABLE=mini_table2 --dry-run # its runs and their resolved configs; runs nothing
    python -m npair.tables TABLE=mini --no-train      # aggregate only
    python -m npair.tables TABLE=smoke --jobs 1 trainer.max_steps=20   # overrides go to every run trained
    python -m npair.tables TABLE=mini source=wandb project=npair       # aggregate a W&B project

A table spec (``configs/table/<name>.yaml``) lists rows (an experiment config each), seeds and metrics,
the paper's reference numbers and the bolding rule; or ``include:`` a list of other tables. Runs live in
``outputs/runs/<experiment>/seed<k>/``; a run whose ``metrics.json`` says ``completed`` is never re-run.
Each table is written to ``outputs/tables/<name>.{md,csv,tex}``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from npair.configuration import CONFIG_DIR
from npair.errors import DEBUG_ENV, add_debug_option, run_cli
from npair.runio import METRICS_FILE, REEVAL_DIR, atomic_write_text, is_complete
from npair.stats import mean_se


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
    rows = [Row(label=str(r["label"]), experiment=str(r["experiment"]), paper=dict(r.get("paper") or {}),
                evaluate_with=list(r.get("evaluate_with") or []), paper_se=dict(r.get("paper_se") or {}),
                select=r.get("select"))
            for r in raw["rows"]]
    metrics = [m if isinstance(m, dict) else {"key": m, "label": m} for m in raw["metrics"]]
    return TableSpec(name=str(raw.get("name", name)), title=str(raw.get("title", name)), rows=rows,
                     seeds=[int(s) for s in raw["seeds"]], metrics=metrics,
                     scale=float(raw.get("scale", 100.0)), decimals=int(raw.get("decimals", 2)),
                     paper_source=raw.get("paper_source"), notes=raw.get("notes"), curves=raw.get("curves"),
                     selection=raw.get("selection"))


def compose_run(experiment: str, seed: int, overrides: list[str] = ()) -> DictConfig:
    """The training config of one run, exactly as ``npair.train`` composes it."""
    from npair.build import compose_train

    cfg = compose_train([f"experiment={experiment}", f"seed={seed}", *overrides])
    if cfg.name != experiment:
        raise ValueError(f"configs/experiment/{experiment}.yaml sets name={cfg.name!r}; it must equal the "
                         f"experiment's path {experiment!r} (the run directory is keyed by it)")
    return cfg


# ------------------------------------------------------------------------------------ running
def missing_runs(specs: list[TableSpec], root: Path) -> dict[str, list[int]]:
    """Experiment → seeds without a completed run, over all the given tables (shared runs counted once)."""
    missing: dict[str, list[int]] = {}
    for spec in specs:
        for row in spec.rows:
            for seed in spec.seeds:
                if not is_complete(run_dir_of(root, row.experiment, seed)):
                    seeds = missing.setdefault(row.experiment, [])
                    if seed not in seeds:
                        seeds.append(seed)
    return missing


def check_data(cfg: DictConfig) -> str | None:
    """A message when the dataset must be downloaded first, else None."""
    download = cfg.dataset.get("download")
    root = cfg.dataset.get("root")
    if download and root and not Path(str(root)).exists():
        return (f"dataset {cfg.dataset.name!r} not found at {root}.\n"
                f"  fetch it with:  make data DATASET={download}   (or python -m npair.data.download {download} --root data)")
    return None


def launch(missing: dict[str, list[int]], root: Path, overrides: list[str], jobs: int) -> int:
    """Train the missing runs with Hydra multiruns (the joblib launcher, ``jobs`` at a time).

    Experiments missing the same seeds form one sweep ``experiment=<a>,<b>,... seed=<seeds>``; each job writes
    ``<root>/runs/<experiment>/seed<k>/``. Returns the number of runs launched.
    """
    problems = {problem for experiment, seeds in missing.items()
                if (problem := check_data(compose_run(experiment, seeds[0], overrides)))}
    if problems:
        raise SystemExit("stopped before training: data is missing.\n" + "\n".join(sorted(problems)))
    groups: dict[tuple[int, ...], list[str]] = {}
    for experiment, seeds in missing.items():
        groups.setdefault(tuple(sorted(seeds)), []).append(experiment)
    launched = 0
    for seeds, experiments in groups.items():
        n = len(seeds) * len(experiments)
        launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 and n > 1 else []
        cmd = [sys.executable, "-m", "npair.train", "-m", *launcher, f"experiment={','.join(experiments)}",
               f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={root / 'runs'}",
               "hydra.sweep.subdir=${name}/seed${seed}", *overrides]
        print(f"training {plural(n, 'run')}: {', '.join(experiments)} × seeds {list(seeds)}", flush=True)
        result = subprocess.run(cmd)
        if result.returncode != 0:
            raise SystemExit(f"training failed (exit {result.returncode}); command:\n  {' '.join(cmd)}")
        launched += n
    return launched


def evaluate_again(root: Path, row: Row, seed: int, overrides: list[str]) -> None:
    """Evaluate a completed run's final checkpoint under ``row.evaluate_with``; writes eval/<slug>.json."""
    import torch

    from npair.build import evaluate_model, load_run, make
    from npair.runio import atomic_write_json

    run_dir = run_dir_of(root, row.experiment, seed)
    cfg = compose_run(row.experiment, seed, [*overrides, *row.evaluate_with])
    run = load_run(run_dir, cfg=cfg)
    evaluator = make(cfg.eval)
    metrics = evaluate_model(run.model, run.loss_fn, run.splits, evaluator, cfg, torch.device("cpu"))
    atomic_write_json(run_dir / REEVAL_DIR / f"{row.eval_slug}.json", {
        "status": "completed", "evaluate_with": row.evaluate_with, "step": run.step,
        "similarity": getattr(evaluator, "similarity", None), "final": metrics})


def evaluate_missing(specs: list[TableSpec], root: Path, overrides: list[str]) -> None:
    todo = [(spec, row, seed) for spec in specs for row in spec.rows if row.evaluate_with for seed in spec.seeds
            if is_complete(spec.run_dir(root, row, seed)) and not spec.result_path(root, row, seed).exists()]
    for spec, row, seed in tqdm(todo, desc="evaluating again", unit="run", disable=not todo):
        evaluate_again(root, row, seed, overrides)


def dry_run(specs: list[TableSpec], root: Path, overrides: list[str]) -> str:
    """Print every run of the tables with its state and resolved config; return (and print) the summary."""
    runs: dict[tuple[str, int], bool] = {}  # (experiment, seed) -> completed; shared runs counted once
    reevaluations: set[tuple[str, int, str]] = set()  # (experiment, seed, evaluation), counted once
    data_missing: set[str] = set()
    for spec in specs:
        for row in spec.rows:
            for seed in spec.seeds:
                cfg = compose_run(row.experiment, seed, overrides)
                done = runs[(row.experiment, seed)] = is_complete(spec.run_dir(root, row, seed))
                if row.evaluate_with:
                    reevaluations.add((row.experiment, seed, row.eval_slug))
                if not done and (problem := check_data(cfg)):
                    data_missing.add(problem)
                extra = f" then evaluated with {row.evaluate_with}" if row.evaluate_with else ""
                print(f"--- {spec.name} / {row.label} / seed {seed} [{'done' if done else 'missing'}] -> "
                      f"{spec.run_dir(root, row, seed)}{extra}")
                print(OmegaConf.to_yaml(cfg, resolve=True))
    summary = dry_run_summary(specs, runs, len(reevaluations), sorted(data_missing))
    print(summary)
    return summary


def dry_run_summary(specs: list[TableSpec], runs: dict[tuple[str, int], bool], reevaluations: int,
                    data_missing: list[str]) -> str:
    """The last lines of a dry run: tables, distinct runs (done / to train), re-evaluations, missing data."""
    done = sum(runs.values())
    lines = [f"=== dry run: {plural(len(specs), 'table')} ({', '.join(s.name for s in specs)}), "
             f"{plural(len(runs), 'distinct run')}: {done} done, {len(runs) - done} to train; "
             f"{plural(reevaluations, 're-evaluation')} of trained runs"]
    if data_missing:
        lines.append(f"{plural(len(data_missing), 'dataset')} missing for the runs to train "
                     "(training would stop before it starts):")
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
    """Results from run directories: metrics.json, or a re-evaluation's JSON for ``evaluate_with`` rows."""

    def lookup(row: Row, seed: int) -> dict[str, Any] | None:
        path = spec.result_path(root, row, seed)
        return json.loads(path.read_text()) if path.exists() else None

    return lookup


def wandb_lookup(project: str, entity: str | None = None) -> Lookup:
    """Results from a W&B project (runs grouped by experiment name); re-evaluated rows are not on W&B."""
    from npair.wandb_source import fetch_records, select_record

    records = fetch_records(project, entity=entity)

    def lookup(row: Row, seed: int) -> dict[str, Any] | None:
        return None if row.evaluate_with else select_record(records, name=row.experiment, seed=seed)

    return lookup


def collect(spec: TableSpec, root: Path, lookup: Lookup | None = None) -> dict[str, dict[str, Cell]]:
    """Cells per row label and metric key, from the completed runs' final metrics (scaled)."""
    lookup = lookup or local_lookup(spec, root)
    table: dict[str, dict[str, Cell]] = {}
    for row in spec.rows:
        finals = []
        for seed in spec.seeds:
            metrics = lookup(row, seed)
            if metrics and metrics.get("status") == "completed":
                finals.append(metrics.get("final", {}))
        table[row.label] = {}
        for metric in spec.metrics:
            key = metric["key"]
            values = [float(f[key]) * spec.scale for f in finals if f.get(key) is not None]
            mean, se = mean_se(values)
            paper = row.paper.get(key)
            table[row.label][key] = Cell(mean, se, len(values), len(spec.seeds), None if paper is None else float(paper),
                                         runs=len(finals))
    return table


def bold_masks(spec: TableSpec, table: dict[str, dict[str, Cell]]) -> dict[str, list[bool]]:
    """Per metric, which rows are bold (``bold: false`` on a metric turns bolding off for it)."""
    out = {}
    for metric in spec.metrics:
        cells = [table[r.label][metric["key"]] for r in spec.rows]
        out[metric["key"]] = (bold_mask(cells, metric.get("higher_is_better", True)) if metric.get("bold", True)
                              else [False] * len(cells))
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
            paper = [_fmt(table[row.label][k].paper, spec.decimals)
                     + (f" ± {row.paper_se[k]:.{spec.decimals}f}" if k in row.paper_se else "") for k in keys]
            diff = [("—" if table[row.label][k].diff is None else f"{table[row.label][k].diff:+.{spec.decimals}f}")
                    for k in keys]
            out.write("| ↳ paper | " + " | ".join(paper) + " |\n")
            out.write("| ↳ ours − paper | " + " | ".join(diff) + " |\n")
    out.write(f"\nMean ± standard error over seeds {spec.seeds}; bold: the best and those whose ±SE interval "
              "overlaps it (the paper's rule).")
    if has_paper and spec.paper_source:
        out.write(f" Paper numbers: {spec.paper_source}.")
    if spec.notes:
        out.write(f" {spec.notes.strip()}")
    out.write("\n")
    return out.getvalue()


def to_csv(spec: TableSpec, table: dict[str, dict[str, Cell]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["table", "method", "metric", "mean", "se", "n_seeds", "expected_seeds", "paper", "diff",
                     "completed_runs", "metric_label"])
    for row in spec.rows:
        for metric in spec.metrics:
            c = table[row.label][metric["key"]]
            writer.writerow([spec.name, row.label, metric["key"], c.mean, c.se, c.n, c.expected, c.paper, c.diff,
                             c.runs, metric.get("label", metric["key"])])
    return out.getvalue()


def to_latex(spec: TableSpec, table: dict[str, dict[str, Cell]]) -> str:
    keys = [m["key"] for m in spec.metrics]
    bold = bold_masks(spec, table)
    lines = [r"\begin{tabular}{l" + "c" * len(keys) + "}", r"\toprule",
             "Method & " + " & ".join(m.get("label", m["key"]).replace("%", r"\%") for m in spec.metrics) + r" \\",
             r"\midrule"]
    for i, row in enumerate(spec.rows):
        cells = []
        for k in keys:
            c = table[row.label][k]
            text = "--" if c.missing else _fmt(c.mean, spec.decimals) + (
                f" $\\pm$ {_fmt(c.se, spec.decimals)}" if c.se is not None else "")
            cells.append(f"\\textbf{{{text}}}" if bold[k][i] else text)
        lines.append(row.label.replace("_", r"\_") + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
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
        runs = {label: [d for seed in spec.seeds if is_complete(d := spec.run_dir(root, by_label[label], seed))]
                for by_label in [{r.label: r for r in spec.rows}] for label in spec.curves["rows"]}
        if all(runs.values()):
            paths["curves"] = training_curves(runs, root / "figures" / f"{spec.name}_curves.png",
                                              title=spec.curves.get("title", ""))
    return paths


# ------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m npair.tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("assignments", nargs="*", help="TABLE=<name> and extra training overrides key=value")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their resolved configs; run nothing")
    parser.add_argument("--no-train", action="store_true", help="aggregate existing runs only")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained at once (default: 1 with a GPU, else 2 or the number of CPU cores if fewer)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds replacing the tables' own (quick checks)")
    parser.add_argument("--outputs", default=None, help="outputs directory (default: $NPAIR_ROOT/outputs or ./outputs)")
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
        parser.error(f"source={args.source!r}: use source=local (run directories) or source=wandb project=<name>")
    if args.source == "wandb" and not args.project:
        parser.error("source=wandb needs project=<W&B project> (and entity=<team> if not your default)")
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
    if args.dry_run:
        dry_run(specs, root, args.overrides)
        return
    start = time.time()
    if args.source == "wandb":  # aggregate a W&B project: nothing is trained
        for spec in specs:
            paths = write_table(spec, root, wandb_lookup(args.project, args.entity))
            print(paths["md"].read_text())
        return
    if args.jobs is None:
        import torch

        args.jobs = 1 if torch.cuda.is_available() else min(2, os.cpu_count() or 1)
    if not args.no_train:
        from npair.selection import select_and_train

        select_and_train(specs, root, args.overrides, args.jobs)  # rows with select: choose, then train
        launch(missing_runs(specs, root), root, args.overrides, args.jobs)
        evaluate_missing(specs, root, args.overrides)
    for spec in specs:
        paths = write_table(spec, root)
        print(paths["md"].read_text())
        print("wrote " + ", ".join(str(p) for p in paths.values()) + "\n")
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
