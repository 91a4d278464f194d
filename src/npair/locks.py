"""Locks on run directories and table builds, so that two processes never train into one run directory at
once and two builds of one table do not interleave.

A lock is ``fcntl.flock`` on a lock file: ``<run_dir>/.lock`` for a run directory (:func:`run_lock`),
``<outputs>/tables/.<table>.lock`` for a table build (:func:`table_lock`). The holder writes its process
id, host and start time into the file, which the processes that wait read to say whom they wait for. A
lock file whose path changed while a process waited for it (a run directory moved aside) is let go and the
file now at the path taken instead. The kernel releases a flock when its process ends, however it ends, so
a killed process never leaves a lock behind. On network file systems flock is only as good as the file
system's lock support (Linux NFS maps it to byte-range locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_FILE = ".lock"  # in a run directory


def describe_holder(path: Path) -> str:
    """Who holds the lock file ``path``, as its holder wrote it ("process 123 on host h since 12:00:01")."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"process {info['pid']} on {info.get('host', '?')} since {since}"


class Lock:
    """An exclusive lock held on the lock file ``path`` (created with its folder); :func:`locked` holds one
    for a block."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> bool:
        """Take the lock; True once held. When another process holds it: return False (``wait=False``), or
        call ``on_wait(holder)`` once and block until it is free."""
        said = False
        while self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not wait:
                        os.close(fd)
                        return False
                    if on_wait is not None and not said:
                        on_wait(describe_holder(self.path))
                        said = True
                    fcntl.flock(fd, fcntl.LOCK_EX)
                if not _is_file_at(fd, self.path):  # moved away while we waited: lock what is there now
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no holder to name any more
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        here, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def run_lock(run_dir: str | Path) -> Lock:
    """The lock of a run directory: ``<run_dir>/.lock``."""
    return Lock(Path(run_dir) / LOCK_FILE)


def table_lock(tables_dir: str | Path, name: str) -> Lock:
    """The lock of building table ``name``: ``<tables_dir>/.<name>.lock``."""
    return Lock(Path(tables_dir) / f".{name}.lock")


def holder(path: str | Path) -> str | None:
    """Who holds the lock file ``path`` right now (:func:`describe_holder`), or None when nobody does (or
    there is no such file: nothing is created)."""
    path = Path(path)
    if not path.exists():
        return None
    probe = Lock(path)
    if probe.acquire(wait=False):
        probe.release()
        return None
    return describe_holder(path)


@contextlib.contextmanager
def locked(lock: Lock, on_wait: Callable[[str], None] | None = None, enabled: bool = True) -> Iterator[None]:
    """Hold ``lock`` for the block, waiting (after ``on_wait(holder)``) while another process holds it;
    nothing when not ``enabled`` (ranks other than 0)."""
    if not enabled:
        yield
        return
    lock.acquire(wait=True, on_wait=on_wait)
    try:
        yield
    finally:
        lock.release()
