"""Download, verify and install datasets: ``python -m npair.data.download <name> --root data/``.

For each file of a dataset (``sources.py``), mirrors are tried in order:

1. an entry without a pinned checksum (MD5 or SHA-256 in ``sources.py``) is refused before
   anything is fetched, opened or written;
2. the file is fetched to ``<root>/.downloads/<name>/<file>.part`` with urllib; an existing
   ``.part`` is resumed with an HTTP ``Range`` request (a server that ignores it restarts the
   file); HTML pages (dead mirrors, quota pages) are rejected;
3. size, MD5 and SHA-256 are checked; on a mismatch the partial file is deleted and the error
   names the file, the URL and both digests; a file placed by hand in
   ``<root>/.downloads/<name>/`` is checked the same way;
4. only then are archives extracted, by ``archives.py``: every member is checked before anything
   is written (no absolute paths, no ``..``, nothing written through a link, no link whose target
   leaves the tree, hard links only to the archive's own files, no devices, member count and
   bytes within the catalogue's bounds), into a temporary folder ``<root>/.<target>.tmp-*``;
   a complete tree whose links all stay inside it is renamed into ``<root>/<target>``, so a
   failure leaves no partial tree behind and an installed dataset is replaced only by a
   complete one;
5. a ``.npair-verified.json`` marker records the checksums; a verified dataset is not fetched
   again (``--force`` re-fetches).

Datasets that need a request form or have no public release print exactly what to do and
which layout to create, and verify that layout once it is in place.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from npair.data.archives import (
    ExtractionLimits,
    UnsafeArchiveError,
    check_archive,
    check_links_inside,
    member_parts,
    real_dirs,
    safe_extract,
    write_new_file,
)
from npair.data.sources import SOURCES, DatasetSource, RemoteFile, Variant
from npair.errors import UserError, add_debug_option, run_cli
from npair.runio import current_umask

__all__ = [
    "ChecksumError",
    "DownloadError",
    "ExtractionLimits",
    "ManualStepRequired",
    "UnsafeArchiveError",
    "check_archive",
    "download_url",
    "fetch",
    "fetch_file",
    "main",
    "safe_extract",
    "verify_file",
]

MARKER = ".npair-verified.json"
CHUNK = 1 << 20
RETRY_DELAY_S = 1.0  # first back-off between resume attempts (doubles, at most 10 s)
USER_AGENT = "npair-download/0.1 (+python urllib)"


class DownloadError(UserError, RuntimeError):
    """A file could not be fetched from a URL."""


class ChecksumError(DownloadError):
    """A fetched file does not match its published size or digest."""


class ManualStepRequired(UserError, RuntimeError):
    """The dataset cannot be fetched automatically; the message says what to do."""


# --------------------------------------------------------------------------- verification


def file_digests(path: Path) -> dict[str, str]:
    """MD5 and SHA-256 of a file in one pass."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def verify_file(path: Path, spec: RemoteFile, url: str | None = None) -> dict[str, str]:
    """Raise :class:`ChecksumError` unless ``path`` has ``spec``'s size and pinned digests (an entry
    without a pinned MD5 or SHA-256 never passes)."""
    where = f" (from {url})" if url else ""
    if not spec.verifiable:
        raise ChecksumError(f"{spec.filename}{where}: no pinned checksum to verify it against")
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise ChecksumError(f"{spec.filename}{where}: size {size} bytes, expected {spec.size}")
    digests = file_digests(path)
    for algo in ("md5", "sha256"):
        want = getattr(spec, algo)
        if want and digests[algo] != want.lower():
            raise ChecksumError(f"{spec.filename}{where}: {algo} {digests[algo]}, expected {want}")
    return digests


# --------------------------------------------------------------------------- download


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head")) or b"<html" in start


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urlopen(Request(url, headers=headers), timeout=timeout)


def download_url(
    url: str, dest: Path, spec: RemoteFile, progress: bool = True, timeout: float = 60.0, retries: int = 3
) -> dict[str, str]:
    """Fetch ``url`` to ``dest`` via ``dest.part`` (resumable), verify it, then rename into place.

    A checksum mismatch deletes the ``.part`` file and raises :class:`ChecksumError`; a transfer
    interrupted by a network error is resumed up to ``retries`` times and otherwise left as
    ``.part`` for the next run.
    """
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        start = part.stat().st_size if part.exists() else 0
        if spec.size is not None and start > spec.size:
            part.unlink()
            start = 0
        try:
            try:
                response = _open(url, start, timeout)
            except HTTPError as exc:
                if exc.code == 416 and start:  # nothing left to send: the .part is complete
                    break
                raise DownloadError(f"{spec.filename}: HTTP {exc.code} {exc.reason} from {url}") from exc
            with response:
                code = response.getcode()  # None for file:// URLs
                resumed = bool(start) and code == 206
                if start and not resumed:
                    start = 0  # the server ignored the Range header: restart
                length = response.headers.get("Content-Length")
                total = (int(length) + start) if length is not None else spec.size
                first = response.read(CHUNK)
                ctype = (response.headers.get("Content-Type") or "").lower()
                if not resumed and ("text/html" in ctype or _looks_like_html(first)):
                    raise DownloadError(
                        f"{spec.filename}: {url} returned an HTML page instead of the file "
                        "(dead mirror, login or quota page)"
                    )
                with (
                    open(part, "ab" if resumed else "wb") as out,
                    tqdm(
                        total=total,
                        initial=start,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=spec.filename,
                        disable=not progress,
                        leave=False,
                    ) as bar,
                ):
                    chunk, received = first, 0
                    while chunk:
                        out.write(chunk)
                        bar.update(len(chunk))
                        received += len(chunk)
                        chunk = response.read(CHUNK)
                if length is not None and received < int(length):
                    raise ConnectionError(f"connection closed after {received} of {length} bytes")
            break
        except (URLError, OSError, TimeoutError, http.client.HTTPException) as exc:  # network trouble: resume
            if attempt == retries:
                kept = f" ({part} is kept; rerun to resume)" if part.exists() else ""
                raise DownloadError(f"{spec.filename}: cannot fetch {url}: {exc}{kept}") from exc
            time.sleep(min(RETRY_DELAY_S * 2.0**attempt, 10.0))
    try:
        digests = verify_file(part, spec, url)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return digests


def fetch_file(spec: RemoteFile, downloads: Path, progress: bool = True) -> tuple[Path, dict[str, str]]:
    """Return a verified local copy of ``spec``: one already in ``downloads`` (placed by hand or by
    an earlier run) or a fresh download from the first mirror that works. An entry without a pinned
    checksum is refused before anything is read or fetched."""
    _require_pinned(spec)
    dest = downloads / spec.filename
    if dest.exists():
        try:
            return dest, verify_file(dest, spec)
        except ChecksumError as exc:
            dest.unlink()
            print(f"  {exc}; deleted, downloading again", file=sys.stderr)
    errors: list[str] = []
    for url in spec.urls:
        print(f"  fetching {spec.filename} from {url}", file=sys.stderr)
        try:
            return dest, download_url(url, dest, spec, progress=progress)
        except DownloadError as exc:
            errors.append(str(exc))
            print(f"  failed: {exc}", file=sys.stderr)
    raise DownloadError(f"{spec.filename}: every mirror failed:\n    " + "\n    ".join(errors))


# --------------------------------------------------------------------------- install


def missing_paths(target: Path, source: DatasetSource) -> list[str]:
    """``source.required`` paths absent from ``target`` (everything, if ``target`` is absent)."""
    if not target.is_dir():
        return [str(target)]
    return [rel for rel in source.required if not (target / rel).exists()]


def _format_manual(source: DatasetSource, root: Path) -> str:
    """The source's manual steps; for downloadable sources, also how to place the files by hand."""
    downloads = root / ".downloads" / source.name
    text = source.manual
    if source.variants and "{downloads}" not in text:
        lines = [
            (
                "Download these files from any copy you trust (browser, another machine), put them in "
                "{downloads} and rerun `python -m npair.data.download {name} --root {root}`: they are "
                "verified and installed."
            )
        ]
        for spec in source.variants[0].files:
            sums = ", ".join(
                f"{algo.upper()} {getattr(spec, algo)}" for algo in ("md5", "sha256") if getattr(spec, algo)
            )
            lines.append(f"  {spec.filename} ({sums}) from {spec.urls[0]}")
        text = "\n".join(lines) + ("\n" + text if text else "")
    return text.format(
        root=root,
        name=source.name,
        target=root / source.target if source.target else root,
        downloads=downloads,
        config=source.config or source.name,
    )


def _require_pinned(spec: RemoteFile) -> None:
    """Refuse, before anything is read or fetched, an entry with no pinned checksum."""
    if not spec.verifiable:
        raise DownloadError(
            f"{spec.filename}: no pinned checksum (MD5 or SHA-256) in the catalogue; refusing to fetch, "
            "open or install it"
        )


def _check_catalogue_entry(spec: RemoteFile) -> None:
    """Refuse, before anything is fetched, an entry with no pinned checksum or an archive with no bounds."""
    _require_pinned(spec)
    if spec.extract and spec.limits is None:
        raise DownloadError(
            f"{spec.filename}: the catalogue gives no extraction bounds (max_members, max_bytes); "
            "refusing to extract it"
        )


def _require_pinned_match(spec: RemoteFile, digests: dict[str, str]) -> None:
    """The digests measured for ``spec``'s file must equal the pinned ones (checked again before use)."""
    pinned = {algo: getattr(spec, algo).lower() for algo in ("md5", "sha256") if getattr(spec, algo)}
    if not pinned or any(digests.get(algo) != want for algo, want in pinned.items()):
        raise ChecksumError(f"{spec.filename}: not verified against its pinned checksum; refusing to use it")


def _place_file(source: Path, staging: Path, spec: RemoteFile) -> None:
    """Copy a non-archive file to ``staging/<spec.dest>`` without following or replacing anything there."""
    parts = member_parts(spec.filename, spec.dest)
    if not parts:
        raise DownloadError(f"{spec.filename}: catalogue destination {spec.dest!r} names no file")
    folder = real_dirs(staging, parts[:-1])
    with open(source, "rb") as data:
        write_new_file(folder / parts[-1], data, source.stat().st_size, spec.filename)


def _install_variant(
    source: DatasetSource, variant: Variant, root: Path, keep_archives: bool, progress: bool
) -> Path:
    downloads = root / ".downloads" / source.name
    for spec in variant.files:
        _check_catalogue_entry(spec)
    fetched: list[tuple[RemoteFile, Path, dict[str, str]]] = []
    for spec in variant.files:
        path, digests = fetch_file(spec, downloads, progress=progress)
        fetched.append((spec, path, digests))

    target = root / source.target
    staging = Path(tempfile.mkdtemp(prefix=f".{source.target}.tmp-", dir=root))
    # mkdtemp makes it 0700; it becomes the installed folder when the variant has no subdir: give it the
    # permissions a plain mkdir would (the umask's), like every folder and file extracted into it
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        for spec, path, digests in fetched:
            _require_pinned_match(spec, digests)
            print(f"  {'extracting' if spec.extract else 'placing'} {spec.filename}", file=sys.stderr)
            if spec.extract:
                assert spec.limits is not None  # checked by _check_catalogue_entry
                safe_extract(path, staging / spec.dest, spec.limits)
            else:
                _place_file(path, staging, spec)
        tree = staging / variant.subdir
        check_links_inside(tree)
        missing = missing_paths(tree, source)
        if missing:
            raise DownloadError(
                f"{source.name}: the extracted tree lacks {missing} (unexpected archive layout)"
            )
        marker = {
            "dataset": source.name,
            "variant": variant.label,
            "files": {spec.filename: digests for spec, _, digests in fetched},
            "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with io.BytesIO((json.dumps(marker, indent=2) + "\n").encode()) as text:
            write_new_file(tree / MARKER, text, 1 << 20, MARKER)
        _swap_into_place(tree, target, root / f".{source.target}.old-{os.getpid()}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archives:
        for _, path, _ in fetched:
            path.unlink(missing_ok=True)
        for folder in (downloads, downloads.parent):
            try:
                folder.rmdir()
            except OSError:
                pass
    return target


def _swap_into_place(tree: Path, target: Path, old: Path) -> None:
    """Rename ``tree`` to ``target``; an existing ``target`` is moved aside and put back if that fails."""
    if not target.exists() and not target.is_symlink():
        os.replace(tree, target)
        return
    os.replace(target, old)
    try:
        os.replace(tree, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def fetch(
    name: str,
    root: str | os.PathLike[str] = "data",
    force: bool = False,
    keep_archives: bool = False,
    progress: bool = True,
) -> Path:
    """Install dataset ``name`` under ``root`` and return its folder (the config's ``dataset.root``).

    Raises :class:`ManualStepRequired` (with the steps) for datasets that cannot be fetched, and
    :class:`DownloadError` naming every failed mirror when all variants fail.
    """
    if name not in SOURCES:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(SOURCES))}")
    source = SOURCES[name]
    root_path = Path(root).expanduser()
    root_path.mkdir(parents=True, exist_ok=True)
    if source.parts:
        for part in source.parts:
            fetch(part, root_path, force=force, keep_archives=keep_archives, progress=progress)
        return root_path
    target = root_path / source.target
    if (target / MARKER).is_file() and not force and not missing_paths(target, source):
        print(f"{name}: already installed and verified at {target}", file=sys.stderr)
        return target
    if not source.variants:
        missing = missing_paths(target, source)
        if target.is_dir() and not missing and any(target.iterdir()):
            print(f"{name}: found at {target}; layout looks complete", file=sys.stderr)
            return target
        raise ManualStepRequired(
            f"{name} ({source.status}): cannot be downloaded automatically.\n"
            + _format_manual(source, root_path)
        )
    if target.exists() and not (target / MARKER).is_file() and not force:
        missing = missing_paths(target, source)
        if not missing:
            print(
                f"{name}: {target} exists (not installed by this tool, so not checksum-verified); "
                "use --force to re-fetch and verify",
                file=sys.stderr,
            )
            return target
        raise DownloadError(
            f"{name}: {target} exists but is incomplete (missing {missing}); remove it or rerun with --force"
        )
    errors: list[str] = []
    for variant in source.variants:
        print(f"{name}: trying {variant.label}", file=sys.stderr)
        try:
            target = _install_variant(source, variant, root_path, keep_archives, progress)
        except (DownloadError, UnsafeArchiveError, tarfile.TarError, zipfile.BadZipFile) as exc:
            errors.append(f"[{variant.label}] {exc}")
            continue
        print(f"{name}: installed and verified at {target}", file=sys.stderr)
        return target
    message = f"{name}: could not install from any source:\n  " + "\n  ".join(errors)
    advice = _format_manual(source, root_path)
    if advice:
        message += "\n\nWhat to do:\n" + advice
    raise DownloadError(message)


def status_table(root: str | os.PathLike[str] = "data") -> str:
    """A markdown table of every dataset: access status, installed state, command."""
    root_path = Path(root)
    rows = ["| dataset | access | installed at | command |", "|---|---|---|---|"]
    for source in SOURCES.values():
        if source.parts:
            here = all(not missing_paths(root_path / SOURCES[p].target, SOURCES[p]) for p in source.parts)
        else:
            here = not missing_paths(root_path / source.target, source) if source.target else False
        where = str(root_path / source.target) if here and source.target else ("yes" if here else "-")
        rows.append(
            f"| {source.name} | {source.status} | {where} | "
            f"`python -m npair.data.download {source.name} --root {root}` |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m npair.data.download",
        description="Download, verify and install datasets "
        "(or print how to obtain those that need a request).",
    )
    parser.add_argument("names", nargs="*", metavar="name", help=f"one or more of: {', '.join(SOURCES)}")
    parser.add_argument("--root", default="data", help="folder that holds the datasets (default: data)")
    parser.add_argument("--force", action="store_true", help="re-fetch and re-verify even if installed")
    parser.add_argument(
        "--keep-archives", action="store_true", help="keep downloaded archives in <root>/.downloads"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="print every dataset's status and exit")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    if Path(args.root).exists() and not Path(args.root).is_dir():
        raise UserError(f"--root {args.root} is a file; name the folder that holds (or is to hold) the data")
    if args.list or not args.names:
        print(status_table(args.root))
        return 0
    code = 0
    names = [
        part for name in args.names for part in (SOURCES[name].parts if name in SOURCES else ()) or [name]
    ]
    for name in names:
        try:
            fetch(
                name,
                args.root,
                force=args.force,
                keep_archives=args.keep_archives,
                progress=not args.no_progress,
            )
        except ManualStepRequired as exc:
            print(str(exc), file=sys.stderr)
            code = max(code, 2)
        except (DownloadError, UnsafeArchiveError, KeyError) as exc:
            print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(run_cli(main))
