"""Malicious and benign archives built in memory, for the extraction and download tests.

Each builder returns the archive's bytes. ``outside`` names are written relative to the folder that
holds the destination, so an escape lands inside the test's temporary folder, where it is detected.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

Entry = tuple  # ("file", name, data) | ("dir", name) | ("sym", name, target) | ("hard", name, target) | ...


def tar_bytes(entries: list[Entry], mode: str = "w:gz") -> bytes:
    """A tar archive with ``entries`` in order: ``("file", name, data)``, ``("dir", name)``,
    ``("sym", name, target)``, ``("hard", name, target)``, ``("chr", name)``, ``("fifo", name)``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = rest[0]
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            if kind == "dir":
                info.mode = 0o755
            if rest:
                info.linkname = rest[0]
            tar.addfile(info)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A deflated zip archive; ``symlinks`` adds Unix symlink entries (name -> target)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o120777 << 16) & 0xFFFF0000
            zf.writestr(info, target)
    return buf.getvalue()


def two_link_chain() -> bytes:
    """``d/up -> ..`` (inside), then ``d/up/x -> ../outside``: lexically ``d/outside``, really
    ``<dest>/../outside``; then a file written through it."""
    return tar_bytes(
        [
            ("dir", "d"),
            ("sym", "d/up", ".."),
            ("sym", "d/up/x", "../outside"),
            ("file", "d/up/x/pwned.txt", b"escaped"),
        ]
    )


def link_through_link() -> bytes:
    """No member is written through a link, but a link's target passes through another link:
    ``x -> d/up/../outside`` is lexically ``x -> d/outside``; with ``d/up -> ..`` it is ``../outside``."""
    return tar_bytes([("dir", "d"), ("sym", "d/up", ".."), ("sym", "x", "d/up/../outside")])


def late_link() -> bytes:
    """``a -> b/..`` is inside while ``b`` does not exist; the later ``b -> .`` makes it ``<dest>/..``."""
    return tar_bytes([("sym", "a", "b/.."), ("sym", "b", ".")])


def path_max_chain(dest: Path) -> bytes:
    """The symlink chain of CVE-2025-4517 for extraction into ``dest``: nested folders with long
    names, a one-letter link to each, and a link whose expanded path passes PATH_MAX, so that
    ``os.path.realpath`` (and tarfile's ``data`` filter on unpatched Pythons) stops resolving it.
    ``escape`` then points at ``<dest>/../outside`` and ``escape/newfile`` is written through it."""
    steps = "abcdefghijklmnop"
    path_max = os.pathconf(dest.parent, "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
    component = "d" * min(255, (path_max - len(str(dest)) - 1) // (len(steps) + 1))
    entries: list[Entry] = []
    path = ""
    for step in steps:
        entries.append(("dir", os.path.join(path, component)))
        entries.append(("sym", os.path.join(path, step), component))
        path = os.path.join(path, component)
    long_link = os.path.join(*steps, "l" * 254)
    entries.append(("sym", long_link, os.path.join(*[".."] * len(steps))))
    entries.append(("sym", "escape", os.path.join(long_link, "..", "outside")))
    entries.append(("file", "escape/newfile", b"written outside"))
    return tar_bytes(entries, mode="w")


def tree_snapshot(root: Path) -> set[str]:
    """Every path under ``root`` (links not followed), relative to it."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out
