"""The command line of the figures: ``python -m npair.plots curves | table | embedding``."""

from __future__ import annotations

import argparse
import glob
import re
from collections.abc import Sequence
from pathlib import Path

from npair.errors import add_debug_option
from npair.plots import __doc__ as PLOTS_DOC
from npair.plots.curves import training_curves
from npair.plots.embeddings import embedding_projection
from npair.plots.table_figures import table_figures


def parse_run_specs(specs: Sequence[str]) -> dict[str, list[Path]]:
    """``label=dir1,dir2`` (directories may be glob patterns) → {label: [run dirs]}."""
    runs: dict[str, list[Path]] = {}
    for spec in specs:
        label, sep, dirs = spec.partition("=")
        if not sep or not label or not dirs:
            raise SystemExit(
                f"--run {spec!r}: use --run LABEL=DIR[,DIR...] (e.g. --run 60-pair-mc=outputs/runs/x/seed*)"
            )
        paths = []
        for item in dirs.split(","):
            matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
            if not matches:
                raise SystemExit(f"--run {spec!r}: {item!r} matches no directory")
            paths += [Path(m) for m in matches]
        runs.setdefault(label, []).extend(paths)
    return runs


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        prog="python -m npair.plots",
        description=PLOTS_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    curves = sub.add_parser("curves", help="the training-curve figure (paper §5.5) from run directories")
    curves.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="LABEL=DIR[,DIR...]",
        help="legend label and its run directories (seeds; glob patterns allowed); repeat per model",
    )
    curves.add_argument("--out", type=Path, default=Path("outputs/figures/training_curves.png"))
    curves.add_argument("--title", default="")
    curves.add_argument(
        "--lead", default=None, help="the label whose crossings are marked (default: the *mc* one)"
    )
    curves.add_argument("--no-band", action="store_true", help="no band of ± s.e. across training seeds")
    curves.add_argument("--smooth", type=int, default=1, help="trailing mean over this many log points")
    table = sub.add_parser("table", help="Recall@K and metric figures of table CSVs")
    table.add_argument("csv", nargs="+", type=Path, help="outputs/tables/<name>.csv")
    table.add_argument("--out-dir", type=Path, default=Path("outputs/figures"))
    emb = sub.add_parser("embedding", help="2-D projection of a run's test embeddings")
    emb.add_argument("run_dir", type=Path)
    emb.add_argument("--out", type=Path, default=None, help="default: outputs/figures/<run>_<method>.png")
    emb.add_argument("--method", choices=["pca", "tsne"], default="pca")
    emb.add_argument("--max-points", type=int, default=2000)
    emb.add_argument("--n-classes", type=int, default=20)
    emb.add_argument("--data-dir", type=Path, default=None)
    for command in (parser, curves, table, emb):
        add_debug_option(command)
    args = parser.parse_args(argv)
    if args.command == "curves":
        written = [
            training_curves(
                parse_run_specs(args.run), args.out, args.title, args.lead, not args.no_band, args.smooth
            )
        ]
    elif args.command == "table":
        written = [p for path in args.csv for p in table_figures(path, args.out_dir)]
    else:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(args.run_dir).strip("/"))[-80:]
        out = args.out or Path("outputs/figures") / f"embedding_{slug}_{args.method}.png"
        written = [
            embedding_projection(
                args.run_dir, out, args.method, args.max_points, args.n_classes, args.data_dir
            )
        ]
    for path in written:
        print(f"wrote {path} (+ {path.with_suffix('.json').name})")
    return written
