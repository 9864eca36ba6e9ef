"""The work queue: what the dispatcher asks the ledger about a running batch.

Three kinds of work are **taken** (:meth:`WorkQueue.take_pending`,
:meth:`~WorkQueue.take_polls`, :meth:`~WorkQueue.take_downloads`), each in
the order that serves the batch best.  How a job is taken is the backend's
(its :attr:`~batchvid.ledger.engine.Dialect.take`): on SQLite, where one
process runs a batch, the jobs are simply read; on PostgreSQL they are
**claimed** (``FOR UPDATE SKIP LOCKED``, then ``claimed_by`` set to this
worker), so no two workers ever start work on one job, and jobs of a worker
whose lease ended are taken over.  Jobs taken but not worked on go back with
:meth:`~batchvid.ledger.leases.Leases.release`; a move that ends the work
releases its job.

The rest are the small reads that decide when to look again and whether the
batch is done.  Each is shaped for an index, so deciding what to do next on a
100,000-job ledger takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Final

from ..states import ACTIVE_STATES, POLLING_STATES, JobState
from .core import Role
from .leases import unclaimed
from .rows import JOB_COLUMNS, JobRow
from .schema import NEVER

__all__ = ["WorkQueue", "states_sql"]


def states_sql(states: Iterable[JobState]) -> str:
    """``'a', 'b'``: a set of states as an SQL list, in a stable order."""
    return ", ".join(f"'{s.value}'" for s in sorted(states))


_POLLING_SQL: Final = states_sql(POLLING_STATES)
_ACTIVE_SQL: Final = states_sql(ACTIVE_STATES)


class WorkQueue(Role):
    """The dispatcher's view of one running batch (see the module docstring)."""

    def take_pending(
        self, batch: str, limit: int, now: float | None = None, skip: Collection[int] = ()
    ) -> list[JobRow]:
        """The next jobs to submit, in manifest order (at most ``limit``, none of ``skip``).

        With ``now``, only those free to go (an automatic retry waits out its back-off).
        """
        due = "" if now is None else " AND (retry_at IS NULL OR retry_at <= :at)"
        return self._take("state = 'pending'" + due, "idx, id", batch, limit, now, skip)

    def take_polls(
        self, batch: str, limit: int, now: float, skip: Collection[int] = ()
    ) -> list[JobRow]:
        """Live tasks whose ``next_poll_at`` has come, the most overdue first."""
        return self._take(
            f"state IN ({_POLLING_SQL}) AND next_poll_at <= :at",
            "next_poll_at, id",
            batch,
            limit,
            now,
            skip,
        )

    def take_downloads(
        self, batch: str, limit: int, now: float | None = None, skip: Collection[int] = ()
    ) -> list[JobRow]:
        """Jobs to download: the soonest-expiring URL first, unknown expiry last.

        With ``now``, only those whose ``next_download_at`` has come (not backing
        off, tries not spent), so they never crowd out the ones that may start.
        """
        # Pinned to the partial index of completed jobs: statistics gathered while
        # nearly every job was downloaded would otherwise suggest a full scan.
        due = "" if now is None else " AND coalesce(next_download_at, 0) <= :at"
        return self._take(
            "state = 'completed'" + due,
            "video_url_expires_at IS NULL, video_url_expires_at, idx, id",
            batch,
            limit,
            now,
            skip,
            index="jobs_download_queue",
        )

    def _take(
        self,
        where: str,
        order: str,
        batch: str,
        limit: int,
        at: float | None,
        skip: Collection[int],
        *,
        index: str | None = None,
    ) -> list[JobRow]:
        """Take up to ``limit`` jobs of ``batch`` matching ``where``, in ``order``.

        ``skip``: jobs this process is busy with or has set aside.  Read, they
        are asked for beyond ``limit`` and dropped here; claimed, the
        backend's statement leaves them out (``:skip``).
        """
        dialect = self._engine.dialect
        claims = self._engine.shared
        source = "jobs" + (dialect.hint(index) if index else "")
        condition = f"batch = :batch AND {where}"
        if claims:  # free, or this worker's own (not busy: ``skip`` says which are)
            condition += f" AND ({unclaimed(dialect)} OR claimed_by = :worker)"
        values: dict[str, Any] = {
            "batch": batch,
            "limit": limit if claims else limit + len(skip),
            "at": at,
            "worker": self._context.worker,
            "skip": list(skip),
        }
        sql = dialect.take(JOB_COLUMNS, source, condition, order)
        if claims:
            with self._engine.write() as tx:
                rows = tx.rows(sql, values)
        else:
            rows = self._engine.rows(sql, values)
        jobs = [JobRow.from_row(r) for r in rows]
        if claims:
            return sorted(jobs, key=_order_of(order))
        return [job for job in jobs if job.id not in skip][:limit]

    def next_retry_time(self, batch: str) -> float | None:
        """The earliest back-off end of a pending job's automatic retry (``None``: none)."""
        hint = self._engine.dialect.hint("jobs_retry_queue")
        rows = self._engine.rows(
            f"""SELECT min(retry_at) FROM jobs{hint}
            WHERE batch = ? AND state = 'pending' AND retry_at IS NOT NULL""",
            (batch,),
        )
        value: float | None = rows[0][0]
        return value

    def next_poll_time(self, batch: str) -> float | None:
        """The earliest ``next_poll_at`` among the batch's live tasks (``None``: none)."""
        rows = self._engine.rows(
            f"SELECT min(next_poll_at) FROM jobs WHERE batch = ? AND state IN ({_POLLING_SQL})",
            (batch,),
        )
        value: float | None = rows[0][0]
        return value

    def next_download_time(self, batch: str) -> float | None:
        """The earliest time a completed job's next download try may start (``None``: none
        is waiting for one; spent tries do not count)."""
        hint = self._engine.dialect.hint("jobs_download_queue")
        rows = self._engine.rows(
            f"""SELECT min(next_download_at) FROM jobs{hint}
            WHERE batch = ? AND state = 'completed' AND next_download_at < ?""",
            (batch, NEVER),
        )
        value: float | None = rows[0][0]
        return value

    def downloadable_count(self, batch: str) -> int:
        """Completed jobs (extra takes too) a download may still be tried for in this run."""
        hint = self._engine.dialect.hint("jobs_download_queue")
        rows = self._engine.rows(
            f"""SELECT count(*) FROM jobs{hint}
            WHERE batch = ? AND state = 'completed' AND coalesce(next_download_at, 0) < ?""",
            (batch, NEVER),
        )
        return int(rows[0][0])

    def active_count(self, batch: str) -> int:
        """Jobs holding a task slot: submitting, queued, in_progress (extra takes hold none:
        a stalled task, still watched, must not keep the batch from going on)."""
        rows = self._engine.rows(
            f"""SELECT count(*) FROM jobs WHERE batch = ? AND state IN ({_ACTIVE_SQL})
            AND extra_of IS NULL""",
            (batch,),
        )
        return int(rows[0][0])

    def committed_cost(self, batch: str) -> float:
        """USD the batch has committed: ``est_cost_usd`` times every attempt that may bill.

        In flight, in doubt, live, finished and failed attempts all count; a
        ``release_unsent`` or ``rejected`` attempt does not.  Unpriced jobs count 0.
        """
        rows = self._engine.rows(
            "SELECT coalesce(sum(est_cost_usd * billable_attempts), 0.0) FROM jobs WHERE batch = ?",
            (batch,),
        )
        return float(rows[0][0])


def _order_of(order: str) -> Any:
    """A sort key for claimed rows (``RETURNING`` keeps no order): the take's ``ORDER BY``."""
    fields = [f.strip() for f in order.split(",")]

    def key(job: JobRow) -> tuple[Any, ...]:
        parts: list[Any] = []
        for spec in fields:
            if spec.endswith(" IS NULL"):
                parts.append(getattr(job, spec.removesuffix(" IS NULL")) is None)
            else:
                value = getattr(job, spec)
                parts.append((value is None, value if value is not None else 0))
        return tuple(parts)

    return key
