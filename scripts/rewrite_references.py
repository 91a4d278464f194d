#!/usr/bin/env python3
"""Rewrite citations of the old background notes to the documents in docs/ (same section numbers).

    python scripts/rewrite_references.py            # rewrite in place, print what changed
    python scripts/rewrite_references.py --check    # change nothing; exit 1 if something would change

Mapping (section numbers are kept: the docs/ pages use the numbering of the notes they replace):

    paper.md, reference/paper.md, .../shared/reference/paper.md     -> docs/paper.md
    DESIGN.md, shared/DESIGN.md                                     -> docs/design.md
    datasets.md, reference/datasets.md                              -> docs/datasets.md
    metrics-and-anchors.md, reference/metrics-and-anchors.md, ...   -> docs/metrics.md
    CONTRACT.md                                                     -> docs/design.md §1 (the interfaces;
                                                                       §6 where it meant the run directory)
    "the reference notes"                                           -> docs/paper.md §8

Idempotent (``docs/...`` is left alone), so it can be re-run after other branches merge. Files scanned: the
ones tests/test_references.py checks (src/, configs/, scripts/, tests/, README.md, CONTRIBUTING.md, docs/).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("src", "configs", "scripts", "tests", "docs")
TOP_FILES = ("README.md", "CONTRIBUTING.md")
SUFFIXES = {".py", ".yaml", ".yml", ".md"}
SKIP = {Path("scripts/rewrite_references.py"), Path("tests/test_references.py")}  # they spell the old names
LINE_LENGTH = 110  # [tool.ruff] line-length in pyproject.toml

OLD_TO_NEW = {
    "paper": "docs/paper.md",
    "DESIGN": "docs/design.md",
    "datasets": "docs/datasets.md",
    "metrics-and-anchors": "docs/metrics.md",
}
# A document name with any leading path (``/work/shared/reference/``, ``reference/``, ``shared/``), not
# already under docs/. The name must not continue a longer word (``my_paper.md``) or path segment.
OLD_DOC = re.compile(
    r"(?<![\w.-])(?P<prefix>/?(?:[\w.-]+/)*)(?P<name>metrics-and-anchors|paper|DESIGN|datasets)\.md\b"
)

# Phrases whose meaning a name-for-name swap would not keep, rewritten first.
PHRASES = (
    ("``checkpoint.pt``, see CONTRACT.md)", "``checkpoint.pt``, see docs/design.md §6)"),  # a run directory
    ("(CONTRACT.md)", "(docs/design.md §1)"),
    ("CONTRACT.md", "docs/design.md §1"),
    ("comments and the reference notes say which)", "comments and `docs/paper.md` §8 say which)"),
)


def _replace_doc(match: re.Match[str]) -> str:
    prefix = match.group("prefix")
    if prefix == "docs/":
        return match.group(0)
    return OLD_TO_NEW[match.group("name")]


def rewrite(text: str) -> str:
    """The text with every old citation rewritten; already rewritten citations stay as they are."""
    for old, new in PHRASES:
        text = text.replace(old, new)
    return OLD_DOC.sub(_replace_doc, text)


def candidate_files(repo: Path = REPO) -> list[Path]:
    files = [repo / name for name in TOP_FILES if (repo / name).is_file()]
    for root in ROOTS:
        files += sorted(p for p in (repo / root).rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    return [p for p in files if p.relative_to(repo) not in SKIP and "__pycache__" not in p.parts]


def lengthened_lines(old: str, new: str) -> list[int]:
    """1-based numbers of the lines the rewrite pushed over LINE_LENGTH (rewrites never add or remove
    lines)."""
    return [
        number
        for number, (before, after) in enumerate(zip(old.splitlines(), new.splitlines()), start=1)
        if len(after) > LINE_LENGTH >= len(before)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="report files that would change; write nothing")
    args = parser.parse_args(argv)
    changed, too_long = [], []
    for path in candidate_files():
        text = path.read_text(encoding="utf-8")
        new = rewrite(text)
        if new != text:
            changed.append(path)
            too_long += [f"{path.relative_to(REPO)}:{n}" for n in lengthened_lines(text, new)]
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in changed:
        print(f"{'would rewrite' if args.check else 'rewrote'} {path.relative_to(REPO)}")
    for where in too_long:
        print(f"note: {where} is now longer than {LINE_LENGTH} characters; reflow it by hand")
    print(f"{len(changed)} file(s) {'to rewrite' if args.check else 'rewritten'}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
