"""The ledger as one object: an open database and its roles.

:class:`Ledger` opens the database a :class:`~.target.LedgerTarget` names
(SQLite or PostgreSQL: :func:`open_engine`) and hands out its roles, each an
object with one job:

- ``plans``: batches and jobs as planned, the user's retries, a run's start;
- ``moves``: every state change a run makes to a job (:mod:`.submits`,
  :mod:`.transitions`, :mod:`.attempts`);
- ``queue``: the work a running batch takes next, and when to look again;
- ``leases``: workers sharing a batch on PostgreSQL;
- ``buckets``: the rate limiter state workers of one API key share;
- ``reads``: everything ``status``, reports and checks read.

One database holds many batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from ..errors import LedgerError
from .attempts import AttemptMoves
from .buckets import Buckets
from .core import Context
from .engine import Engine
from .leases import Leases
from .plans import Plans
from .queue import WorkQueue
from .reads import Reads
from .submits import SubmitMoves
from .target import DEFAULT_LEDGER, LedgerTarget, ledger_target
from .transitions import TaskMoves

__all__ = ["DEFAULT_LEDGER", "Ledger", "Moves", "open_engine", "open_ledger"]


class Moves(SubmitMoves, TaskMoves, AttemptMoves):
    """Every state change a run makes to a job, each a named, checked, atomic write."""


def open_engine(
    target: LedgerTarget, *, create: bool = True, read_only: bool = False, check: bool = False
) -> Engine:
    """The open database ``target`` names (see :class:`Ledger` for the flags)."""
    if target.url is not None:
        from .postgres import PgEngine  # psycopg: only for a PostgreSQL ledger

        return PgEngine(target, create=create, read_only=read_only, check=check)
    assert target.path is not None
    from .sqlite import SqliteEngine

    return SqliteEngine(target.path, create=create, read_only=read_only, check=check)


class Ledger:
    """One ledger, open and migrated, by its roles.  Thread-safe; use as a context manager.

    ``target``: a file path (SQLite) or a ``postgresql://`` URL.  ``clock``
    returns unix seconds (``time.time``); tests inject their own.
    ``create=False`` refuses a missing ledger; ``check=True`` a damaged one.
    ``read_only=True`` opens an existing, current ledger for queries only
    (reports beside a running batch): nothing is created or migrated, and every
    write raises :class:`LedgerError`.
    """

    def __init__(
        self,
        target: str | Path | LedgerTarget,
        *,
        clock: Callable[[], float] = time.time,
        create: bool = True,
        read_only: bool = False,
        check: bool = False,
    ) -> None:
        self.target = ledger_target(target)
        self.engine = open_engine(self.target, create=create, read_only=read_only, check=check)
        self._context = Context(self.engine, clock)
        self.plans = Plans(self._context)
        self.moves = Moves(self._context)
        self.queue = WorkQueue(self._context)
        self.leases = Leases(self._context)
        self.buckets = Buckets(self._context)
        self.reads = Reads(self._context)

    @property
    def clock(self) -> Callable[[], float]:
        """The clock every write stamps by (a run puts its steady clock here)."""
        return self._context.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._context.clock = clock

    @property
    def where(self) -> str:
        """Where the ledger is, safe to print (a URL without its password)."""
        return self.engine.where

    @property
    def path(self) -> Path | None:
        """The ledger's file (SQLite); ``None`` for a PostgreSQL ledger."""
        return self.target.path

    @property
    def identity(self) -> str:
        """A name for this ledger that does not change with how it is reached."""
        return self.engine.identity

    @property
    def shared(self) -> bool:
        """Many processes may run one batch here at once (PostgreSQL)."""
        return self.engine.shared

    @property
    def worker(self) -> str | None:
        """This process's worker id while it runs a batch on a shared ledger."""
        return self._context.worker

    def close(self) -> None:
        """Close the database (idempotent)."""
        self.engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Ledger {self.where}>"


def open_ledger(
    target: str | Path | LedgerTarget, *, create: bool = True, check: bool = False
) -> Ledger:
    """Open the ledger ``target`` names; a clear LedgerError when a file is missing and
    ``create`` is off.  ``check``: refuse a damaged ledger, as a run does before it
    sends anything."""
    where = ledger_target(target)
    if not create and where.path is not None and not where.path.exists():
        raise LedgerError(f"no ledger at {where.path} (run a batch first, or pass --ledger)")
    return Ledger(where, create=create, check=check)
