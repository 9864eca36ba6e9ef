"""The ledger's read side: what ``status``, reports and checks ask.

Each query is shaped for an index (see :mod:`~batchvid.ledger.schema`), and
long ones are read in pages, so a report beside a running batch never holds
up its writer.  What the dispatcher asks while a batch runs is in
:mod:`~batchvid.ledger.queue`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Final

from ..errors import LedgerError
from ..states import TASK_STATES, JobState, chain_problem
from .core import Role
from .engine import in_pages
from .queue import states_sql
from .rows import BATCH_COLUMNS, EVENT_COLUMNS, JOB_COLUMNS, BatchRow, Event, JobRow, RenderSample

__all__ = ["RENDER_SAMPLES", "Reads"]

#: How many recent completions of one kind ``render_samples`` returns.
RENDER_SAMPLES: Final = 64
_PAGE: Final = 1000


class Reads(Role):
    """The reads of the ledger: all a report needs (a read-only ledger is enough)."""

    @property
    def where(self) -> str:
        """Where the ledger is, for messages."""
        return self._engine.where

    def get_batch(self, name: str) -> BatchRow | None:
        rows = self._engine.rows(f"SELECT {BATCH_COLUMNS} FROM batches WHERE name = ?", (name,))
        return BatchRow.from_row(rows[0]) if rows else None

    def batches(self) -> list[BatchRow]:
        rows = self._engine.rows(f"SELECT {BATCH_COLUMNS} FROM batches ORDER BY name")
        return [BatchRow.from_row(r) for r in rows]

    def get_job(self, job_id: int) -> JobRow:
        rows = self._engine.rows(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise LedgerError(f"no job with id {job_id}")
        return JobRow.from_row(rows[0])

    def job_by_key(self, batch: str, key: str) -> JobRow | None:
        rows = self._engine.rows(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE batch = ? AND key = ?", (batch, key)
        )
        return JobRow.from_row(rows[0]) if rows else None

    def jobs(self, batch: str) -> Iterator[JobRow]:
        """Every job of a batch, by index; read in pages, so the ledger stays writable."""
        sql = (
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE batch = ? AND (idx, id) > (?, ?)"
            " ORDER BY idx, id LIMIT ?"
        )
        rows = in_pages(
            lambda after: self._engine.rows(sql, (batch, *after, _PAGE)),
            (-(2**62), 0),
            lambda row: (row[_IDX], row[0]),
            _PAGE,
        )
        return (JobRow.from_row(row) for row in rows)

    def events(self, job_id: int) -> list[Event]:
        rows = self._engine.rows(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [Event.from_row(r) for r in rows]

    def jobs_in_states(
        self, batch: str, states: Iterable[JobState], limit: int | None = None
    ) -> list[JobRow]:
        """The batch's jobs in any of ``states``, by index (at most ``limit``; None: all)."""
        rows = self._engine.rows(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE batch = ? AND state IN ({states_sql(states)})"
            " ORDER BY idx, id LIMIT ?",
            (batch, 2**62 if limit is None else limit),
        )
        return [JobRow.from_row(r) for r in rows]

    def _extra_states(self, batch: str) -> dict[str, int]:
        """The batch's extra takes per state (few: their own small index, not a scan)."""
        hint = self._engine.dialect.hint("jobs_extra_takes")
        rows = self._engine.rows(
            f"""SELECT state, count(*) FROM jobs{hint}
            WHERE extra_of IS NOT NULL AND batch = ? GROUP BY state""",
            (batch,),
        )
        return {state: int(n) for state, n in rows}

    def counts(self, batch: str, *, extras: bool = False) -> dict[JobState, int]:
        """How many jobs of the batch are in each state (every state listed, zeros too).

        The batch's jobs, one per manifest job; with ``extras``, the earlier
        attempts split off them instead (see ``Moves.record_stalled``).
        """
        # All rows by the covering (batch, state) index, less the few extra takes.
        split = self._extra_states(batch)
        if extras:
            return {s: int(split.get(s.value, 0)) for s in JobState}
        found = dict(
            self._engine.rows(
                "SELECT state, count(*) FROM jobs WHERE batch = ? GROUP BY state", (batch,)
            )
        )
        return {s: int(found.get(s.value, 0)) - int(split.get(s.value, 0)) for s in JobState}

    def retries_made(self, batch: str) -> dict[str, tuple[int, float]]:
        """The automatic new attempts made for the batch's jobs, per kind of outcome, with
        what they are estimated to cost (USD; 0 when unpriced)."""
        hint = self._engine.dialect.hint("jobs_retried")
        made: dict[str, tuple[int, float]] = {}
        for text, cost in self._engine.rows(
            f"SELECT retries_json, est_cost_usd FROM jobs{hint}"
            " WHERE batch = ? AND retries_json != '{}'",
            (batch,),
        ):
            for kind, n in json.loads(text).items():
                count, usd = made.get(kind, (0, 0.0))
                made[kind] = (count + int(n), usd + int(n) * (cost or 0.0))
        return dict(sorted(made.items()))

    def status(self, batch: str) -> dict[str, Any]:
        """DESIGN's ``status --json`` object: ``{"batch", "total", "states": {...}}``.

        Plus ``retries`` (automatic new attempts made, per kind of outcome),
        ``extra_takes`` (earlier attempts kept beside their jobs, per state) and
        ``normalised`` (videos rendered otherwise than asked: how, and how many).
        """
        if self.get_batch(batch) is None:
            raise LedgerError(f"no batch named {batch!r} in {self.where}")
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
        return {how: int(n) for how, n in self._engine.rows(sql, (batch,))}

    def statuses(self) -> list[dict[str, Any]]:
        """``status`` of every batch, by name."""
        return [self.status(b.name) for b in self.batches()]

    def render_samples(
        self, model: str, seconds: int, resolution: str, limit: int = RENDER_SAMPLES
    ) -> list[RenderSample]:
        """The render-time evidence of the latest ``limit`` completions of one kind, oldest first.

        From the whole ledger (every batch): what finished tasks proved about
        their render time (see :func:`batchvid.run.render_times.observe`).
        """
        hint = self._engine.dialect.hint("jobs_render_samples")
        rows = self._engine.rows(
            f"""SELECT render_lo_s, render_hi_s,
                coalesce(server_completed_at > server_created_at, false) FROM jobs{hint}
            WHERE model = ? AND seconds = ? AND resolution = ? AND render_hi_s IS NOT NULL
            ORDER BY completed_utc DESC LIMIT ?""",
            (model, seconds, resolution, limit),
        )
        return [RenderSample(lo, hi, bool(stamped)) for lo, hi, stamped in reversed(rows)]

    def verify(self) -> list[str]:
        """Everything wrong with the ledger: the database's own checks of its storage, and
        every job against its events.  Empty when the ledger is consistent.  Reads the
        whole ledger: a check, not a hot path."""
        problems = self._engine.integrity()
        steps: dict[int, list[tuple[str, str]]] = {}
        for job_id, src, dst in self._engine.rows(
            "SELECT job_id, from_state, to_state FROM events ORDER BY job_id, id"
        ):
            steps.setdefault(job_id, []).append((src, dst))
        for job_id, state, task_id, attempts, billable in self._engine.rows(
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


_IDX: Final = JobRow._fields.index("idx")
