"""Recording a batch and its jobs, the user's explicit retries, and a run's start.

- :meth:`Plans.upsert_batch` / :meth:`Plans.upsert_jobs`: a plan goes in,
  idempotent by job key (a known key keeps everything the ledger learned);
  :meth:`Plans.drop_unsent` forgets never-sent jobs an edited manifest no
  longer lists;
- :meth:`Plans.retry`: ``batchvid retry``, each job moved with an event that
  keeps what it replaces (the old task id);
- :meth:`Plans.start_run` and :meth:`Plans.recover_interrupted`: what a run
  does first (a create left in flight by a process that is gone becomes
  ``in_doubt``: it may have made a billed task, and is never resent blindly).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from ..errors import LedgerError
from ..states import JobState, check_transition
from .attempts import NEW_ATTEMPT
from .core import Mover
from .leases import unclaimed
from .rows import BATCH_COLUMNS, BatchRow, NewJob, axes_json, references_json, utc_iso

__all__ = ["INTERRUPTED", "Plans"]

S = JobState
#: Why a create left in flight is in doubt.
INTERRUPTED: Final = "interrupted while a create request may have been in flight"

#: A row ``retry`` reads: id, task_id, error_code, error_message, attempts, started_utc.
_Row = tuple[int, str | None, str | None, str | None, int, str | None]
#: What ``Plans.retry`` does to the jobs of a state: whether only jobs (not extra
#: takes) move, the columns set, and per row, where it goes and what the event keeps.
_RETRIES: Final[
    Mapping[JobState, tuple[bool, str, Callable[[_Row], tuple[JobState, dict[str, Any]]]]]
] = {
    S.FAILED: (
        True,
        NEW_ATTEMPT,
        lambda r: (
            S.PENDING,
            {"previous_task_id": r[1], "error_code": r[2], "error_message": r[3], "attempt": r[4]},
        ),
    ),
    S.IN_DOUBT: (
        True,
        "submitted_utc = NULL, error_message = NULL, finished_utc = NULL",
        lambda r: (
            S.PENDING,
            {"duplicate_may_be_billed": True, "reason": r[3], "attempt": r[4]},
        ),
    ),
    S.STALLED: (
        False,
        """next_poll_at = :now_at, watch_started_at = :now_at, finished_utc = NULL,
           error_code = NULL, error_message = NULL""",
        lambda r: (S.QUEUED if r[5] is None else S.IN_PROGRESS, {"task_id": r[1]}),
    ),
}


class Plans(Mover):
    """Batches and their jobs as planned, the user's retries, and the start of a run."""

    def upsert_batch(
        self,
        name: str,
        *,
        manifest_path: str | Path,
        manifest_sha256: str,
        output_dir: str | Path,
        limits: Mapping[str, Any] | None = None,
        pricing: Mapping[str, Any] | None = None,
        budget_usd: float | None = None,
        endpoint: str | None = None,
    ) -> BatchRow:
        """Record a batch, or update its manifest facts and settings (its jobs are untouched).

        ``endpoint`` is the API base URL a run uses (or ``"simulator"``); ``None``
        keeps the one already recorded.
        """
        values = {
            "name": name,
            "manifest_path": str(manifest_path),
            "manifest_sha256": manifest_sha256,
            "output_dir": str(output_dir),
            "limits_json": json.dumps(dict(limits or {}), sort_keys=True),
            "pricing_json": json.dumps(dict(pricing or {}), sort_keys=True),
            "budget_usd": budget_usd,
            "endpoint": endpoint,
            **self._context.stamp(),
        }
        with self._engine.write() as tx:
            tx.execute(
                """INSERT INTO batches (name, manifest_path, manifest_sha256, output_dir,
                    limits_json, pricing_json, budget_usd, endpoint, created_utc, updated_utc)
                VALUES (:name, :manifest_path, :manifest_sha256, :output_dir, :limits_json,
                    :pricing_json, :budget_usd, :endpoint, :now, :now)
                ON CONFLICT (name) DO UPDATE SET manifest_path = excluded.manifest_path,
                    manifest_sha256 = excluded.manifest_sha256, output_dir = excluded.output_dir,
                    limits_json = excluded.limits_json, pricing_json = excluded.pricing_json,
                    budget_usd = excluded.budget_usd,
                    endpoint = coalesce(excluded.endpoint, batches.endpoint),
                    updated_utc = excluded.updated_utc""",
                values,
            )
            row = tx.one(f"SELECT {BATCH_COLUMNS} FROM batches WHERE name = ?", (name,))
        assert row is not None
        return BatchRow.from_row(row)

    def upsert_jobs(self, batch: str, jobs: Iterable[NewJob]) -> int:
        """Add the jobs whose key is new to ``batch`` (as ``pending``); return how many.

        A key the batch already has keeps its row untouched: its state, task id
        and everything learned since.  One transaction, however many jobs.
        """
        now = utc_iso(self.clock())

        def new_rows(known: set[str]) -> Iterator[tuple[Any, ...]]:
            for j in jobs:
                if j.key in known:
                    continue
                known.add(j.key)
                refs = references_json(j.references)
                axes = axes_json(j.axes)
                yield (
                    *(batch, j.key, j.index, j.take, j.prompt_id, j.prompt, j.model),
                    *(j.seconds, j.size, j.resolution, refs, axes, j.est_cost_usd, now, now),
                )

        with self._engine.write() as tx:
            if tx.one("SELECT 1 FROM batches WHERE name = ?", (batch,)) is None:
                raise LedgerError(f"no batch named {batch!r}: upsert_batch first")
            known = {k for (k,) in tx.rows("SELECT key FROM jobs WHERE batch = ?", (batch,))}
            return tx.executemany(
                """INSERT INTO jobs (batch, key, idx, take, prompt_id, prompt, model, seconds,
                    size, resolution, references_json, axes_json, est_cost_usd, created_utc,
                    updated_utc)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (batch, key) DO NOTHING""",
                new_rows(known),
            )

    def drop_unsent(self, batch: str, keep: Iterable[str]) -> int:
        """Delete the batch's pending jobs that were never sent and whose key is not in ``keep``.

        For a manifest edited between runs: a job it no longer lists, and that
        never left (no attempt, no event), has nothing to lose and must not be
        submitted.  Jobs with any history stay.  Returns how many were dropped.
        """
        kept = set(keep)
        with self._engine.write() as tx:
            unsent = tx.rows(
                """SELECT id, key FROM jobs WHERE batch = ? AND state = 'pending'
                AND attempts = 0 AND claimed_by IS NULL
                AND NOT EXISTS (SELECT 1 FROM events WHERE events.job_id = jobs.id)""",
                (batch,),
            )
            gone = [(job_id,) for job_id, key in unsent if key not in kept]
            return tx.executemany("DELETE FROM jobs WHERE id = ?", gone) if gone else 0

    def retry(self, batch: str, state: JobState) -> int:
        """Every ``state`` job of ``batch`` tried again, by the user's explicit choice.

        - failed -> pending: a new attempt (a new task, billed again); the old
          task id stays in the event;
        - in_doubt -> pending: resubmitted; a duplicate task may be billed;
        - stalled -> queued/in_progress: the same task, due for polling now (an
          extra take's too: watched again).

        An extra take that failed stays failed: its job has had a new attempt.

        Returns how many jobs moved.
        """
        if state not in _RETRIES:
            raise ValueError(f"{state} jobs are not retried")
        jobs_only, sets, where_to = _RETRIES[state]
        # A new attempt is for a job, never for an extra take: its job has one already.
        only = " AND extra_of IS NULL" if jobs_only else ""
        with self._engine.write() as tx:
            rows: list[_Row] = tx.rows(
                "SELECT id, task_id, error_code, error_message, attempts, started_utc FROM jobs"
                f" WHERE batch = ? AND state = ?{only} ORDER BY idx, id"
                f"{self._engine.dialect.lock}",
                (batch, state.value),
            )
            moves = []
            for row in rows:
                dst, detail = where_to(row)
                moves.append((row[0], state, dst, sets, detail))
            return self._move_all(tx, moves)

    def start_run(self, batch: str, *, retry: Mapping[str, int] | None = None) -> int:
        """A run begins: completed jobs may be downloaded again at once (returns how many),
        automatic retries may go at once (their back-offs were the last run's), and
        ``retry``, the policy the run makes new attempts under, is recorded for reports."""
        with self._engine.write() as tx:
            if retry is not None:
                tx.execute(
                    "UPDATE batches SET retry_json = ? WHERE name = ?",
                    (json.dumps(dict(retry)), batch),
                )
            tx.execute(
                """UPDATE jobs SET retry_at = NULL
                WHERE batch = ? AND state = 'pending' AND retry_at IS NOT NULL""",
                (batch,),
            )
            return tx.execute(
                """UPDATE jobs SET next_download_at = NULL
                WHERE batch = ? AND state = 'completed' AND next_download_at IS NOT NULL""",
                (batch,),
            )

    def recover_interrupted(self, batch: str) -> int:
        """submitting -> in_doubt for every create left in flight by a process that is gone
        (on a shared ledger: whose lease has ended); it may have left, so it is never resent
        blindly.  Returns how many."""
        check_transition(S.SUBMITTING, S.IN_DOUBT)
        dialect = self._engine.dialect
        with self._engine.write() as tx:
            rows = tx.rows(
                f"""SELECT id, claimed_by FROM jobs WHERE batch = ? AND state = 'submitting'
                AND {unclaimed(dialect)} ORDER BY idx, id{dialect.skip_locked}""",
                (batch,),
            )
            sets = f"error_message = '{INTERRUPTED}', finished_utc = :now, claimed_by = NULL"
            return self._move_all(
                tx,
                (
                    (job_id, S.SUBMITTING, S.IN_DOUBT, sets, _lapsed(INTERRUPTED, worker))
                    for job_id, worker in rows
                ),
            )


def _lapsed(reason: str, worker: str | None) -> dict[str, Any]:
    """An in-doubt event's detail: why, and the worker whose lease ended, if one had it."""
    return {"reason": reason, **({"lease_ended": worker} if worker else {})}
