"""Choose one hyperparameter on validation classes carved from the training classes, then train the final
runs with the chosen value (the command line of :mod:`npair.selection`, which says how).

    python -m npair.select --grid loss.temperature=0.03,0.05,0.1,0.2 loss=npair_mc_cosine \\
        dataset=folder dataset.root=/path/to/tree
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npair import selection
from npair.errors import add_debug_option, run_cli
from npair.run_checks import add_run_dir_options, settle
from npair.selection import (
    SELECTION_FILE,
    Grid,
    Selection,
    Settings,
    Task,
    final_sweep,
    record_in_runs,
    run_tasks,
    same_value,
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m npair.select",
        description=selection.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="training overrides, as for python -m npair.train")
    add_debug_option(parser)
    parser.add_argument(
        "--grid", required=True, help="key=value1,value2,... (e.g. loss.temperature=0.05,0.1,0.2)"
    )
    parser.add_argument("--seeds", default="0", help="training seeds per grid value (default 0)")
    parser.add_argument(
        "--final-seeds",
        default="0",
        help="seeds of the final runs with the chosen value (default 0; empty: selection only)",
    )
    parser.add_argument("--fraction", type=float, default=0.2, help="training classes held out (default 0.2)")
    parser.add_argument("--split-seed", type=int, default=0, help="which ones (default 0)")
    parser.add_argument(
        "--metric", default="recall@1", help="validation metric to maximise (default recall@1)"
    )
    parser.add_argument(
        "--name", default=None, help="folder under <outputs>/selection (default: from the overrides)"
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="runs trained at once (default: as npair.tables)"
    )
    add_run_dir_options(parser)
    return parser.parse_args(argv)


def _seeds(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    grid = Grid.parse(args.grid)
    settings = Settings(
        fraction=args.fraction,
        split_seed=args.split_seed,
        seeds=_seeds(args.seeds) or (0,),
        metric=args.metric,
    )
    root = Path(args.outputs or Path(os.environ.get("NPAIR_ROOT", ".")) / "outputs").resolve()
    name = args.name or re.sub(r"[^A-Za-z0-9_.=-]+", "_", "+".join(args.overrides)) or "default"
    if args.jobs is None:
        import torch

        args.jobs = 1 if torch.cuda.is_available() else min(2, os.cpu_count() or 1)
    selection = Selection(name, list(args.overrides), grid, settings, root / "selection" / name)
    final_dirs = {s: selection.root / "final" / f"seed{s}" for s in _seeds(args.final_seeds)}
    # a selection run of another config (or a hand-written metrics.json) is never reused (npair.run_checks)
    settle(selection.checks(), args.rerun_stale, "the selection")
    tasks = [Task("select", selection.sweep, finish=selection.choose)]
    if final_dirs:
        tasks.append(
            Task(
                "final",
                lambda: final_sweep(
                    name,
                    list(args.overrides),
                    selection.record,
                    final_dirs,
                    selection.root / "final",
                    "seed${seed}",
                    args.rerun_stale,
                ),
                after=("select",),
                finish=lambda: record_in_runs(selection.record, final_dirs.values()),
            )
        )
    run_tasks(tasks, args.jobs, selection.root / "logs")
    record = selection.record
    for value in grid.values:
        mark = "  <- chosen" if same_value(value, record["chosen"]) else ""
        print(f"{grid.key}={value}: validation {settings.metric} {record['mean'][str(value)]:.4f}{mark}")
    print(
        f"wrote {selection.root / SELECTION_FILE}"
        + (f"; final runs in {selection.root / 'final'}" if final_dirs else "")
    )
    return record


if __name__ == "__main__":
    sys.exit(run_cli(main))
