"""archives.py: malicious tar and zip archives are refused before anything is written, and nothing ever
lands outside the destination; bounds on members and bytes; benign links and hard links still work."""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from npair.data.archives import (
    ExtractionLimits,
    UnsafeArchiveError,
    check_archive,
    check_links_inside,
    safe_extract,
)
from tests.data.archive_fixtures import (
    late_link,
    link_through_link,
    path_max_chain,
    tar_bytes,
    tree_snapshot,
    two_link_chain,
    zip_bytes,
)

LIMITS = ExtractionLimits(max_members=1000, max_bytes=10_000_000)


@pytest.fixture
def box(tmp_path):
    """A temporary folder with ``outside/`` (a real folder an escape would write into); archives are
    extracted into ``box/dest``, which does not exist yet."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("untouched")
    return tmp_path


def _refused(box: Path, data: bytes, match: str, name: str = "bad.tgz", limits=LIMITS) -> str:
    """Extracting ``data`` into ``box/dest`` raises naming the archive; nothing at all is written."""
    archive = box / name
    archive.write_bytes(data)
    before = tree_snapshot(box)
    with pytest.raises(UnsafeArchiveError, match=match) as err:
        safe_extract(archive, box / "dest", limits)
    assert name in str(err.value)
    assert tree_snapshot(box) == before, "something was written"
    assert (box / "outside" / "keep.txt").read_text() == "untouched"
    with pytest.raises(UnsafeArchiveError, match=match):
        check_archive(archive, limits)
    return str(err.value)


@pytest.mark.parametrize(
    "entries, reason",
    [
        ([("file", "ok/a.txt", b"a"), ("file", "../evil.txt", b"x")], "'..'"),
        ([("file", "ok/../../evil.txt", b"x")], "'..'"),
        ([("file", "/tmp/evil.txt", b"x")], "absolute"),
        ([("file", "C:/evil.txt", b"x")], "absolute"),
        ([("file", "ok\\..\\..\\evil.txt", b"x")], "'..'"),
        ([("file", "ok/a.txt", b"a"), ("sym", "ok/link", "../../etc/passwd")], "leaves the tree"),
        ([("file", "ok/a.txt", b"a"), ("sym", "ok/link", "/etc/passwd")], "absolute target"),
        ([("file", "ok/a.txt", b"a"), ("sym", "ok/link", "../..")], "leaves the tree"),
        ([("file", "ok/a.txt", b"a"), ("hard", "ok/hard", "../outside/keep.txt")], "'..'"),
        ([("file", "ok/a.txt", b"a"), ("hard", "ok/hard", "/etc/passwd")], "absolute"),
        ([("file", "ok/a.txt", b"a"), ("chr", "ok/dev")], "device"),
        ([("file", "ok/a.txt", b"a"), ("fifo", "ok/fifo")], "fifo"),
    ],
)
def test_absolute_dotdot_escaping_links_and_devices_are_refused(box, entries, reason):
    _refused(box, tar_bytes(entries), reason)


def test_two_link_chain_is_refused(box):
    """``d/up -> ..`` then ``d/up/x -> ../outside``: a lexical check of each link sees only targets inside."""
    msg = _refused(box, two_link_chain(), "written through the link 'd/up'")
    assert "'d/up/x'" in msg


def test_link_whose_target_passes_through_another_link_is_refused(box):
    _refused(box, link_through_link(), r"'x': link to 'd/up/\.\./outside' leaves the tree")


def test_link_made_unsafe_by_a_later_member_is_refused(box):
    _refused(box, late_link(), "'a': link to 'b/..' leaves the tree")


def test_path_max_symlink_chain_is_refused(box):
    """CVE-2025-4517's chain: the expanded path passes PATH_MAX, which ``os.path.realpath`` gives up on."""
    _refused(box, path_max_chain(box / "dest"), "written through the link 'a'", name="chain.tar")


def test_path_max_chain_is_a_real_escape_for_this_pythons_tarfile_filter(box):
    """Shows the fixture is a real attack: tarfile's own ``data`` filter lets it write outside on an
    unpatched Python (3.11.7 here). Everything it writes stays inside this test's temporary folder."""
    archive = box / "chain.tar"
    archive.write_bytes(path_max_chain(box / "stdlib"))
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(box / "stdlib", filter="data")
        except (tarfile.FilterError, OSError) as exc:
            pytest.skip(f"this Python's tarfile refuses the chain itself ({type(exc).__name__})")
    assert (box / "outside" / "newfile").read_bytes() == b"written outside"


def test_unsafe_links_are_refused_on_a_second_extraction_into_the_same_tree(box):
    """Two archives of one dataset share a staging folder: the second may not write through, or
    resolve through, the first one's links."""
    first = box / "first.tgz"
    first.write_bytes(tar_bytes([("dir", "d"), ("sym", "d/up", "..")]))
    safe_extract(first, box / "dest", LIMITS)
    second = box / "second.tgz"
    second.write_bytes(tar_bytes([("file", "d/up/evil.txt", b"x")]))
    with pytest.raises(UnsafeArchiveError, match="not a folder"):
        safe_extract(second, box / "dest", LIMITS)
    third = box / "third.tgz"
    third.write_bytes(tar_bytes([("sym", "x", "d/up/../outside")]))
    with pytest.raises(UnsafeArchiveError, match="leaves the tree"):
        safe_extract(third, box / "dest", LIMITS)
    assert sorted(os.listdir(box / "outside")) == ["keep.txt"]


@pytest.mark.parametrize(
    "entries, reason",
    [
        # a hard link to a file that the archive did not create
        ([("hard", "h", "outside/keep.txt")], "not a regular file created earlier"),
        # through a link inside the tree
        (
            [("dir", "d"), ("file", "d/f", b"f"), ("sym", "l", "d"), ("hard", "h", "l/f")],
            "not a regular file",
        ),
        # to a symlink
        ([("file", "f", b"f"), ("sym", "s", "f"), ("hard", "h", "s")], "not a regular file"),
        # the CVE's pattern: link, then overwrite the linked file with a second member of the same name
        ([("file", "f", b"f"), ("hard", "h", "f"), ("file", "h", b"overwrite")], "replace an earlier member"),
    ],
)
def test_unsafe_hard_links_are_refused(box, entries, reason):
    _refused(box, tar_bytes(entries), reason)


def test_member_count_and_size_are_bounded(box):
    many = tar_bytes([("file", f"f{i}.txt", b"x") for i in range(30)])
    _refused(box, many, "more than 20 members", limits=ExtractionLimits(20, 10_000))
    bomb = tar_bytes([("file", "zeros.bin", bytes(20_000_000))])  # 20 MB of zeros, about 20 KB packed
    assert len(bomb) < 100_000
    _refused(box, bomb, "more than 1,000,000 bytes", limits=ExtractionLimits(10, 1_000_000))


def test_zip_bomb_is_refused_before_anything_is_written(box):
    bomb = zip_bytes({"a.bin": bytes(10_000_000), "b.bin": bytes(10_000_000)})
    assert len(bomb) < 100_000
    _refused(box, bomb, "more than 1,000,000 bytes", name="bomb.zip", limits=ExtractionLimits(10, 1_000_000))


def test_zip_member_larger_than_declared_never_writes_more(box):
    """A zip whose headers understate a member's size: at most the declared bytes are written."""
    data = zip_bytes({"a.bin": bytes(100_000)})
    declared = (100_000).to_bytes(4, "little")
    assert data.count(declared) == 2  # local header and central directory
    archive = box / "liar.zip"
    archive.write_bytes(data.replace(declared, (10).to_bytes(4, "little")))
    with pytest.raises((UnsafeArchiveError, zipfile.BadZipFile)):
        safe_extract(archive, box / "dest", LIMITS)
    written = box / "dest" / "a.bin"
    assert not written.exists() or written.stat().st_size <= 10


@pytest.mark.parametrize(
    "members, symlinks, reason",
    [
        ({"ok/a.txt": b"a", "../evil.txt": b"x"}, None, r"'\.\./evil\.txt'"),
        ({"/abs.txt": b"x"}, None, "absolute"),
        ({"ok/a.txt": b"a"}, {"ok/link": "../../outside"}, "symbolic link"),
        ({"a": b"file", "a/b.txt": b"x"}, None, "'a' is a file"),
    ],
)
def test_unsafe_zip_members_are_refused(box, members, symlinks, reason):
    _refused(box, zip_bytes(members, symlinks), reason, name="bad.zip")


def test_benign_archives_extract_with_links_and_hard_links(tmp_path):
    archive = tmp_path / "ok.tgz"
    archive.write_bytes(
        tar_bytes(
            [
                ("dir", "./"),
                ("file", "./d/a.txt", b"a"),
                ("sym", "d/sub/link", "../a.txt"),
                ("sym", "alias", "d"),
                ("hard", "d/hard.txt", "d/a.txt"),
                ("dir", "d"),  # a repeated folder is fine
            ]
        )
    )
    safe_extract(archive, tmp_path / "out", LIMITS)
    out = tmp_path / "out"
    assert (out / "d" / "sub" / "link").read_bytes() == b"a"
    assert (out / "alias" / "a.txt").read_bytes() == b"a"
    assert os.stat(out / "d" / "hard.txt").st_ino == os.stat(out / "d" / "a.txt").st_ino
    zipped = tmp_path / "ok.zip"
    zipped.write_bytes(zip_bytes({"z/a.txt": b"za", "z/": b""}))
    safe_extract(zipped, tmp_path / "zout", LIMITS)
    assert (tmp_path / "zout" / "z" / "a.txt").read_bytes() == b"za"


def test_check_links_inside_walks_the_disk_tree(tmp_path):
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    os.symlink("..", tree / "d" / "up")
    check_links_inside(tree)  # d/up -> .. is the tree itself
    os.symlink("d/up/..", tree / "x")
    with pytest.raises(UnsafeArchiveError, match="leaves the tree"):
        check_links_inside(tree)
    os.remove(tree / "x")
    os.symlink("loop2", tree / "loop1")
    os.symlink("loop1", tree / "loop2")
    with pytest.raises(UnsafeArchiveError, match="a loop"):
        check_links_inside(tree)
