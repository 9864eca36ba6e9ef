"""Copying batches between ledgers: a batch started on a laptop moves to the team's database.

:func:`copy_batches` copies whole batches, from any ledger to any other
(SQLite to PostgreSQL and back): the batch, every job as it stands (task ids,
videos, probe facts, retries, extra takes) and every event, so ``status``,
``report`` and ``run`` carry on there as if the batch had always been there.
What belongs to a running process is not copied: workers, their claims, the
shared rate buckets.

The copy is one transaction on the destination: all of it, or (on any error,
an interrupt included) nothing.  The source is only read.  Job ids are the
destination's own (its ids go on from its own jobs), and every reference to
a job (events, extra takes) follows its job.

Refused, with nothing written: a batch the source does not have, one the
destination has already (a copy never merges two histories), one that a
process works on at the source (a live worker lease; on SQLite the caller
checks the batch lock), and a ledger copied onto itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import LedgerError
from .engine import Engine, Tx, in_pages
from .store import Ledger

__all__ = ["Copied", "copy_batches"]

#: Rows read from the source per page (the source is never held for long).
PAGE: Final = 2000
#: Columns of a job that belong to the process working on it, not to the job.
_PROCESS_COLUMNS: Final = frozenset({"id", "claimed_by", "extra_of"})


@dataclass(frozen=True, slots=True)
class Copied:
    """One batch copied: its name, and how many jobs and events came with it."""

    batch: str
    jobs: int
    events: int


def copy_batches(
    source: Ledger,
    dest: Ledger,
    names: Sequence[str] = (),
    *,
    progress: Callable[[str, int], None] | None = None,
) -> list[Copied]:
    """Copy batches ``names`` (every batch, when empty) from ``source`` to ``dest``.

    ``progress(batch, rows)`` hears how many rows of a batch have been copied,
    page by page.  Raises :class:`~batchvid.errors.LedgerError` for a copy that
    must not happen (see the module docstring), before anything is written.
    """
    if source.identity == dest.identity:
        raise LedgerError(f"{source.where} and {dest.where} are the same ledger")
    wanted = list(dict.fromkeys(names)) or [b.name for b in source.reads.batches()]
    if not wanted:
        raise LedgerError(f"the ledger {source.where} has no batches to copy")
    for name in wanted:
        _check(source, dest, name)
    copied = []
    with dest.engine.write(durable=True) as tx:
        for name in wanted:
            copied.append(_Copy(source.engine, tx, dest.engine, name, progress).run())
    return copied


def _check(source: Ledger, dest: Ledger, name: str) -> None:
    if source.reads.get_batch(name) is None:
        raise LedgerError(f"the ledger {source.where} has no batch named {name!r}")
    if dest.reads.get_batch(name) is not None:
        raise LedgerError(
            f"the ledger {dest.where} has a batch named {name!r} already; a copy never "
            "merges two batches (copy it to another ledger, or rename the batch in its manifest)"
        )
    live = source.leases.live(name)
    if live:
        who = ", ".join(f"{w.host} pid {w.pid}" for w in live)
        raise LedgerError(
            f"batch {name!r} is being run at {source.where} ({len(live)} worker(s): {who}); "
            "stop them, or wait until their leases end, then copy it"
        )


class _Copy:
    """One batch's rows, from the source engine into the destination's transaction."""

    def __init__(
        self,
        source: Engine,
        tx: Tx,
        dest: Engine,
        batch: str,
        progress: Callable[[str, int], None] | None,
    ) -> None:
        self.source, self.tx, self.batch = source, tx, batch
        self._progress = progress
        self._rows = 0
        #: Each table's columns the two ledgers share (both are at the latest schema step).
        self.columns = {
            table: [c for c in _columns(source, table) if c in set(_columns(dest, table))]
            for table in ("batches", "jobs", "events")
        }

    def run(self) -> Copied:
        self._insert("batches", self._select("batches", "name = ?", (self.batch,)))
        keys, extra_of = self._jobs()
        new_ids = dict(self.tx.rows("SELECT key, id FROM jobs WHERE batch = ?", (self.batch,)))
        ids = {old: new_ids[key] for old, key in keys.items()}
        self.tx.executemany(
            "UPDATE jobs SET extra_of = ? WHERE id = ?",
            [(ids[of], ids[job]) for job, of in extra_of.items()],
        )
        events = self._events(ids)
        return Copied(self.batch, len(keys), events)

    def _jobs(self) -> tuple[dict[int, str], dict[int, int]]:
        """Every job of the batch, without its id, claim or extra-take link; the source's
        ids with their keys, and the extra takes with the job each is a take of."""
        columns = [c for c in self.columns["jobs"] if c not in _PROCESS_COLUMNS]
        keys: dict[int, str] = {}
        extra_of: dict[int, int] = {}
        at = columns.index("key")
        page: list[tuple[Any, ...]] = []
        for row in self._paged("jobs", ["id", "extra_of", *columns], "j.batch = ?"):
            keys[row[0]] = row[2 + at]
            if row[1] is not None:
                extra_of[row[0]] = row[1]
            page.append(row[2:])
            if len(page) == PAGE:
                self._insert_many("jobs", columns, page)
                page = []
        self._insert_many("jobs", columns, page)
        return keys, extra_of

    def _events(self, ids: dict[int, int]) -> int:
        """Every event of the batch's jobs, in order, each pointing at its job's new id."""
        columns = [c for c in self.columns["events"] if c != "id"]
        at = columns.index("job_id")
        count = 0
        page: list[tuple[Any, ...]] = []
        for row in self._paged("events", ["id", *columns], "j.batch = ?", join=True):
            values = list(row[1:])
            values[at] = ids[values[at]]
            page.append(tuple(values))
            count += 1
            if len(page) == PAGE:
                self._insert_many("events", columns, page)
                page = []
        self._insert_many("events", columns, page)
        return count

    def _paged(
        self, table: str, columns: list[str], where: str, *, join: bool = False
    ) -> Iterator[tuple[Any, ...]]:
        """The source's rows of ``table`` in id order, a page at a time (``join``: the
        table's ``job_id`` joined to ``jobs j``; else the table is ``j`` itself)."""
        alias = "t" if join else "j"
        source = f"{table} t JOIN jobs j ON j.id = t.job_id" if join else f"{table} j"
        listed = ", ".join(f"{alias}.{c}" for c in columns)

        def fetch(after: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            return self.source.rows(
                f"""SELECT {listed} FROM {source} WHERE {where} AND {alias}.id > ?
                ORDER BY {alias}.id LIMIT {PAGE}""",
                (self.batch, after[0]),
            )

        return in_pages(fetch, (-1,), lambda row: (row[0],), PAGE)

    def _select(self, table: str, where: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        listed = ", ".join(self.columns[table])
        return self.source.rows(f"SELECT {listed} FROM {table} WHERE {where}", params)

    def _insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        self._insert_many(table, self.columns[table], rows)

    def _insert_many(self, table: str, columns: list[str], rows: Iterable[tuple[Any, ...]]) -> None:
        rows = list(rows)
        if not rows:
            return
        marks = ", ".join("?" for _ in columns)
        self.tx.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
        self._rows += len(rows)
        if self._progress is not None:
            self._progress(self.batch, self._rows)


def _columns(engine: Engine, table: str) -> list[str]:
    return [name for (name,) in engine.rows(engine.dialect.columns, (table,))]
