"""Download/verify/extract without network: a local HTTP server on 127.0.0.1 (Range/resume) and file://
URLs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.error import URLError

import pytest

from npair.data import download as dl
from npair.data.sources import SOURCES, DatasetSource, RemoteFile, Variant
from tests.data.archive_fixtures import (
    link_through_link,
    path_max_chain,
    tar_bytes,
    tree_snapshot,
    two_link_chain,
    zip_bytes,
)


class FileServer:
    """Serves ``files`` (url path -> bytes) with optional Range support, and records requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self.honor_range = True
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before dropping the connection (once)
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if range_header and server.honor_range:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header(
                    "Content-Type", server.content_types.get(self.path, "application/octet-stream")
                )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_after.pop(self.path, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, data: bytes, content_type: str | None = None) -> str:
        self.files[path] = data
        if content_type:
            self.content_types[path] = content_type
        return self.url + path


@pytest.fixture
def server():
    srv = FileServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_DELAY_S", 0.0)


def _spec(name: str, data: bytes, urls=(), **kw) -> RemoteFile:
    """A catalogue entry pinned to ``data``'s checksums, with generous extraction bounds."""
    kw.setdefault("max_members", 1000)
    kw.setdefault("max_bytes", 10_000_000)
    return RemoteFile(
        name,
        tuple(urls),
        md5=hashlib.md5(data).hexdigest(),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        **kw,
    )


def _tgz(members: dict[str, bytes], links: dict[str, tuple[str, bytes]] | None = None) -> bytes:
    """A .tgz in memory; ``links`` maps a member name to (linkname, tar type)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (target, kind) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


PAYLOAD = bytes(range(256)) * 800  # 200 KiB


# --------------------------------------------------------------------------- download_url


def test_download_over_http_verifies_and_renames(tmp_path, server):
    url = server.add("/data.bin", PAYLOAD)
    dest = tmp_path / "data.bin"
    digests = dl.download_url(url, dest, _spec("data.bin", PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "data.bin.part").exists()
    assert digests["md5"] == hashlib.md5(PAYLOAD).hexdigest()


def test_file_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "data.bin"
    dl.download_url(src.as_uri(), dest, _spec("data.bin", PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_resume_existing_part_with_range_request(tmp_path, server):
    url = server.add("/data.bin", PAYLOAD)
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:70000])
    dl.download_url(url, dest, _spec("data.bin", PAYLOAD), progress=False)
    assert server.requests == [("/data.bin", "bytes=70000-")]
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_transfer_is_resumed(tmp_path, server):
    url = server.add("/data.bin", PAYLOAD)
    server.cut_after["/data.bin"] = 50000
    dest = tmp_path / "data.bin"
    dl.download_url(url, dest, _spec("data.bin", PAYLOAD), progress=False)
    assert server.requests[0] == ("/data.bin", None)
    assert server.requests[1][1] is not None and server.requests[1][1].startswith("bytes=")
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_the_file(tmp_path, server):
    url = server.add("/data.bin", PAYLOAD)
    server.honor_range = False
    (tmp_path / "data.bin.part").write_bytes(b"x" * 1000)  # stale garbage
    dl.download_url(url, tmp_path / "data.bin", _spec("data.bin", PAYLOAD), progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_complete_part_answered_416_is_verified(tmp_path, server):
    url = server.add("/data.bin", PAYLOAD)
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    spec = RemoteFile("data.bin", (url,), md5=hashlib.md5(PAYLOAD).hexdigest())  # no size known
    dl.download_url(url, tmp_path / "data.bin", spec, progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing_and_names_the_file(tmp_path, server):
    url = server.add("/data.bin", PAYLOAD[:-1] + b"\x00")
    spec = RemoteFile("data.bin", (url,), md5=hashlib.md5(PAYLOAD).hexdigest())
    with pytest.raises(dl.ChecksumError) as err:
        dl.download_url(url, tmp_path / "data.bin", spec, progress=False)
    assert "data.bin" in str(err.value) and url in str(err.value) and "md5" in str(err.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(dl.ChecksumError, match="size"):
        dl.download_url(url, tmp_path / "data.bin", _spec("data.bin", PAYLOAD + b"extra"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_html_page_is_rejected(tmp_path, server):
    url = server.add("/CUB_200_2011.tgz", b"<!DOCTYPE html><html><body>moved</body></html>", "text/html")
    with pytest.raises(dl.DownloadError, match="HTML page"):
        dl.download_url(
            url, tmp_path / "CUB_200_2011.tgz", _spec("CUB_200_2011.tgz", PAYLOAD), progress=False
        )
    assert not (tmp_path / "CUB_200_2011.tgz").exists()


def test_fetch_file_tries_mirrors_in_order_and_reports_all_failures(tmp_path, server):
    good = server.add("/good.bin", PAYLOAD)
    spec = _spec("f.bin", PAYLOAD, urls=(server.url + "/missing", good))
    path, _ = dl.fetch_file(spec, tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and [r[0] for r in server.requests] == ["/missing", "/good.bin"]
    bad = _spec("g.bin", PAYLOAD, urls=(server.url + "/missing", server.url + "/nothing"))
    with pytest.raises(dl.DownloadError) as err:
        dl.fetch_file(bad, tmp_path, progress=False)
    assert "every mirror failed" in str(err.value) and "HTTP 404" in str(err.value)


# --------------------------------------------------------------------------- fetch (install)


@pytest.fixture
def toy_source(server, monkeypatch):
    """A dataset 'toy' in the CUB style: a .tgz with Toy/... plus a top-level file, and a plain file."""
    archive = _tgz(
        {"Toy/list.txt": b"a.png 0 train\n", "Toy/images/a.png": b"png", "attributes.txt": b"junk"}
    )
    extra = b"pairs\n"
    spec_archive = _spec("toy.tgz", archive, urls=(server.add("/toy.tgz", archive),))
    spec_extra = _spec(
        "pairs.txt", extra, urls=(server.add("/pairs.txt", extra),), extract=False, dest="Toy/pairs.txt"
    )
    source = DatasetSource(
        name="toy",
        target="Toy",
        status="auto",
        required=("list.txt", "images", "pairs.txt"),
        variants=(Variant("local", (spec_archive, spec_extra), subdir="Toy"),),
        manual="place toy.tgz in {downloads}",
    )
    monkeypatch.setitem(SOURCES, "toy", source)
    return source


def test_fetch_installs_verified_tree_and_is_idempotent(tmp_path, server, toy_source):
    root = tmp_path / "data"
    target = dl.fetch("toy", root, progress=False)
    assert target == root / "Toy"
    assert (target / "images" / "a.png").read_bytes() == b"png" and (
        target / "pairs.txt"
    ).read_bytes() == b"pairs\n"
    assert not (root / "attributes.txt").exists()  # only the subdir is moved into place
    marker = json.loads((target / dl.MARKER).read_text())
    assert set(marker["files"]) == {"toy.tgz", "pairs.txt"}
    assert sorted(p.name for p in root.iterdir()) == ["Toy"]  # no staging dirs, archives deleted
    n = len(server.requests)
    assert dl.fetch("toy", root, progress=False) == target
    assert len(server.requests) == n  # verified: not fetched again
    dl.fetch("toy", root, progress=False, force=True, keep_archives=True)
    assert len(server.requests) == n + 2 and (root / ".downloads" / "toy" / "toy.tgz").is_file()


@pytest.mark.parametrize("umask", [0o022, 0o027])
@pytest.mark.parametrize("subdir", ["", "Toy"])
def test_an_installed_tree_respects_the_umask(tmp_path, server, monkeypatch, umask, subdir):
    """Every folder and file of data/<name>, the folder itself included, as a plain mkdir / open leaves it
    (no 0700 staging folder installed as the dataset), whether or not the variant names a subdir."""
    archive = _tgz({"Toy/list.txt": b"a.png 0 train\n", "Toy/images/a.png": b"png"})
    spec = _spec("toy.tgz", archive, urls=(server.add("/toy.tgz", archive),))
    source = DatasetSource(
        "toy",
        "Toy",
        "auto",
        ("list.txt", "images") if subdir else ("Toy/list.txt",),
        (Variant("local", (spec,), subdir=subdir),),
    )
    monkeypatch.setitem(SOURCES, "toy", source)
    previous = os.umask(umask)
    try:
        target = dl.fetch("toy", tmp_path / "data", progress=False)
    finally:
        os.umask(previous)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [target, *target.rglob("*")]}
    assert len(modes) >= 5
    for path, mode in modes.items():
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == expected, f"{path}: {oct(mode)}, expected {oct(expected)} at umask {oct(umask)}"


def test_reinstall_that_fails_at_the_last_rename_keeps_the_installed_tree(
    tmp_path, server, toy_source, monkeypatch
):
    root = tmp_path / "data"
    target = dl.fetch("toy", root, progress=False)
    (target / "mine.txt").write_text("a file of the installed tree")
    real_replace = dl.os.replace

    def failing_replace(src, dst):
        if "tmp-" in str(src) and str(dst) == str(target):
            raise OSError("disk trouble")
        real_replace(src, dst)

    monkeypatch.setattr(dl.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk trouble"):
        dl.fetch("toy", root, progress=False, force=True)
    assert (target / "mine.txt").read_text() == "a file of the installed tree"
    assert sorted(p.name for p in root.iterdir() if p.name != ".downloads") == ["Toy"]


def test_fetch_with_checksum_mismatch_leaves_no_partial_file_or_tree(tmp_path, server, toy_source):
    server.files["/pairs.txt"] = b"pairz\n"  # same size, other bytes
    root = tmp_path / "data"
    with pytest.raises(dl.DownloadError) as err:
        dl.fetch("toy", root, progress=False)
    msg = str(err.value)
    assert "pairs.txt" in msg and "md5" in msg and "place toy.tgz in" in msg
    assert not (root / "Toy").exists()
    leftovers = [p for p in root.rglob("*") if p.is_file() and p.name != "toy.tgz"]
    assert leftovers == [] and not list(root.glob(".Toy.tmp-*"))


def _evil_chain(root):
    # the staging folder is <root>/.Evil.tmp-<8 random characters>: the chain is sized for that length
    return path_max_chain(root / ".Evil.tmp-xxxxxxxx")


@pytest.mark.parametrize(
    "filename, build, match",
    [
        ("chain.tar", _evil_chain, "written through the link 'a'"),
        ("two.tgz", lambda root: two_link_chain(), "written through the link 'd/up'"),
        ("through.tgz", lambda root: link_through_link(), "leaves the tree"),
        ("abs.tgz", lambda root: tar_bytes([("file", "/tmp/evil.txt", b"x")]), "absolute"),
        ("dots.tgz", lambda root: tar_bytes([("file", "Toy/../../evil.txt", b"x")]), "'..'"),
        ("hard.tgz", lambda root: tar_bytes([("hard", "h", "outside/keep.txt")]), "hard link"),
        (
            "bomb.tgz",
            lambda root: tar_bytes([("file", "zeros", bytes(5_000_000))]),
            "more than 1,000,000 bytes",
        ),
        ("bomb.zip", lambda root: zip_bytes({"zeros": bytes(5_000_000)}), "more than 1,000,000 bytes"),
    ],
)
def test_fetch_refuses_malicious_archives_and_writes_nothing_outside(
    tmp_path, server, monkeypatch, filename, build, match
):
    """Through the real ``fetch()``: the archive is verified (its checksum is pinned), then refused;
    the only thing left under the temporary folder is the downloaded archive itself."""
    root = tmp_path / "data"
    (root / "outside").mkdir(parents=True)
    (root / "outside" / "keep.txt").write_text("untouched")
    data = build(root)
    spec = _spec(filename, data, urls=(server.add("/" + filename, data),), max_bytes=1_000_000)
    monkeypatch.setitem(SOURCES, "evil", DatasetSource("evil", "Evil", "auto", (), (Variant("v", (spec,)),)))
    before = tree_snapshot(tmp_path)
    with pytest.raises(dl.DownloadError, match=match):
        dl.fetch("evil", root, progress=False)
    download = f"data/.downloads/evil/{filename}"
    assert tree_snapshot(tmp_path) - before == {"data/.downloads", "data/.downloads/evil", download}
    assert (root / "outside" / "keep.txt").read_text() == "untouched"


class ArchiveOpenings:
    """Records every archive that zipfile or tarfile is asked to open."""

    def __init__(self, monkeypatch) -> None:
        self.paths: list[str] = []
        real_zip, real_is_zip, real_tar_open = zipfile.ZipFile, zipfile.is_zipfile, tarfile.open
        seen = self.paths

        class SpyZipFile(real_zip):
            def __init__(self, file, *args, **kwargs):
                seen.append(str(file))
                super().__init__(file, *args, **kwargs)

        def is_zipfile(filename):
            seen.append(str(filename))
            return real_is_zip(filename)

        def tar_open(name=None, *args, **kwargs):
            seen.append(str(name))
            return real_tar_open(name, *args, **kwargs)

        monkeypatch.setattr(zipfile, "ZipFile", SpyZipFile)
        monkeypatch.setattr(zipfile, "is_zipfile", is_zipfile)
        monkeypatch.setattr(tarfile, "open", tar_open)


def test_cars196_zip_without_published_checksum_is_never_extracted(tmp_path, monkeypatch):
    """The real catalogue, offline: a CARS196.zip placed by hand is not opened, let alone extracted,
    and nothing but the user's own file is in data/ afterwards."""

    def offline(url, start, timeout):
        raise URLError("offline")

    monkeypatch.setattr(dl, "_open", offline)
    opened = ArchiveOpenings(monkeypatch)
    root = tmp_path / "data"
    placed = root / ".downloads" / "cars196" / "CARS196.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(zip_bytes({"CARS196/cars_annos.mat": b"mat", "CARS196/car_ims/000001.jpg": b"jpg"}))
    with pytest.raises(dl.DownloadError) as err:
        dl.fetch("cars196", root, progress=False)
    assert not any("CARS196.zip" in path for path in opened.paths)
    assert tree_snapshot(root) == {".downloads", ".downloads/cars196", ".downloads/cars196/CARS196.zip"}
    assert "CARS196.zip (ftp.cs.stanford.edu) has no published checksum" in str(err.value)


def test_entry_without_pinned_checksum_is_never_fetched_or_opened(tmp_path, server, monkeypatch):
    data = zip_bytes({"Raw/list.txt": b"x"})
    unpinned = RemoteFile("raw.zip", (server.add("/raw.zip", data),), max_members=10, max_bytes=10_000)
    monkeypatch.setitem(
        SOURCES, "raw", DatasetSource("raw", "Raw", "auto", (), (Variant("v", (unpinned,), "Raw"),))
    )
    opened = ArchiveOpenings(monkeypatch)
    root = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match="raw.zip: no pinned checksum"):
        dl.fetch("raw", root, progress=False)
    assert server.requests == [] and tree_snapshot(root) == set()
    placed = root / ".downloads" / "raw" / "raw.zip"  # the same file placed by hand: kept, not opened
    placed.parent.mkdir(parents=True)
    placed.write_bytes(data)
    with pytest.raises(dl.DownloadError, match="no pinned checksum"):
        dl.fetch("raw", root, progress=False)
    assert placed.read_bytes() == data and not (root / "Raw").exists() and opened.paths == []
    with pytest.raises(dl.ChecksumError, match="no pinned checksum"):
        dl.verify_file(placed, unpinned)


def test_fetch_falls_back_to_next_variant(tmp_path, server, monkeypatch):
    archive = _tgz({"PACK/annos.mat": b"annotations", "PACK/ims/1.jpg": b"jpg"})
    dead = RemoteFile("a.tgz", (server.url + "/gone.tgz",), md5="0" * 32, max_members=9, max_bytes=9)
    packed = _spec("pack.tgz", archive, urls=(server.add("/pack.tgz", archive),))
    source = DatasetSource(
        "toy2",
        "toy2",
        "auto",
        ("annos.mat", "ims"),
        (Variant("dead", (dead,)), Variant("tgz", (packed,), subdir="PACK")),
    )
    monkeypatch.setitem(SOURCES, "toy2", source)
    target = dl.fetch("toy2", tmp_path, progress=False)
    assert (target / "ims" / "1.jpg").read_bytes() == b"jpg"


def test_file_placed_by_hand_is_verified_and_used_offline(tmp_path, monkeypatch):
    archive = _tgz({"Hand/list.txt": b"x"})
    spec = _spec("hand.tgz", archive, urls=("http://127.0.0.1:9/unreachable",))
    monkeypatch.setitem(
        SOURCES,
        "hand",
        DatasetSource("hand", "Hand", "auto", ("list.txt",), (Variant("v", (spec,), "Hand"),)),
    )
    (tmp_path / ".downloads" / "hand").mkdir(parents=True)
    (tmp_path / ".downloads" / "hand" / "hand.tgz").write_bytes(archive)
    assert (dl.fetch("hand", tmp_path, progress=False) / "list.txt").read_bytes() == b"x"


def test_manual_datasets_print_steps_and_verify_layout(tmp_path, capsys, fake_data):
    assert dl.main(["casia_webface", "--root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "signed request" in err and str(tmp_path / "CASIA-WebFace" / "0000045" / "001.jpg") in err
    fake_data["casia"](tmp_path)
    assert dl.main(["casia_webface", "--root", str(tmp_path)]) == 0
    assert "layout looks complete" in capsys.readouterr().err
    assert dl.main(["car333", "--root", str(tmp_path)]) == 2
    assert "<path relative to the root> <label> <split: train|test>" in capsys.readouterr().err


def test_cli_list_and_unknown_name(tmp_path, capsys):
    assert dl.main(["--list", "--root", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| cub200 | auto |" in table and "| car333 | not public |" in table
    assert dl.main(["imagenet", "--root", str(tmp_path)]) == 1
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err


def test_registry_is_complete_and_every_entry_is_pinned_and_bounded():
    for name in (
        "cub200",
        "cars196",
        "sop",
        "lfw",
        "casia_webface",
        "webface_lfw",
        "flowers102",
        "car333",
        "flower610",
    ):
        assert name in SOURCES
    for source in SOURCES.values():
        for variant in source.variants:
            for spec in variant.files:
                assert spec.urls and (spec.md5 or spec.sha256), (source.name, spec.filename)
                if spec.extract:
                    assert spec.limits is not None and spec.limits.max_members > 0, (
                        source.name,
                        spec.filename,
                    )
                assert not hasattr(spec, "member_md5")  # no member-only verification
    filenames = {spec.filename for s in SOURCES.values() for v in s.variants for spec in v.files}
    assert "CARS196.zip" not in filenames
    cub = SOURCES["cub200"].variants[0].files[0]
    assert cub.md5 == "97eceeb196236b17998738112f37df78" and cub.urls[0].startswith(
        "https://data.caltech.edu/"
    )


def test_all_mirrors_failing_prints_manual_placement_with_checksums(tmp_path, server, monkeypatch):
    data = b"payload"
    spec = _spec("thing.tgz", data, urls=(server.url + "/gone",))
    monkeypatch.setitem(SOURCES, "gone", DatasetSource("gone", "Gone", "auto", (), (Variant("v", (spec,)),)))
    with pytest.raises(dl.DownloadError) as err:
        dl.fetch("gone", tmp_path, progress=False)
    msg = str(err.value)
    assert str(tmp_path / ".downloads" / "gone") in msg and hashlib.md5(data).hexdigest() in msg
    assert "HTTP 404" in msg and not (tmp_path / "Gone").exists()


def test_composite_webface_lfw_fetches_lfw_and_explains_casia(tmp_path, server, monkeypatch, capsys):
    archive = _tgz({"lfw/A/A_0001.jpg": b"j"})
    pairs = b"1\t1\nA\t1\t1\nA\t1\tA\t1\n"
    files = (
        _spec("lfw.tgz", archive, urls=(server.add("/lfw.tgz", archive),)),
        _spec("pairs.txt", pairs, urls=(server.add("/pairs.txt", pairs),), extract=False, dest="pairs.txt"),
    )
    lfw = DatasetSource("lfw", "LFW", "auto", ("lfw", "pairs.txt"), (Variant("local", files),))
    monkeypatch.setitem(SOURCES, "lfw", lfw)
    assert dl.main(["webface_lfw", "--root", str(tmp_path), "--no-progress"]) == 2
    assert (tmp_path / "LFW" / "lfw" / "A" / "A_0001.jpg").is_file()
    assert "signed request" in capsys.readouterr().err
