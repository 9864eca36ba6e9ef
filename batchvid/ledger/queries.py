"""The ledger's read side: the queries the runner, ``status`` and reports ask.

Each is shaped for an index (see ``ledger_schema``), so deciding what to do
next on a 100,000-job ledger takes milliseconds.  Writes live in ``ledger``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from ..errors import LedgerError, ledger_error
from ..states import ACTIVE_STATES, POLLING_STATES, TASK_STATES, JobState, chain_problem
from .core import LedgerCore
from .rows import JOB_COLUMNS, BatchRow, Event, JobRow, RenderSample
from .schema import NEVER

__all__ = ["RENDER_SAMPLES", "LedgerQueries"]

#: How many recent completions of one kind ``render_samples`` returns.
RENDER_SAMPLES: Final = 64
_PAGE: Final = 1000


def _states_sql(states: Iterable[JobState]) -> str:
    return ", ".join(f"'{s.value}'" for s in sorted(states))


_POLLING_SQL: Final = _states_sql(POLLING_STATES)
_ACTIVE_SQL: Final = _states_sql(ACTIVE_STATES)


class LedgerQueries(LedgerCore):
    """The reads of :class:`batchvid.ledger.Ledger`: all a report needs (read-only is enough)."""

    def _rows(
        self,
        sql: str,
        params: Mapping[str, Any] | tuple[Any, ...] = (),
        *,
        tuples: bool = False,
    ) -> list[Any]:
        """Every row of a query: ``sqlite3.Row`` objects, or plain tuples (cheaper) if asked."""
        with self._lock:
            try:
                cursor = self._conn.cursor()
                if tuples:
                    cursor.row_factory = None
                return cursor.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise ledger_error(self.path, exc) from exc

    def get_batch(self, name: str) -> BatchRow | None:
        rows = self._rows("SELECT * FROM batches WHERE name = ?", (name,))
        return BatchRow.from_row(rows[0]) if rows else None

    def batches(self) -> list[BatchRow]:
        return [BatchRow.from_row(r) for r in self._rows("SELECT * FROM batches ORDER BY name")]

    def get_job(self, job_id: int) -> JobRow:
        rows = self._rows(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise LedgerError(f"no job with id {job_id}")
        return JobRow.from_row(rows[0])

    def job_by_key(self, batch: str, key: str) -> JobRow | None:
        rows = self._rows(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE batch = ? AND key = ?", (batch, key)
        )
        return JobRow.from_row(rows[0]) if rows else None

    def jobs(self, batch: str) -> Iterator[JobRow]:
        """Every job of a batch, by index; read in pages, so the ledger stays writable."""
        after: tuple[int, int] = (-(2**62), 0)
        while True:
            page = [
                JobRow.from_row(row)
                for row in self._rows(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE batch = ? AND (idx, id) > (?, ?)"
                    " ORDER BY idx, id LIMIT ?",
                    (batch, *after, _PAGE),
                    tuples=True,
                )
            ]
            yield from page
            if len(page) < _PAGE:
                return
            after = (page[-1].idx, page[-1].id)

    def events(self, job_id: int) -> list[Event]:
        rows = self._rows("SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,))
        return [Event.from_row(r) for r in rows]

    def pending_jobs(self, batch: str, limit: int, now: float | None = None) -> list[JobRow]:
        """The next jobs to submit, in manifest order.

        With ``now``, only those free to go (an automatic retry waits out its back-off).
        """
        due = "" if now is None else " AND (retry_at IS NULL OR retry_at <= :at)"
        return self._jobs_where("state = 'pending'" + due, "idx, id", batch, limit, now)

    def next_retry_time(self, batch: str) -> float | None:
        """The earliest back-off end of a pending job's automatic retry (``None``: none)."""
        rows = self._rows(
            """SELECT min(retry_at) FROM jobs INDEXED BY jobs_retry_queue
            WHERE batch = ? AND state = 'pending' AND retry_at IS NOT NULL""",
            (batch,),
        )
        value: float | None = rows[0][0]
        return value

    def due_polls(self, batch: str, now: float | None = None, limit: int = 100) -> list[JobRow]:
        """Live tasks whose ``next_poll_at`` has come, the most overdue first."""
        at = self.clock() if now is None else now
        return self._jobs_where(
            f"state IN ({_POLLING_SQL}) AND next_poll_at <= :at",
            "next_poll_at, id",
            batch,
            limit,
            at,
        )

    def completed_jobs(self, batch: str, limit: int, now: float | None = None) -> list[JobRow]:
        """Jobs to download: the soonest-expiring URL first, unknown expiry last.

        With ``now``, only those whose ``next_download_at`` has come (not backing
        off, tries not spent), so they never crowd out the ones that may start.
        """
        # Pinned to the partial index of completed jobs: statistics gathered while
        # nearly every job was downloaded would otherwise suggest a full scan.
        due = "" if now is None else " AND coalesce(next_download_at, 0) <= :at"
        return self._jobs_where(
            "state = 'completed'" + due,
            "video_url_expires_at IS NULL, video_url_expires_at, idx, id",
            batch,
            limit,
            now,
            index="jobs_download_queue",
        )

    def _jobs_where(
        self,
        where: str,
        order: str,
        batch: str,
        limit: int,
        at: float | None = None,
        *,
        index: str | None = None,
    ) -> list[JobRow]:
        indexed = f" INDEXED BY {index}" if index else ""
        rows = self._rows(
            f"SELECT {JOB_COLUMNS} FROM jobs{indexed} WHERE batch = :batch AND {where}"
            f" ORDER BY {order} LIMIT :limit",
            {"batch": batch, "limit": limit, "at": at},
            tuples=True,
        )
        return [JobRow.from_row(r) for r in rows]

    def jobs_in_states(
        self, batch: str, states: Iterable[JobState], limit: int | None = None
    ) -> list[JobRow]:
        """The batch's jobs in any of ``states``, by index (at most ``limit``; None: all)."""
        return self._jobs_where(
            f"state IN ({_states_sql(states)})", "idx, id", batch, -1 if limit is None else limit
        )

    def next_poll_time(self, batch: str) -> float | None:
        """The earliest ``next_poll_at`` among the batch's live tasks (``None``: none)."""
        row = self._rows(
            f"SELECT min(next_poll_at) FROM jobs WHERE batch = ? AND state IN ({_POLLING_SQL})",
            (batch,),
        )
        value: float | None = row[0][0]
        return value

    def next_download_time(self, batch: str) -> float | None:
        """The earliest time a completed job's next download try may start (``None``: none
        is waiting for one; spent tries do not count)."""
        rows = self._rows(
            """SELECT min(next_download_at) FROM jobs INDEXED BY jobs_download_queue
            WHERE batch = ? AND state = 'completed' AND next_download_at < ?""",
            (batch, NEVER),
        )
        value: float | None = rows[0][0]
        return value

    def downloadable_count(self, batch: str) -> int:
        """Completed jobs (extra takes too) a download may still be tried for in this run."""
        rows = self._rows(
            """SELECT count(*) FROM jobs INDEXED BY jobs_download_queue
            WHERE batch = ? AND state = 'completed' AND coalesce(next_download_at, 0) < ?""",
            (batch, NEVER),
        )
        return int(rows[0][0])

    def active_count(self, batch: str) -> int:
        """Jobs holding a task slot: submitting, queued, in_progress (extra takes hold none:
        a stalled task, still watched, must not keep the batch from going on)."""
        rows = self._rows(
            f"SELECT count(*) FROM jobs WHERE batch = ? AND state IN ({_ACTIVE_SQL})", (batch,)
        )
        extras = self._extra_states(batch)
        return int(rows[0][0]) - sum(extras.get(s.value, 0) for s in ACTIVE_STATES)

    def _extra_states(self, batch: str) -> dict[str, int]:
        """The batch's extra takes per state (few: their own small index, not a scan)."""
        return dict(
            self._rows(
                """SELECT state, count(*) FROM jobs INDEXED BY jobs_extra_takes
                WHERE extra_of IS NOT NULL AND batch = ? GROUP BY state""",
                (batch,),
                tuples=True,
            )
        )

    def counts(self, batch: str, *, extras: bool = False) -> dict[JobState, int]:
        """How many jobs of the batch are in each state (every state listed, zeros too).

        The batch's jobs, one per manifest job; with ``extras``, the earlier
        attempts split off them instead (see ``Ledger.record_stalled``).
        """
        # All rows by the covering (batch, state) index, less the few extra takes.
        split = self._extra_states(batch)
        if extras:
            return {s: int(split.get(s.value, 0)) for s in JobState}
        found = dict(
            self._rows("SELECT state, count(*) FROM jobs WHERE batch = ? GROUP BY state", (batch,))
        )
        return {s: int(found.get(s.value, 0)) - int(split.get(s.value, 0)) for s in JobState}

    def retries_made(self, batch: str) -> dict[str, tuple[int, float]]:
        """The automatic new attempts made for the batch's jobs, per kind of outcome, with
        what they are estimated to cost (USD; 0 when unpriced)."""
        rows = self._rows(
            """SELECT r.key, total(r.value), total(r.value * coalesce(est_cost_usd, 0))
            FROM jobs INDEXED BY jobs_retried, json_each(jobs.retries_json) AS r
            WHERE batch = ? AND retries_json != '{}' GROUP BY r.key ORDER BY r.key""",
            (batch,),
            tuples=True,
        )
        return {kind: (int(n), float(cost)) for kind, n, cost in rows}

    def status(self, batch: str) -> dict[str, Any]:
        """DESIGN's ``status --json`` object: ``{"batch", "total", "states": {...}}``.

        Plus ``retries`` (automatic new attempts made, per kind of outcome),
        ``extra_takes`` (earlier attempts kept beside their jobs, per state) and
        ``normalised`` (videos rendered otherwise than asked: how, and how many).
        """
        if self.get_batch(batch) is None:
            raise LedgerError(f"no batch named {batch!r} in {self.path}")
        counts = self.counts(batch)
        extras = self.counts(batch, extras=True)
        return {
            "batch": batch,
            "total": sum(counts.values()),
            "states": {s.value: n for s, n in counts.items()},
            "retries": {kind: n for kind, (n, _) in self.retries_made(batch).items()},
            "extra_takes": {s.value: n for s, n in extras.items() if n},
            "normalised": self.normalised(batch),
        }

    def normalised(self, batch: str) -> dict[str, int]:
        """Downloaded videos the API rendered otherwise than asked, per way, most first."""
        sql = """SELECT normalised, count(*) AS n FROM jobs WHERE batch = ? AND normalised
            IS NOT NULL AND state = 'downloaded' GROUP BY normalised ORDER BY n DESC, normalised"""
        return {how: int(n) for how, n in self._rows(sql, (batch,), tuples=True)}

    def statuses(self) -> list[dict[str, Any]]:
        """``status`` of every batch, by name."""
        return [self.status(b.name) for b in self.batches()]

    def committed_cost(self, batch: str) -> float:
        """USD the batch has committed: ``est_cost_usd`` times every attempt that may bill.

        In flight, in doubt, live, finished and failed attempts all count; a
        ``release_unsent`` or ``rejected`` attempt does not.  Unpriced jobs count 0.
        """
        rows = self._rows(
            "SELECT total(est_cost_usd * billable_attempts) FROM jobs WHERE batch = ?", (batch,)
        )
        return float(rows[0][0])

    def render_samples(
        self, model: str, seconds: int, resolution: str, limit: int = RENDER_SAMPLES
    ) -> list[RenderSample]:
        """The render-time evidence of the latest ``limit`` completions of one kind, oldest first.

        From the whole ledger (every batch): what finished tasks proved about
        their render time (see :func:`batchvid.run.render_times.observe`).
        """
        rows = self._rows(
            """SELECT render_lo_s, render_hi_s,
                coalesce(server_completed_at > server_created_at, 0) FROM jobs
            INDEXED BY jobs_render_samples
            WHERE model = ? AND seconds = ? AND resolution = ? AND render_hi_s IS NOT NULL
            ORDER BY completed_utc DESC LIMIT ?""",
            (model, seconds, resolution, limit),
            tuples=True,
        )
        return [RenderSample(lo, hi, bool(stamped)) for lo, hi, stamped in reversed(rows)]

    def verify(self) -> list[str]:
        """Everything wrong with the file: SQLite integrity, and every job against its events.

        Empty when the ledger is consistent.  Reads the whole ledger: a check, not a hot path.
        """
        problems = [
            f"integrity: {r[0]}" for r in self._rows("PRAGMA integrity_check") if r[0] != "ok"
        ]
        problems += [f"foreign key: {tuple(r)}" for r in self._rows("PRAGMA foreign_key_check")]
        steps: dict[int, list[tuple[str, str]]] = {}
        for job_id, src, dst in self._rows(
            "SELECT job_id, from_state, to_state FROM events ORDER BY job_id, id"
        ):
            steps.setdefault(job_id, []).append((src, dst))
        for job_id, state, task_id, attempts, billable in self._rows(
            "SELECT id, state, task_id, attempts, billable_attempts FROM jobs"
        ):
            current = JobState(state)
            if (task_id is not None) != (current in TASK_STATES):
                problems.append(f"job {job_id}: {current} with task id {task_id!r}")
            if billable > attempts:
                problems.append(f"job {job_id}: {billable} billable of {attempts} attempts")
            chain = chain_problem(current, steps.get(job_id, []))
            if chain:
                problems.append(f"job {job_id}: {chain}")
        return problems
