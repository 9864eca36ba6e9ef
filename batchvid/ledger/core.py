"""The ledger's core: one open file, and the two ways every write is made.

:class:`LedgerCore` opens (or creates and migrates) the file, and owns the
write transaction (:meth:`LedgerCore._write`) and the one way a job's state
changes (:meth:`LedgerCore._move`): checked against
:data:`batchvid.states.TRANSITIONS` inside ``BEGIN IMMEDIATE`` (read the
state, conditional ``UPDATE ... WHERE state = <that state>``, append the
``events`` row, commit), so a kill at any instant leaves all of it or none.
The file is in WAL mode: every commit survives the process being killed.  The
commits that must also survive a power cut (a ``submitting`` intent, before
its create leaves, and the task id the create returned) are fsynced
(``synchronous=FULL`` for that commit, which also makes everything before it
durable); the rest are not, which keeps a busy batch from waiting on the disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self

from ..errors import IllegalTransition, LedgerError, ledger_error
from ..states import JobState, check_transition
from .rows import utc_iso
from .schema import open_connection, open_read_only

__all__ = ["LedgerCore"]


class LedgerCore:
    """The open file, its lock and its clock, and the two ways a write is made.

    See :class:`batchvid.ledger.Ledger` for the arguments.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        create: bool = True,
        read_only: bool = False,
        check: bool = False,
    ) -> None:
        self.path = Path(path)
        #: Unix seconds for every time the ledger writes.  A run puts its steady
        #: clock here (see :class:`batchvid.run.clock.SteadyClock`), so the times it
        #: schedules by and the times the ledger stamps agree, whatever the wall
        #: clock does meanwhile.
        self.clock = clock
        self._lock = threading.RLock()
        self.read_only = read_only
        if read_only:
            self._conn = open_read_only(self.path)
            return
        if not create and not self.path.exists():
            raise LedgerError(f"no ledger at {self.path}")
        self._conn = open_connection(self.path)
        if check:
            self._check()

    def _check(self) -> None:
        """SQLite's quick check of the whole file: a damaged ledger is refused before any use."""
        try:
            found = [
                " ".join(row[0].split()) for row in self._conn.execute("PRAGMA quick_check(5)")
            ]
        except sqlite3.Error as exc:
            found = [str(exc)]
        if found != ["ok"]:
            self._conn.close()
            raise LedgerError(
                f"the ledger {self.path} is damaged ({'; '.join(found)}): nothing was sent. "
                f"Restore a copy, or rebuild it: sqlite3 {self.path} .recover | sqlite3 NEW.db"
            )

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if not self.read_only:
                with suppress(sqlite3.Error):  # closed already, or busy: the hint is optional
                    self._conn.execute("PRAGMA optimize")
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------

    @contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from its first statement.

        ``durable``: fsync this commit (and so every commit before it) before
        returning, for writes that must survive a power cut, not only a kill.
        """
        with self._lock:
            conn = self._conn
            try:
                if durable:
                    conn.execute("PRAGMA synchronous = FULL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise ledger_error(self.path, exc) from exc
            finally:
                if durable:
                    with suppress(sqlite3.Error):
                        conn.execute("PRAGMA synchronous = NORMAL")

    def _stamp(self) -> dict[str, Any]:
        now = self.clock()
        return {"now": utc_iso(now), "now_at": now}

    def _move(self, job_id: int, *step: Any, durable: bool = False, **named: Any) -> JobState:
        """One job's state change (or same-state update) and its event, in a transaction
        of its own (``durable``: fsynced); the arguments are :meth:`_step`'s."""
        with self._write(durable=durable) as conn:
            return self._step(conn, job_id, *step, **named)

    def _step(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        action: str,
        sources: Iterable[JobState],
        target: JobState | Callable[[JobState], JobState],
        sets: str = "",
        params: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> JobState:
        """Apply one job's state change (or same-state update) and its event, inside the
        write transaction ``conn`` (several steps may share one commit).

        ``sources`` are the states ``action`` applies to; ``target`` is the new
        state, or a function of the current one.  A change of state must be in
        the transition table and writes an ``events`` row; staying put does not.
        """
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no job with id {job_id}")
        current = JobState(row[0])
        if current not in frozenset(sources):
            raise IllegalTransition(f"job {job_id}: cannot {action} a {current} job")
        new = target(current) if callable(target) else target
        if new != current:
            check_transition(current, new, job=job_id)
        values = {"id": job_id, "src": current.value, "dst": new.value, **self._stamp()}
        values.update(params or {})
        updated = conn.execute(
            "UPDATE jobs SET state = :dst, updated_utc = :now"
            + (f", {sets}" if sets else "")
            + " WHERE id = :id AND state = :src",
            values,
        )
        if updated.rowcount != 1:  # cannot happen while we hold the write lock
            raise IllegalTransition(f"job {job_id}: changed under us during {action}")
        if new != current:
            conn.execute(
                "INSERT INTO events (job_id, from_state, to_state, at_utc, detail_json)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, current.value, new.value, values["now"], _json(detail)),
            )
        return new

    def _move_batch(
        self,
        batch: str,
        src: JobState,
        dst_sql: str,
        sets: str,
        detail_sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        jobs_only: bool = False,
    ) -> int:
        """Move every ``src`` job of a batch (to ``dst_sql``, evaluated per row) with events.

        ``jobs_only``: leave extra takes (earlier attempts kept beside a job) where they are.
        """
        where = "WHERE batch = :batch AND state = :src"
        if jobs_only:
            where += " AND extra_of IS NULL"
        values = {"batch": batch, "src": src.value, **self._stamp(), **(params or {})}
        with self._write() as conn:
            conn.execute(
                "INSERT INTO events (job_id, from_state, to_state, at_utc, detail_json)"
                f" SELECT id, state, {dst_sql}, :now, {detail_sql} FROM jobs {where}"
                " ORDER BY idx, id",
                values,
            )
            moved = conn.execute(
                f"UPDATE jobs SET state = {dst_sql}, updated_utc = :now, {sets} {where}", values
            ).rowcount
        return moved


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(dict(value), sort_keys=True)
