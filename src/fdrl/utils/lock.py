"""Exclusive locks on folders fdrl writes into (a run folder, a bundle being written).

``fcntl.flock`` on a lock file: the operating system releases it when the process
ends, however it ends (kill -9 included), so a lock is never left stale; the file
only records the holder's pid for the message. Re-entrant within a process (a
``--resume`` in the same Python process takes the lock it already holds).

On systems without ``fcntl`` (Windows) locking is skipped.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from fdrl.errors import RunError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".fdrl.lock"

_held: dict[str, tuple[int, int]] = {}  # lock file -> (fd, how many holders in this process)


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def acquire(lock_file: str | os.PathLike, what: str, error=RunError,
            folder: str | os.PathLike | None = None) -> None:
    """Take the exclusive lock ``lock_file`` (created if missing) or raise ``error``
    ``<folder>: another fdrl process (pid N) is using this <what>`` (``folder``: the
    lock file's folder unless given)."""
    if fcntl is None:
        return
    key = os.path.abspath(lock_file)
    if key in _held:
        fd, n = _held[key]
        _held[key] = (fd, n + 1)
        return
    while True:
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise error(f"{folder if folder is not None else Path(lock_file).parent}: another fdrl process ({holder}) is using this "
                        f"{what}; wait for it to finish or stop it") from None
        except OSError:  # a file system without flock (some network mounts): go on unlocked
            os.close(fd)
            return
        try:  # the holder before us may have removed the file as it let go: lock the new one
            if os.fstat(fd).st_ino == os.stat(key).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = (fd, 1)


def release(lock_file: str | os.PathLike, remove: bool = False) -> None:
    """Give back one hold of ``lock_file``; the last one unlocks (and, with ``remove``,
    deletes the file first, while it is still held)."""
    key = os.path.abspath(lock_file)
    if key not in _held:
        return
    fd, n = _held[key]
    if n > 1:
        _held[key] = (fd, n - 1)
        return
    del _held[key]
    if remove:
        with contextlib.suppress(OSError):
            os.unlink(key)
    os.close(fd)  # closing the last descriptor releases the flock


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run folder", error=RunError) -> Iterator[Path]:
    """Hold the lock of ``folder`` (``folder/.fdrl.lock``) for the ``with`` block; the
    lock file is removed when the block ends (a killed process leaves it, unlocked)."""
    lock_file = Path(folder) / LOCK_NAME
    acquire(lock_file, what, error)
    try:
        yield lock_file
    finally:
        release(lock_file, remove=True)
