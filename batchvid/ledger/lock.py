"""One process per batch on an SQLite ledger: the batch lock.

Two runs of one batch on one SQLite file would each think the other's
in-flight creates were interrupted, so the second is refused instead; so is
``ledger copy`` of a batch that a run holds.  The lock is an ``flock`` on a
file beside the ledger: it dies with the process (kill -9 included), so it
never needs cleaning up.  A shared ledger (PostgreSQL) takes no lock: its
workers share a batch by leases (:mod:`batchvid.ledger.leases`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import LedgerError
from .store import Ledger

__all__ = ["batch_lock"]


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
    lock_path = real.parent / f".{real.name}.{batch}.lock"
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
