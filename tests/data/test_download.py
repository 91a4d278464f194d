"""Download/verify/extract without network: a local HTTP server on 127.0.0.1 (Range/resume) and file:// URLs."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from npair.data import download as dl
from npair.data.sources import SOURCES, DatasetSource, RemoteFile, Variant


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


# --------------------------------------------------------------------------- safe extraction


@pytest.mark.parametrize(
    "members, links, reason",
    [
        ({"ok/a.txt": b"a", "../evil.txt": b"x"}, None, "'..'"),
        ({"ok/../../evil.txt": b"x"}, None, "'..'"),
        ({"/tmp/evil.txt": b"x"}, None, "absolute"),
        ({"ok/a.txt": b"a"}, {"ok/link": ("../../etc/passwd", tarfile.SYMTYPE)}, "leaves the tree"),
        ({"ok/a.txt": b"a"}, {"ok/link": ("/etc/passwd", tarfile.SYMTYPE)}, "leaves the tree"),
        ({"ok/a.txt": b"a"}, {"ok/hard": ("../outside", tarfile.LNKTYPE)}, "leaves the tree"),
        ({"ok/a.txt": b"a"}, {"ok/dev": ("", tarfile.CHRTYPE)}, "device"),
    ],
)
def test_unsafe_tar_members_are_refused_before_anything_is_written(tmp_path, members, links, reason):
    archive = tmp_path / "bad.tgz"
    archive.write_bytes(_tgz(members, links))
    dest = tmp_path / "out" / "deep"
    with pytest.raises(dl.UnsafeArchiveError, match=reason) as err:
        dl.safe_extract(archive, dest)
    assert "bad.tgz" in str(err.value)
    assert (
        not dest.exists()
        and not (tmp_path / "evil.txt").exists()
        and not (tmp_path / "out" / "evil.txt").exists()
    )


def test_safe_links_inside_the_tree_are_allowed(tmp_path):
    archive = tmp_path / "ok.tgz"
    archive.write_bytes(_tgz({"d/a.txt": b"a"}, {"d/sub/link": ("../a.txt", tarfile.SYMTYPE)}))
    dl.safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "sub" / "link").read_bytes() == b"a"


def test_unsafe_zip_member_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/a.txt", "a")
        zf.writestr("../evil.txt", "x")
    with pytest.raises(dl.UnsafeArchiveError, match=r"'\.\./evil\.txt'"):
        dl.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


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


def test_fetch_refuses_archive_with_traversal_member(tmp_path, server, toy_source, monkeypatch):
    evil = _tgz({"Toy/list.txt": b"x", "Toy/../../evil.txt": b"x"})
    spec = _spec("toy.tgz", evil, urls=(server.add("/evil.tgz", evil),))
    bad = DatasetSource("toy", "Toy", "auto", ("list.txt",), (Variant("evil", (spec,), subdir="Toy"),))
    monkeypatch.setitem(SOURCES, "toy", bad)
    root = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match="refusing member 'Toy/../../evil.txt'"):
        dl.fetch("toy", root, progress=False)
    assert not (root / "Toy").exists() and not (tmp_path / "evil.txt").exists()
    assert not list(root.glob(".Toy.tmp-*"))


def test_fetch_falls_back_to_next_variant_and_checks_member_md5(tmp_path, server, monkeypatch):
    archive = _tgz({"PACK/annos.mat": b"annotations", "PACK/ims/1.jpg": b"jpg"})
    dead = RemoteFile("a.tgz", (server.url + "/gone.tgz",), md5="0" * 32)
    packed = RemoteFile(
        "pack.tgz",
        (server.add("/pack.tgz", archive),),
        member_md5={"PACK/annos.mat": hashlib.md5(b"annotations").hexdigest()},
    )
    source = DatasetSource(
        "toy2",
        "toy2",
        "auto",
        ("annos.mat", "ims"),
        (Variant("dead", (dead,)), Variant("zip", (packed,), subdir="PACK")),
    )
    monkeypatch.setitem(SOURCES, "toy2", source)
    target = dl.fetch("toy2", tmp_path, progress=False)
    assert (target / "ims" / "1.jpg").read_bytes() == b"jpg"
    wrong = RemoteFile("pack.tgz", packed.urls, member_md5={"PACK/annos.mat": "f" * 32})
    monkeypatch.setitem(
        SOURCES, "toy3", DatasetSource("toy3", "toy3", "auto", ("ims",), (Variant("v", (wrong,), "PACK"),))
    )
    with pytest.raises(dl.DownloadError, match="member PACK/annos.mat has md5"):
        dl.fetch("toy3", tmp_path, progress=False)
    assert not (tmp_path / "toy3").exists()


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


def test_registry_is_complete_and_verifiable():
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
                assert spec.verifiable and spec.urls, (source.name, spec.filename)
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
