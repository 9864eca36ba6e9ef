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
#: Descriptors of database files held for batch locks, by path (see :func:`_database_fd`).
_DATABASE_FDS: dict[str, int] = {}
#: The batch locks this process holds: (descriptor, offset).
_HELD: set[tuple[int, int]] = set()


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
    writing, the lock file beside the path is all there is.  Released by unlocking,
    never by closing (see :func:`_database_fd`)."""
    setlk = getattr(fcntl, "F_OFD_SETLK", None)
    fd = _database_fd(database) if setlk is not None else None
    if setlk is None or fd is None:
        yield
        return
    offset = _OFD_BASE + int(hashlib.sha256(batch.encode()).hexdigest()[:12], 16)
    if (fd, offset) in _HELD:  # this process's own lock: one description does not conflict
        raise LedgerError(f"batch {batch!r} is already being run by this process")
    try:
        fcntl.fcntl(fd, setlk, struct.pack("@hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise LedgerError(
            f"batch {batch!r} is already being run by another batchvid process, through "
            f"another path to the same ledger file ({database} is hard-linked, bind-mounted "
            "or reached another way); wait for it or stop it first"
        ) from None
    _HELD.add((fd, offset))
    try:
        yield
    finally:
        _HELD.discard((fd, offset))
        fcntl.fcntl(fd, setlk, struct.pack("@hhqqi4x", fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0))


def _database_fd(database: Path) -> int | None:
    """This process's descriptor of the database file for batch locks, opened once and
    never closed: closing any descriptor of a file drops every POSIX lock the process
    holds on it, SQLite's own included (``None``: it cannot be opened for writing)."""
    key = str(database)
    if key not in _DATABASE_FDS:
        try:
            _DATABASE_FDS[key] = os.open(database, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
    return _DATABASE_FDS[key]


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
