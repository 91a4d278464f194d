"""Every reference to a document points to a file of the repository and, with a §, to a heading in it.

Checked in src/, configs/, scripts/, tests/, README.md, CONTRIBUTING.md and docs/:

* any path under ``docs/`` (``docs/paper.md``, ``docs/figures/x.png``) must exist;
* the project's document names, bare or with a leading path (``paper.md``, ``reference/datasets.md``,
  ...), must exist at that path from the repository root, so a citation of a document that is not part of
  the repository fails;
* ``shared/...`` paths must exist in the repository;
* ``§n`` after a Markdown document (also ``§4.1 and §8``, ``§1, §2``, ``§7-8``) must be a numbered heading
  of that document, and ``§8 #n`` (or a config's ``[#n]``, which means ``docs/paper.md §8 #n``) a row of
  that section's table or an item of its numbered list.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("src", "configs", "scripts", "tests", "docs")
TOP_FILES = ("README.md", "CONTRIBUTING.md")
SUFFIXES = {".py", ".yaml", ".yml", ".md"}
# This file spells the document names on purpose (as patterns).
SKIP = {Path("tests/test_references.py")}

DOC_NAMES = "metrics-and-anchors|paper|design|DESIGN|datasets|metrics|CONTRACT|README|CONTRIBUTING"
# A path under docs/, or a project document name with whatever path precedes it.
DOCS_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]*[\w-]")
NAMED_DOC = re.compile(rf"(?<![\w.-])(?:/?(?:[\w.-]+/)*)(?:{DOC_NAMES})\.md\b")
SHARED_PATH = re.compile(r"(?<![\w.-])/?(?:[\w.-]+/)*shared/[\w./-]*[\w-]")
# What may follow a document: quotes or markup, then §-references.
SECTION_START = re.compile(r"[`'\"*]*\s*(?=§)")
SECTION = re.compile(r"§\s*(?P<number>\d+(?:\.\d+)*)(?:\s*#(?P<items>\d+(?:\s*,\s*#\d+)*))?")
RANGE_END = re.compile(r"\s*[-–]\s*§?\s*(?P<number>\d+(?:\.\d+)*)")
NEXT_SECTION = re.compile(r"\s*(?:,|and|or|/)\s*(?=§)")
NUMBERED = re.compile(
    r"^(?:\|\s*(\d+)\s*\||\s*(\d+)\.\s)", re.MULTILINE
)  # a table row "| n |" or a list item "n."
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
CONFIG_ITEM = re.compile(r"\[#(\d+)")


def scanned_files() -> list[Path]:
    files = [REPO / name for name in TOP_FILES if (REPO / name).is_file()]
    for root in ROOTS:
        files += sorted(p for p in (REPO / root).rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    return [p for p in files if p.relative_to(REPO) not in SKIP and "__pycache__" not in p.parts]


def section_refs(tail: str) -> list[tuple[str, list[str]]]:
    """The (section, items) pairs that ``tail`` (the text right after a document name) starts with."""
    start = SECTION_START.match(tail)
    if not start:
        return []
    refs, pos = [], start.end()
    while match := SECTION.match(tail, pos):
        refs.append((match["number"], re.findall(r"\d+", match["items"] or "")))
        pos = match.end()
        if end := RANGE_END.match(tail, pos):
            refs.append((end["number"], []))
            pos = end.end()
        if not (sep := NEXT_SECTION.match(tail, pos)):
            break
        pos = sep.end()
    return refs


@cache
def headings(doc: Path) -> frozenset[str]:
    return frozenset(HEADING.findall(doc.read_text(encoding="utf-8")))


@cache
def numbered_items(doc: Path, section: str) -> frozenset[str]:
    """Numbers of the table rows (``| n |``) and list items (``n.``) in section ``section`` of ``doc``."""
    text = doc.read_text(encoding="utf-8")
    start = re.search(rf"^(#{{1,6}})\s+{re.escape(section)}\.?\s.*$", text, re.MULTILINE)
    if not start:
        return frozenset()
    level = len(start.group(1))
    end = re.compile(rf"^#{{1,{level}}}\s", re.MULTILINE).search(text, start.end())
    body = text[start.end() : end.start() if end else len(text)]
    return frozenset(row or item for row, item in NUMBERED.findall(body))


def problems_in(path: Path) -> list[str]:
    """Every broken reference in one file, as ``file:line: reference: what is wrong``."""
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(REPO)
    found: list[str] = []

    def report(offset: int, ref: str, why: str) -> None:
        found.append(f"{rel}:{text.count(chr(10), 0, offset) + 1}: {ref!r}: {why}")

    spans = set()
    for pattern in (DOCS_PATH, NAMED_DOC, SHARED_PATH):
        for match in pattern.finditer(text):
            if any(a <= match.start() < b for a, b in spans):
                continue  # part of a longer reference already checked (docs/paper.md contains paper.md)
            spans.add(match.span())
            ref = match.group(0).rstrip(".")
            target = REPO / ref.lstrip("/")
            if not target.exists():
                report(match.start(), ref, "no such file in the repository")
                continue
            if target.suffix != ".md":
                continue
            for number, items in section_refs(text[match.end() : match.end() + 120]):
                if number not in headings(target):
                    report(match.start(), f"{ref} §{number}", f"{ref} has no heading numbered {number}")
                for item in items:
                    if item not in numbered_items(target, number):
                        report(
                            match.start(), f"{ref} §{number} #{item}", f"no row {item} in §{number} of {ref}"
                        )
    if path.suffix in (".yaml", ".yml"):
        paper = REPO / "docs" / "paper.md"
        for match in CONFIG_ITEM.finditer(text):
            if not paper.is_file():
                report(
                    match.start(),
                    match.group(0),
                    "an open choice of docs/paper.md §8, but there is no docs/paper.md",
                )
            elif match.group(1) not in numbered_items(paper, "8"):
                report(match.start(), match.group(0), "no such open choice in docs/paper.md §8")
    return found


def test_every_document_reference_exists() -> None:
    files = scanned_files()
    assert len(files) > 100, "the scan found suspiciously few files"
    problems = [problem for path in files for problem in problems_in(path)]
    assert not problems, (
        f"{len(problems)} broken document reference(s); cite docs/<name>.md §n:\n" + "\n".join(problems)
    )


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (" §8 #14: k unknown", [("8", ["14"])]),
        ("`` §4.0: Recall@K", [("4.0", [])]),
        (" §4.1 and §8).", [("4.1", []), ("8", [])]),
        (" §1, §2). Builders", [("1", []), ("2", [])]),
        (" §7-8); users", [("7", []), ("8", [])]),
        ("` §4-§5, paper", [("4", []), ("5", [])]),
        (" §8 #13, #14, #23, #24): majority", [("8", ["13", "14", "23", "24"])]),
        (" §8 #14, 10 draws", [("8", ["14"])]),
        (" (the project's dataset reference)", []),
    ],
)
def test_section_reference_parsing(tail: str, expected: list[tuple[str, list[str]]]) -> None:
    assert section_refs(tail) == expected


def test_broken_references_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "repo"
    (fake / "docs").mkdir(parents=True)
    (fake / "docs" / "paper.md").write_text(
        "# P\n\n## 2. Losses\n\n### 2.5 N-pair\n\n## 8. Choices\n\n| 1 | a |\n"
    )
    (fake / "configs").mkdir()
    source = fake / "configs" / "x.yaml"
    source.write_text(
        "a: 1  # docs/paper.md §2.5 [#1]\n"
        "b: 2  # docs/paper.md §3.1\n"
        "c: 3  # paper.md §2.5\n"
        "d: 4  # docs/paper.md §8 #2 and [#9]\n"
        "e: 5  # see /home/user/notes/shared/metrics-and-anchors.md §4\n"
        "f: 6  # docs/nothing.md\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", fake)
    headings.cache_clear()
    numbered_items.cache_clear()
    try:
        problems = problems_in(source)
    finally:
        headings.cache_clear()
        numbered_items.cache_clear()
    lines = sorted(int(p.split(":")[1]) for p in problems)
    assert lines == [2, 3, 4, 4, 5, 6], problems
