"""One process per batch on an SQLite ledger: the batch lock.

Two runs of one batch on one SQLite file would each think the other's
in-flight creates were interrupted, so the second is refused instead; so is
``ledger copy`` of a batch that a run holds.  The lock is held on the database
file itself (one byte of it, per batch: a hard link or a bind mount is the same
file), and on a file beside the ledger that names the holder's pid; both die
with the process (kill -9 included), so they never need cleaning up.  A shared
ledger (PostgreSQL) takes no lock: its workers share a batch by leases
(:mod:`batchvid.ledger.leases`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from ..errors import LedgerError
from .store import Ledger

__all__ = ["batch_lock"]

#: Where the batch locks sit in the database file: far past every byte SQLite locks
#: (its own sit at 1 GiB), each batch at its own offset.
_OFD_BASE: Final = 1 << 62


@contextlib.contextmanager
def batch_lock(ledger: Ledger | Path, batch: str) -> Iterator[None]:
    """Hold an exclusive lock on one batch of an SQLite ledger (see the module docstring);
    a LedgerError at once if another process holds it."""
    if isinstance(ledger, Ledger):
        if ledger.target.path is None:
            yield
            return
        ledger_path = ledger.target.path
    else:
        ledger_path = ledger
    real = ledger_path.resolve()  # one lock however the ledger's path is spelled (symlinks)
    with _file_lock(real, batch), _pid_lock(real, batch):
        yield


@contextlib.contextmanager
def _file_lock(database: Path, batch: str) -> Iterator[None]:
    """A lock on one byte of the database file itself (an open file description lock,
    far past the bytes SQLite locks): the file's identity, not its name, so a hard
    link, a bind mount or another directory's path to it meet the same lock.  Where
    the system has no such locks (not Linux), or the file cannot be opened for
    writing, the lock file beside the path is all there is."""
    setlk = getattr(fcntl, "F_OFD_SETLK", None)
    try:
        fd = os.open(database, os.O_RDWR)
    except OSError:
        fd = -1
    if setlk is None or fd < 0:
        if fd >= 0:
            os.close(fd)
        yield
        return
    offset = _OFD_BASE + int(hashlib.sha256(batch.encode()).hexdigest()[:12], 16)
    request = struct.pack("@hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    try:
        try:
            fcntl.fcntl(fd, setlk, request)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise LedgerError(
                f"batch {batch!r} is already being run by another batchvid process, through "
                f"another path to the same ledger file ({database} is hard-linked, bind-mounted "
                "or reached another way); wait for it or stop it first"
            ) from None
        yield
    finally:
        os.close(fd)  # the lock goes with its open file description


@contextlib.contextmanager
def _pid_lock(database: Path, batch: str) -> Iterator[None]:
    """The lock file beside the ledger, with the pid of the process that holds it."""
    lock_path = database.parent / f".{database.name}.{batch}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise LedgerError(
                f"batch {batch!r} is already being run by another batchvid process "
                f"(pid {holder}); wait for it or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
