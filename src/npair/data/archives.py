"""Extract tar and zip archives without writing outside the destination folder.

Extraction does not use ``tarfile``'s extraction filters or ``zipfile.extractall``: tarfile's
``data`` filter resolves link targets with ``os.path.realpath``, which a chain of symlinks longer
than PATH_MAX defeats on unpatched Pythons (CVE-2025-4517), and zipfile does not bound what it
writes. Instead, every archive is first *planned* from its member headers, with nothing written:

1. a member name must be relative, without ``..`` components or a drive letter;
2. no member may be written through a link: every parent of a member must be a folder of the
   archive itself (or not exist yet), never a symbolic link or a file, and no member may replace an
   earlier one (a repeated folder is allowed);
3. a symbolic link's target is resolved component by component in the archive's own final tree,
   following the links the archive creates (in memory, so no path-length limit applies); a link
   that leaves the destination at any step, or a chain of more than :data:`MAX_LINK_HOPS` links,
   is refused;
4. a hard link must name a regular file that an earlier member of the same archive created;
5. devices, fifos, sparse files, zip symlinks and encrypted zip members are refused;
6. the member count and the sum of the members' declared sizes must stay within the limits the
   dataset catalogue gives for that archive (``sources.py``); planning stops as soon as a limit is
   passed, so a tar bomb is not decompressed in full.

Only then are members written, in archive order: folders with ``mkdir``, files with
``O_CREAT | O_EXCL | O_NOFOLLOW`` after checking with ``lstat`` that every parent is a real folder,
the written bytes counted against the declared sizes. :func:`check_links_inside` repeats the link
check on the disk tree (``lstat``/``readlink``, never ``realpath``); the installer runs it on the
tree it is about to install, which also covers links that span two archives of one dataset.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from npair.errors import UserError

MAX_LINK_HOPS = 40  # symlinks followed while resolving one target; Linux's own limit (MAXSYMLINKS)
COPY_CHUNK = 1 << 20

_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchiveError(UserError, RuntimeError):
    """An archive member would land outside the extraction folder, or the archive exceeds its limits."""


@dataclass(frozen=True)
class ExtractionLimits:
    """Upper bounds for one archive, from the dataset catalogue: members of any kind, and the sum of
    the regular files' sizes in bytes."""

    max_members: int
    max_bytes: int


@dataclass(frozen=True)
class _Member:
    parts: tuple[str, ...]
    kind: str  # "dir" | "file" | "symlink" | "hardlink"
    size: int = 0
    target: str = ""  # symlink target as stored in the archive
    link_parts: tuple[str, ...] = ()  # hard-link target, relative to the destination
    source: Any = None  # the TarInfo or ZipInfo to read the data from
    executable: bool = False


# A tree node as the resolver sees it: "dir", "file", ("link", target) or None (does not exist).
Node = Any


def member_parts(archive: str, name: str) -> tuple[str, ...]:
    """The components of member ``name`` (backslashes count as separators; ``.`` dropped); raise
    :class:`UnsafeArchiveError` for absolute names, drive letters, NUL bytes and ``..``."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: NUL byte in the name")
    path = name.replace("\\", "/")
    if path.startswith("/") or _DRIVE.match(path):
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: absolute path")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{archive}: refusing member {name!r}: '..' would leave the extraction folder"
        )
    return parts


def resolve_link(link: tuple[str, ...], target: str, lookup: Callable[[tuple[str, ...]], Node]) -> str | None:
    """Follow symlink ``link`` (components under the root) to ``target`` through the tree that
    ``lookup`` describes; ``None`` if every step stays inside the root, else the reason it does not.

    Components that do not exist, or that are files, are continued lexically, which is stricter
    than the kernel (it would stop there with an error).
    """
    if not target or "\x00" in target:
        return "empty target or NUL byte"
    if target.startswith("/") or _DRIVE.match(target.replace("\\", "/")):
        return f"absolute target {target!r}"
    where = list(link[:-1])
    pending = target.split("/")
    hops = 1
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return f"link to {target!r} leaves the tree"
            where.pop()
            continue
        node = lookup((*where, part))
        if isinstance(node, tuple):  # another symlink: continue through its target
            hops += 1
            if hops > MAX_LINK_HOPS:
                return f"link to {target!r} passes more than {MAX_LINK_HOPS} links (a loop?)"
            inner = node[1]
            if not inner or inner.startswith("/") or _DRIVE.match(inner.replace("\\", "/")):
                return f"link to {target!r} passes through an absolute link {inner!r}"
            pending = inner.split("/") + pending
            continue
        where.append(part)
    return None


# --------------------------------------------------------------------------- reading the members


def _tar_members(tar: tarfile.TarFile, name: str) -> Iterator[_Member]:
    for info in tar:  # lazily: planning can stop before a bomb is decompressed in full
        parts = member_parts(name, info.name)
        if info.issparse():
            raise UnsafeArchiveError(f"{name}: refusing member {info.name!r}: sparse file")
        if info.isdir():
            yield _Member(parts, "dir", source=info)
        elif info.isreg():
            yield _Member(parts, "file", info.size, source=info, executable=bool(info.mode & 0o111))
        elif info.issym():
            yield _Member(parts, "symlink", target=info.linkname, source=info)
        elif info.islnk():
            yield _Member(parts, "hardlink", link_parts=member_parts(name, info.linkname), source=info)
        else:
            raise UnsafeArchiveError(
                f"{name}: refusing member {info.name!r}: device, fifo or other special file"
            )


def _zip_members(zf: zipfile.ZipFile, name: str) -> Iterator[_Member]:
    for info in zf.infolist():
        parts = member_parts(name, info.filename)
        mode = info.external_attr >> 16
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"{name}: refusing member {info.filename!r}: encrypted")
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{name}: refusing member {info.filename!r}: symbolic link")
        if info.is_dir() or stat.S_ISDIR(mode):
            yield _Member(parts, "dir", source=info)
        elif stat.S_IFMT(mode) in (0, stat.S_IFREG):
            yield _Member(parts, "file", info.file_size, source=info, executable=bool(mode & 0o111))
        else:
            raise UnsafeArchiveError(
                f"{name}: refusing member {info.filename!r}: device, fifo or other special file"
            )


# --------------------------------------------------------------------------- planning


def plan_members(name: str, members: Iterable[_Member], limits: ExtractionLimits) -> list[_Member]:
    """Check ``members`` (in archive order) against the rules in the module docstring; return those
    to write. Nothing is written."""
    tree: dict[tuple[str, ...], Node] = {}
    planned: list[_Member] = []
    count = total = 0
    for member in members:
        count += 1
        if count > limits.max_members:
            raise UnsafeArchiveError(
                f"{name}: more than {limits.max_members} members, the limit for this archive in the "
                "dataset catalogue (src/npair/data/sources.py); refusing to extract it"
            )
        shown = "/".join(member.parts)
        if not member.parts:
            if member.kind == "dir":
                continue  # the destination itself ("./")
            raise UnsafeArchiveError(f"{name}: refusing a {member.kind} member with an empty name")
        for depth in range(1, len(member.parts)):
            parent = member.parts[:depth]
            node = tree.get(parent)
            if node is None:
                tree[parent] = "dir"  # created implicitly
            elif isinstance(node, tuple):
                raise UnsafeArchiveError(
                    f"{name}: refusing member {shown!r}: it would be written through the link "
                    f"{'/'.join(parent)!r} -> {node[1]!r}"
                )
            elif node != "dir":
                raise UnsafeArchiveError(f"{name}: refusing member {shown!r}: {'/'.join(parent)!r} is a file")
        existing = tree.get(member.parts)
        if existing is not None:
            if existing == "dir" and member.kind == "dir":
                continue
            raise UnsafeArchiveError(f"{name}: refusing member {shown!r}: it would replace an earlier member")
        if member.kind == "dir":
            tree[member.parts] = "dir"
        elif member.kind == "file":
            total += member.size
            if total > limits.max_bytes:
                raise UnsafeArchiveError(
                    f"{name}: the members add up to more than {limits.max_bytes:,} bytes, the limit for this "
                    "archive in the dataset catalogue (src/npair/data/sources.py); refusing to extract it"
                )
            tree[member.parts] = "file"
        elif member.kind == "symlink":
            tree[member.parts] = ("link", member.target)
        elif member.kind == "hardlink":
            if tree.get(member.link_parts) != "file":
                raise UnsafeArchiveError(
                    f"{name}: refusing member {shown!r}: hard link to {'/'.join(member.link_parts)!r}, "
                    "which is not a regular file created earlier by this archive"
                )
            tree[member.parts] = "file"
        planned.append(member)
    for member in planned:
        if member.kind == "symlink":
            reason = resolve_link(member.parts, member.target, tree.get)
            if reason:
                raise UnsafeArchiveError(f"{name}: refusing member {'/'.join(member.parts)!r}: {reason}")
    return planned


# --------------------------------------------------------------------------- writing


def real_dirs(dest: Path, parts: tuple[str, ...]) -> Path:
    """Create ``dest/<parts>`` folder by folder, refusing any component that is not a real folder."""
    path = dest
    for part in parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if not stat.S_ISDIR(mode):
            raise UnsafeArchiveError(
                f"{path}: exists and is not a folder (a link or a file); refusing to write into it"
            )
    return path


def write_new_file(path: Path, source: IO[bytes], limit: int, label: str) -> int:
    """Copy ``source`` into a new file ``path`` (never following or replacing anything that exists);
    raise :class:`UnsafeArchiveError` if more than ``limit`` bytes come. Returns the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(COPY_CHUNK):
            written += len(chunk)
            if written > limit:
                raise UnsafeArchiveError(f"{label}: more data than its declared size of {limit:,} bytes")
            out.write(chunk)
    return written


def _write(
    name: str, dest: Path, planned: list[_Member], opener: Callable[[Any], IO[bytes]], max_bytes: int
) -> None:
    total = 0
    for member in planned:
        parent = real_dirs(dest, member.parts[:-1])
        path = parent / member.parts[-1]
        label = f"{name}: member {'/'.join(member.parts)!r}"
        if member.kind == "dir":
            real_dirs(dest, member.parts)
        elif member.kind == "file":
            with opener(member.source) as data:
                total += write_new_file(path, data, member.size, label)
            if total > max_bytes:
                raise UnsafeArchiveError(f"{name}: more than {max_bytes:,} bytes written; refusing the rest")
            if member.executable:
                os.chmod(path, 0o755)
        elif member.kind == "symlink":
            os.symlink(member.target, path)
        elif member.kind == "hardlink":
            source = real_dirs(dest, member.link_parts[:-1]) / member.link_parts[-1]
            if not stat.S_ISREG(os.lstat(source).st_mode):
                raise UnsafeArchiveError(f"{label}: hard-link target is not a regular file on disk")
            os.link(source, path, follow_symlinks=False)


@contextmanager
def _opened(archive: Path) -> Iterator[tuple[Iterator[_Member], Callable[[Any], IO[bytes]]]]:
    """The members of a zip or tar archive (read lazily) and a function that opens a member's data."""
    name = archive.name
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            yield _zip_members(zf, name), zf.open
        return
    with tarfile.open(archive, "r:*") as tar:

        def opener(info: tarfile.TarInfo) -> IO[bytes]:
            data = tar.extractfile(info)
            if data is None:  # pragma: no cover - only regular files are opened
                raise UnsafeArchiveError(f"{name}: member {info.name!r} has no data")
            return data

        yield _tar_members(tar, name), opener


def check_archive(archive: Path, limits: ExtractionLimits) -> None:
    """Raise :class:`UnsafeArchiveError` if ``archive`` breaks a rule of the module docstring (nothing
    is written)."""
    with _opened(Path(archive)) as (members, _):
        plan_members(Path(archive).name, members, limits)


def safe_extract(archive: Path, dest: Path, limits: ExtractionLimits) -> None:
    """Extract a tar(.gz/.bz2/.xz) or zip ``archive`` into ``dest`` under ``limits``.

    Raises :class:`UnsafeArchiveError` before anything is written if a member breaks a rule of the
    module docstring; ``dest`` is created only once the whole archive has been checked.
    """
    archive, dest = Path(archive), Path(dest)
    with _opened(archive) as (members, opener):
        planned = plan_members(archive.name, members, limits)
        dest.mkdir(parents=True, exist_ok=True)
        _write(archive.name, dest, planned, opener, limits.max_bytes)
    check_links_inside(dest)


def _disk_node(root: Path) -> Callable[[tuple[str, ...]], Node]:
    def lookup(parts: tuple[str, ...]) -> Node:
        path = root.joinpath(*parts)
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(mode):
            return ("link", os.readlink(path))
        return "dir" if stat.S_ISDIR(mode) else "file"

    return lookup


def check_links_inside(root: Path) -> None:
    """Raise :class:`UnsafeArchiveError` if any symlink under ``root`` resolves outside it (checked
    with ``lstat``/``readlink`` component by component, as :func:`resolve_link` does)."""
    root = Path(root)
    lookup = _disk_node(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = Path(dirpath).relative_to(root).parts
        for entry in (*dirnames, *filenames):
            path = Path(dirpath) / entry
            if path.is_symlink():
                reason = resolve_link((*rel, entry), os.readlink(path), lookup)
                if reason:
                    raise UnsafeArchiveError(f"{path}: {reason}; refusing to install this tree")
