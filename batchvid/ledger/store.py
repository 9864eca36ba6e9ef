"""The ledger as one object: the file, its reads, and every write a batch needs.

:class:`Ledger` puts together the core (open file, write transactions:
``core``), the run's transitions (``transitions``), the reads (``queries``),
and here the writes around them: recording batches and jobs (idempotent, by
job key), the user's explicit ``retry`` actions, and crash recovery.  One file
holds many batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from ..errors import LedgerError
from ..states import JobState, check_transition
from .attempts import NEW_ATTEMPT, AttemptTransitions
from .queries import LedgerQueries
from .rows import BatchRow, NewJob, axes_json, references_json, utc_iso
from .schema import migrations
from .transitions import RunTransitions

__all__ = ["DEFAULT_LEDGER", "Ledger", "migrations", "open_ledger", "utc_iso"]

#: Where the ledger lives unless --ledger or BATCHVID_LEDGER say otherwise.
DEFAULT_LEDGER: Final = Path("state/batchvid.db")

S = JobState
_INTERRUPTED: Final = "interrupted while a create request may have been in flight"

#: What ``Ledger.retry`` does to the jobs of a state: where they may go, where they go
#: (SQL, per row), the columns set, and what the event keeps (SQL).
_RETRIES: Final[Mapping[JobState, tuple[frozenset[JobState], str, str, str]]] = {
    S.FAILED: (
        frozenset({S.PENDING}),
        "'pending'",
        NEW_ATTEMPT,
        """json_object('previous_task_id', task_id, 'error_code', error_code,
            'error_message', error_message, 'attempt', attempts)""",
    ),
    S.IN_DOUBT: (
        frozenset({S.PENDING}),
        "'pending'",
        "submitted_utc = NULL, error_message = NULL, finished_utc = NULL",
        """json_object('duplicate_may_be_billed', json('true'), 'reason', error_message,
            'attempt', attempts)""",
    ),
    S.STALLED: (
        frozenset({S.QUEUED, S.IN_PROGRESS}),
        "CASE WHEN started_utc IS NULL THEN 'queued' ELSE 'in_progress' END",
        """next_poll_at = :now_at, watch_started_at = :now_at, finished_utc = NULL,
           error_code = NULL, error_message = NULL""",
        "json_object('task_id', task_id)",
    ),
}


class Ledger(RunTransitions, AttemptTransitions, LedgerQueries):
    """One ledger file, open and migrated.  Thread-safe; use as a context manager.

    ``clock`` returns unix seconds (``time.time``); tests inject their own.
    ``create=False`` refuses a missing file; ``check=True`` a damaged one.
    ``read_only=True`` opens an existing, current ledger for queries only
    (reports beside a running batch): nothing is created or migrated, and every
    write raises :class:`LedgerError`.
    """

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
            **self._stamp(),
        }
        with self._write() as conn:
            conn.execute(
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
            row = conn.execute("SELECT * FROM batches WHERE name = ?", (name,)).fetchone()
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

        with self._write() as conn:
            if conn.execute("SELECT 1 FROM batches WHERE name = ?", (batch,)).fetchone() is None:
                raise LedgerError(f"no batch named {batch!r}: upsert_batch first")
            known = {k for (k,) in conn.execute("SELECT key FROM jobs WHERE batch = ?", (batch,))}
            before = conn.total_changes
            conn.executemany(
                """INSERT INTO jobs (batch, key, idx, take, prompt_id, prompt, model, seconds,
                    size, resolution, references_json, axes_json, est_cost_usd, created_utc,
                    updated_utc)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (batch, key) DO NOTHING""",
                new_rows(known),
            )
            added = conn.total_changes - before
        return added

    def drop_unsent(self, batch: str, keep: Iterable[str]) -> int:
        """Delete the batch's pending jobs that were never sent and whose key is not in ``keep``.

        For a manifest edited between runs: a job it no longer lists, and that
        never left (no attempt, no event), has nothing to lose and must not be
        submitted.  Jobs with any history stay.  Returns how many were dropped.
        """
        with self._write() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS kept_keys (key TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM kept_keys")
            conn.executemany("INSERT OR IGNORE INTO kept_keys VALUES (?)", ((k,) for k in keep))
            dropped = conn.execute(
                """DELETE FROM jobs WHERE batch = ? AND state = 'pending' AND attempts = 0
                    AND key NOT IN (SELECT key FROM kept_keys)
                    AND NOT EXISTS (SELECT 1 FROM events WHERE events.job_id = jobs.id)""",
                (batch,),
            ).rowcount
            conn.execute("DELETE FROM kept_keys")
        return int(dropped)

    # -- explicit user actions and crash recovery ---------------------------------

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
        targets, dst_sql, sets, detail_sql = _RETRIES[state]
        for target in targets:
            check_transition(state, target)
        # A new attempt is for a job, never for an extra take: its job has one already.
        jobs_only = S.PENDING in targets
        return self._move_batch(batch, state, dst_sql, sets, detail_sql, jobs_only=jobs_only)

    def start_run(self, batch: str, *, retry: Mapping[str, int] | None = None) -> int:
        """A run begins: completed jobs may be downloaded again at once (returns how many),
        automatic retries may go at once (their back-offs were the last run's), and
        ``retry``, the policy the run makes new attempts under, is recorded for reports."""
        with self._write() as conn:
            if retry is not None:
                conn.execute(
                    "UPDATE batches SET retry_json = ? WHERE name = ?",
                    (json.dumps(dict(retry)), batch),
                )
            conn.execute(
                """UPDATE jobs SET retry_at = NULL
                WHERE batch = ? AND state = 'pending' AND retry_at IS NOT NULL""",
                (batch,),
            )
            return int(
                conn.execute(
                    """UPDATE jobs SET next_download_at = NULL
                    WHERE batch = ? AND state = 'completed' AND next_download_at IS NOT NULL""",
                    (batch,),
                ).rowcount
            )

    def recover_interrupted(self, batch: str) -> int:
        """On resume: submitting -> in_doubt (a create may have left; never resend blindly)."""
        check_transition(S.SUBMITTING, S.IN_DOUBT)
        return self._move_batch(
            batch,
            S.SUBMITTING,
            "'in_doubt'",
            "error_message = :reason, finished_utc = :now",
            "json_object('reason', :reason)",
            {"reason": _INTERRUPTED},
        )


def open_ledger(path: Path, *, create: bool = True, check: bool = False) -> Ledger:
    """Open the ledger at ``path``; a clear LedgerError when it is missing and ``create`` is off.

    ``check``: refuse a damaged file (SQLite's quick check), as a run does before it
    sends anything.
    """
    if not create and not path.exists():
        raise LedgerError(f"no ledger at {path} (run a batch first, or pass --ledger)")
    return Ledger(path, create=create, check=check)
