"""Workers sharing a batch, and the leases that keep two of them off one job.

On a shared ledger (PostgreSQL) every ``batchvid run`` process of a batch is a
**worker**: a ``workers`` row with a lease that ends at ``lease_until``, on the
database server's clock (so machines whose clocks disagree still agree on it).
A worker renews its lease by a heartbeat; a worker that stops renewing it
(killed, cut off) is gone once it ends.  Jobs a worker has taken carry its id
in ``claimed_by``; a job whose worker is gone may be taken by any other
(:func:`unclaimed`), so a dead worker's work is picked up about one lease
after it stopped (its creates in flight become ``in_doubt``, never resent).

A lease that ended is never renewed: its worker may already have lost jobs
to others, so it must stop (:meth:`Leases.renew` says so).

On SQLite one process runs a batch (a lock on the file): nobody joins, and no
job is ever claimed.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from typing import Final

from ..errors import LedgerError
from .core import Role
from .engine import Dialect
from .rows import utc_iso

__all__ = ["LIVE_WORKERS", "Leases", "Worker", "unclaimed"]

#: The workers whose lease has not ended (a subquery; ``{now}`` is the database's clock).
LIVE_WORKERS: Final = "SELECT id FROM workers WHERE lease_until > {now}"


def unclaimed(dialect: Dialect) -> str:
    """SQL: the job is taken by no live worker (never taken, released, or its worker gone)."""
    live = LIVE_WORKERS.format(now=dialect.db_now)
    return f"(claimed_by IS NULL OR claimed_by NOT IN ({live}))"


@dataclass(frozen=True, slots=True)
class Worker:
    """One worker of a batch, as the ledger knows it; ``left_s``: its lease's time left."""

    id: str
    batch: str
    host: str
    pid: int
    started_utc: str
    left_s: float
    alone: bool


class Leases(Role):
    """The ``workers`` table: joining a batch, heartbeats, leaving, and who is there."""

    def join(self, batch: str, lease_s: float, *, alone: bool = False) -> str:
        """Become a worker of ``batch`` with a lease of ``lease_s`` seconds; its id.

        ``alone``: this worker cannot share the batch (it runs its own
        simulator, which no other worker can reach): refused while another
        worker is there, and any other is refused while it is.  Joins of one
        batch take turns, so two workers joining at once cannot both pass.
        """
        now_sql = self._engine.dialect.db_now
        worker = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        with self._engine.write() as tx:
            serialize = self._engine.dialect.serialize
            if serialize:  # workers joining at once take turns
                tx.one(serialize, (f"batchvid join {batch}",))
            if tx.one("SELECT 1 FROM batches WHERE name = ?", (batch,)) is None:
                raise LedgerError(f"no batch named {batch!r}: upsert_batch first")
            live = tx.rows(
                f"SELECT id, alone FROM workers WHERE batch = ? AND lease_until > {now_sql}",
                (batch,),
            )
            if live and (alone or any(flag for _, flag in live)):
                raise LedgerError(
                    f"batch {batch!r} cannot be shared with --simulate (each worker would run "
                    f"its own simulator, which the others cannot reach); {len(live)} other "
                    "worker(s) run it now. Start `batchvid simulator` and give every worker "
                    "--base-url instead"
                )
            tx.execute(
                f"""INSERT INTO workers (id, batch, host, pid, lease_s, lease_until, alone,
                    started_utc) VALUES (?, ?, ?, ?, ?, {now_sql} + ?, ?, ?)""",
                (
                    worker,
                    batch,
                    socket.gethostname(),
                    os.getpid(),
                    lease_s,
                    lease_s,
                    int(alone),
                    utc_iso(self.clock()),
                ),
            )
        self._context.worker = worker
        # A transaction of this worker's, cut off mid-way, must not keep others waiting on
        # its locks for long: a quarter of the lease at most, and its sessions are named,
        # for the others to end once its lease has ended (:meth:`end_gone`).
        self._engine.become(worker, lease_s / 4)
        return worker

    def end_gone(self) -> int:
        """End the database sessions of workers whose leases have ended (and so the row
        locks a worker cut off mid-statement would hold for ever); how many.  A worker
        calls it when it starts, and with every heartbeat."""
        sql = self._engine.dialect.end_gone
        if not sql:
            return 0
        row = self._engine.rows(sql)
        return int(row[0][0]) if row else 0

    def renew(self, worker: str) -> bool:
        """Extend ``worker``'s lease by its length from now; ``False`` if it had ended
        (the worker must stop: others may have taken its jobs)."""
        now_sql = self._engine.dialect.db_now
        with self._engine.write() as tx:
            return bool(
                tx.execute(
                    f"""UPDATE workers SET lease_until = {now_sql} + lease_s
                    WHERE id = ? AND lease_until > {now_sql}""",
                    (worker,),
                )
            )

    def leave(self, worker: str) -> int:
        """End ``worker``'s lease now and hand back the jobs it holds (creates left in flight
        stay claimed: :meth:`~.plans.Plans.recover_interrupted` makes them in doubt).
        Returns how many jobs were handed back."""
        with self._engine.write() as tx:
            released = tx.execute(
                "UPDATE jobs SET claimed_by = NULL WHERE claimed_by = ? AND state != 'submitting'",
                (worker,),
            )
            tx.execute(
                "UPDATE workers SET lease_until = 0, stopped_utc = ? WHERE id = ?",
                (utc_iso(self.clock()), worker),
            )
        if self._context.worker == worker:
            self._context.worker = None
        return released

    def release(self, job_ids: list[int]) -> None:
        """Hand back jobs taken but not worked on (their state is untouched)."""
        worker = self._context.worker
        if worker is None or not job_ids:
            return
        with self._engine.write() as tx:
            tx.executemany(
                "UPDATE jobs SET claimed_by = NULL WHERE id = ? AND claimed_by = ?",
                [(job_id, worker) for job_id in job_ids],
            )

    def live(self, batch: str | None = None) -> list[Worker]:
        """The workers whose lease has not ended (of ``batch``, or of every batch)."""
        now_sql = self._engine.dialect.db_now
        where = "AND batch = ?" if batch is not None else ""
        rows = self._engine.rows(
            f"""SELECT id, batch, host, pid, started_utc, lease_until - {now_sql}, alone
            FROM workers WHERE lease_until > {now_sql} {where} ORDER BY started_utc, id""",
            (batch,) if batch is not None else (),
        )
        return [
            Worker(wid, b, host, int(pid), started, float(left), bool(flag))
            for wid, b, host, pid, started, left, flag in rows
        ]
