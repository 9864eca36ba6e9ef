"""The seam between the ledger and its database: what every backend provides.

The ledger's roles (plans, moves, reads, the work queue, leases) write their
SQL once, in SQLite's spelling with named (``:name``) or positional (``?``)
parameters, against an :class:`Engine`.  What differs between databases sits
in one place per backend (:mod:`~batchvid.ledger.sqlite`,
:mod:`~batchvid.ledger.postgres`): opening and migrating, transactions and
durability, parameter style, errors, and the few fragments of SQL a
:class:`Dialect` holds (column types, row locks, how work is taken).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Dialect", "Engine", "Params", "Tx", "in_pages"]

#: Statement parameters: a mapping for ``:name``, a sequence for ``?``.
Params = Mapping[str, Any] | Sequence[Any]


@dataclass(frozen=True, slots=True)
class Dialect:
    """The fragments of SQL that differ between backends.

    ``real``, ``int`` and ``id``: column types for schema steps (a float, a
    64-bit integer, an auto-numbered primary key).  ``lock``: appended to a
    ``SELECT`` of rows about to be changed, so concurrent writers queue on them
    (empty where a writer holds the whole database).  ``db_now``: the database
    server's clock, in unix seconds (leases are measured on it, so workers on
    machines whose clocks disagree still agree on when a lease ends).
    ``skip_locked``: the same for a ``SELECT`` of rows any one of which may be
    left for later (a row another writer holds is skipped, not waited for).
    ``serialize``: a statement (one ``?``: a name) that makes the transactions
    naming the same thing take turns, for checks across rows (empty where one
    writer holds the whole database anyway).  ``end_gone``: a statement that
    ends the database sessions of workers whose leases have ended, returning
    how many (empty where there are no other workers' sessions).
    ``columns``: a statement (one ``?``: a table) listing the table's columns.
    ``hint(index)``: tells the planner which index a query over ``jobs`` should
    use (SQLite's ``INDEXED BY``; nothing where the planner needs no help).
    ``take(columns, source, where, order)``: the statement that takes up to
    ``:limit`` jobs of work (see :mod:`batchvid.ledger.queue`).
    """

    name: str
    real: str
    int: str
    id: str
    lock: str
    skip_locked: str
    serialize: str
    end_gone: str
    columns: str
    db_now: str
    hint: Callable[[str], str]
    take: Callable[[str, str, str, str], str]


class Tx(Protocol):
    """One open write transaction (see :meth:`Engine.write`)."""

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; how many rows it changed."""

    def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        """Run a statement once per parameter set; how many rows they changed in all."""

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Every row a statement returns, as tuples."""

    def one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """The first row a statement returns, or ``None``."""


class Engine(Protocol):
    """An open ledger database.  Thread-safe: any thread may read or write."""

    dialect: Dialect
    #: Where the ledger is, for messages (a path, or a URL without its password).
    where: str
    #: A name for this ledger that stays the same however it is reached (its file's
    #: resolved path; a PostgreSQL ledger's database name and id).
    identity: str
    #: Many processes may work one batch at once (PostgreSQL); else one per batch.
    shared: bool
    read_only: bool

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Every row of a read, as tuples (outside any write transaction)."""

    def write(self, *, durable: bool = False) -> AbstractContextManager[Tx]:
        """One write transaction: committed when the block ends, rolled back if it raises.

        ``durable``: the commit must survive a power cut, not only a kill
        (a create's intent and the task id it returned).
        """

    def become(self, worker: str, bound_s: float) -> None:
        """This process is ``worker`` from now on (its sessions named so), holding no lock
        idle, and waiting for none, longer than ``bound_s`` (a worker's lease sets it: one
        cut off mid-transaction must not hold up the others past their leases).  Where
        one process has the ledger, nothing to do."""

    def integrity(self) -> list[str]:
        """What the database itself finds wrong with its storage (empty: nothing)."""

    def close(self) -> None:
        """Close (idempotent)."""


def in_pages(
    fetch: Callable[[tuple[Any, ...]], list[tuple[Any, ...]]],
    start: tuple[Any, ...],
    key: Callable[[tuple[Any, ...]], tuple[Any, ...]],
    size: int,
) -> Iterator[tuple[Any, ...]]:
    """Every row of a keyset-paged query: ``fetch(after)`` returns up to ``size`` rows
    following ``after``; ``key(row)`` is where the next page starts.  Between pages the
    database is free, so a long report never holds up a writer."""
    after = start
    while True:
        page = fetch(after)
        yield from page
        if len(page) < size:
            return
        after = key(page[-1])
