"""The SQLite ledger: every batch, job and state change, durable across any crash.

The ledger is four modules, and only they hold SQL: this one (opening,
upserts, every state transition), ``ledger_queries`` (reads),
``ledger_schema`` (pragmas, migrations) and ``ledger_rows`` (typed rows).
One file holds many batches.

Every state change is a named method that checks the move against
:data:`batchvid.states.TRANSITIONS` inside a ``BEGIN IMMEDIATE`` transaction
(read the state, conditional ``UPDATE ... WHERE state = <that state>``, append
the ``events`` row, commit): a kill at any instant leaves all of it or none.
The file is in WAL mode: every commit survives the process being killed.  The
commits that must also survive a power cut (a ``submitting`` intent, before
its create leaves, and the task id the create returned) are fsynced
(``synchronous=FULL`` for that commit, which also makes everything before it
durable); the rest are not, which keeps a busy batch from waiting on the disk.

Cost is counted per attempt: ``billable_attempts`` is raised when a create
intent is recorded and lowered only when the request provably did no work
(``release_unsent``) or was refused (``record_rejected``).  So
:meth:`Ledger.committed_cost` is ``sum(est_cost_usd * billable_attempts)``:
in-flight, in-doubt, finished and failed-then-retried attempts all count.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from .errors import IllegalTransition, LedgerError
from .ledger_queries import LedgerQueries
from .ledger_rows import BatchRow, JobInput, axes_json, references_json, utc_iso
from .ledger_schema import migrations, open_connection, open_read_only
from .render_times import RenderSample
from .states import POLLING_STATES, JobState, check_transition, poll_state, remote_state

__all__ = ["DEFAULT_LEDGER", "Ledger", "migrations", "open_ledger", "utc_iso"]

#: Where the ledger lives unless --ledger or BATCHVID_LEDGER say otherwise.
DEFAULT_LEDGER: Final = Path("state/batchvid.db")

S = JobState
_INTERRUPTED: Final = "interrupted while a create request may have been in flight"

# Per-attempt fields, cleared when a job goes back to pending for a new attempt.
_NEW_ATTEMPT: Final = """task_id = NULL, remote_status = NULL, progress = NULL, polls = 0,
    next_poll_at = NULL, watch_started_at = NULL, video_url = NULL,
    video_url_expires_at = NULL, error_code = NULL, error_message = NULL,
    download_errors = 0, submitted_utc = NULL, queued_utc = NULL, started_utc = NULL,
    completed_utc = NULL, finished_utc = NULL, sent_at = NULL, answered_at = NULL,
    last_running_at = NULL, server_created_at = NULL, server_completed_at = NULL,
    render_lo_s = NULL, render_hi_s = NULL"""


class Ledger(LedgerQueries):
    """One ledger file, open and migrated.  Thread-safe; use as a context manager.

    ``clock`` returns unix seconds (``time.time``); tests inject their own.
    ``create=False`` refuses a missing file.  ``read_only=True`` opens an existing,
    current ledger for queries only (reports beside a running batch): nothing is
    created or migrated, and every write raises :class:`LedgerError`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self.read_only = read_only
        if read_only:
            self._conn = open_read_only(self.path)
            return
        if not create and not self.path.exists():
            raise LedgerError(f"no ledger at {self.path}")
        self._conn = open_connection(self.path)

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if not self.read_only:
                with suppress(sqlite3.Error):  # closed already, or busy: the hint is optional
                    self._conn.execute("PRAGMA optimize")
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
                raise LedgerError(f"ledger {self.path}: {exc}") from exc
            finally:
                if durable:
                    with suppress(sqlite3.Error):
                        conn.execute("PRAGMA synchronous = NORMAL")

    def _stamp(self) -> dict[str, Any]:
        now = self._clock()
        return {"now": utc_iso(now), "now_at": now}

    def _move(
        self,
        job_id: int,
        action: str,
        sources: Iterable[JobState],
        target: JobState | Callable[[JobState], JobState],
        sets: str = "",
        params: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None,
        *,
        durable: bool = False,
    ) -> JobState:
        """Apply one job's state change (or same-state update) and its event, atomically.

        ``sources`` are the states ``action`` applies to; ``target`` is the new
        state, or a function of the current one.  A change of state must be in
        the transition table and writes an ``events`` row; staying put does not.
        """
        with self._write(durable=durable) as conn:
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
    ) -> int:
        """Move every ``src`` job of a batch (to ``dst_sql``, evaluated per row) with events."""
        where = "WHERE batch = :batch AND state = :src"
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

    # -- batches and jobs --------------------------------------------------------

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

    def upsert_jobs(
        self,
        batch: str,
        jobs: Iterable[JobInput],
        *,
        est_cost: Callable[[JobInput], float | None] | None = None,
    ) -> int:
        """Add the jobs whose key is new to ``batch`` (as ``pending``); return how many.

        A key the batch already has keeps its row untouched: its state, task id
        and everything learned since (and ``est_cost`` is not asked about it).
        A job's ``axes`` (matrix values), when it has them, are stored too.
        One transaction, however many jobs.
        """
        now = utc_iso(self._clock())

        def new_rows(known: set[str]) -> Iterator[tuple[Any, ...]]:
            for j in jobs:
                if j.key in known:
                    continue
                known.add(j.key)
                cost = est_cost(j) if est_cost is not None else None
                refs = references_json(j.references)
                axes = axes_json(getattr(j, "axes", ()))
                yield (
                    *(batch, j.key, j.index, j.take, j.prompt_id, j.prompt, j.model),
                    *(j.seconds, j.size, j.resolution, refs, axes, cost, now, now),
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

    # -- transitions: submitting ------------------------------------------------

    def begin_submit(self, job_id: int) -> None:
        """pending -> submitting: the intent, durable before the create request is sent."""
        self.begin_submit_many([job_id])

    def begin_submit_many(self, job_ids: Iterable[int]) -> None:
        """pending -> submitting for several jobs in one transaction (all or none).

        Raises ``attempts`` and ``billable_attempts`` by one each.
        """
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return
        now_at = self._clock()
        now = utc_iso(now_at)
        # Durable: the intent must be on disk before the create can leave.
        with self._write(durable=True) as conn:
            found = {
                i: conn.execute("SELECT state FROM jobs WHERE id = ?", (i,)).fetchone() for i in ids
            }
            missing = [str(i) for i, row in found.items() if row is None]
            if missing:
                raise LedgerError(f"no job with id {', '.join(missing)}")
            wrong = [f"{i} ({row[0]})" for i, row in found.items() if row[0] != S.PENDING]
            if wrong:
                raise IllegalTransition(f"only pending jobs can be submitted: {', '.join(wrong)}")
            # Per-id statements: an IN-list can lead the planner to the state index.
            updated = conn.executemany(
                """UPDATE jobs SET state = 'submitting', attempts = attempts + 1,
                    billable_attempts = billable_attempts + 1, submitted_utc = :now,
                    sent_at = :now_at, error_code = NULL, error_message = NULL,
                    updated_utc = :now
                WHERE id = :id AND state = 'pending'""",
                [{"id": i, "now": now, "now_at": now_at} for i in ids],
            ).rowcount
            if updated != len(ids):  # cannot happen while we hold the write lock
                raise IllegalTransition("jobs changed under us during submit")
            conn.executemany(
                "INSERT INTO events (job_id, from_state, to_state, at_utc, detail_json)"
                " SELECT id, 'pending', 'submitting', :now, json_object('attempt', attempts)"
                " FROM jobs WHERE id = :id",
                [{"id": i, "now": now} for i in ids],
            )

    def record_submitted(
        self,
        job_id: int,
        task_id: str,
        remote_status: str | None,
        next_poll_at: float,
        *,
        server_created_at: float | None = None,
    ) -> JobState:
        """submitting -> queued (or in_progress, if the server says so): the task exists.

        ``server_created_at``: the task's ``created_at`` as the server sent it.
        """
        if not task_id:
            raise ValueError("task_id must not be empty")
        started = remote_state(remote_status) is S.IN_PROGRESS
        return self._move(
            job_id,
            "record a task for",
            {S.SUBMITTING},
            S.IN_PROGRESS if started else S.QUEUED,
            """task_id = :task_id, remote_status = :remote_status, progress = 0,
               next_poll_at = :next_poll_at, watch_started_at = :now_at, queued_utc = :now,
               answered_at = :now_at, server_created_at = :server_created_at,
               started_utc = CASE WHEN :started THEN :now END""",
            {
                "task_id": task_id,
                "remote_status": remote_status,
                "next_poll_at": next_poll_at,
                "started": started,
                "server_created_at": server_created_at,
            },
            {
                "task_id": task_id,
                "remote_status": remote_status,
                "first_poll_in_s": round(next_poll_at - self._clock(), 3),
            },
            durable=True,  # a paid task's id must survive a power cut
        )

    def record_rejected(self, job_id: int, code: str | None, message: str) -> None:
        """submitting -> rejected: the create was refused (400); no task, nothing billed."""
        self._move(
            job_id,
            "reject",
            {S.SUBMITTING},
            S.REJECTED,
            """billable_attempts = billable_attempts - 1, error_code = :code,
               error_message = :message, finished_utc = :now""",
            {"code": code, "message": message},
            {"code": code, "message": message},
        )

    def record_in_doubt(self, job_id: int, detail: str) -> None:
        """submitting -> in_doubt: the create was sent but its answer was lost."""
        self._move(
            job_id,
            "mark in doubt",
            {S.SUBMITTING},
            S.IN_DOUBT,
            "error_message = :reason, finished_utc = :now",
            {"reason": detail},
            {"reason": detail},
        )

    def release_unsent(self, job_id: int, detail: str) -> None:
        """submitting -> pending: the request provably never did any work (429, connect error)."""
        self._move(
            job_id,
            "release",
            {S.SUBMITTING},
            S.PENDING,
            """billable_attempts = billable_attempts - 1, submitted_utc = NULL,
               error_message = :reason""",
            {"reason": detail},
            {"reason": detail},
        )

    # -- transitions: polling and downloading -------------------------------------

    def record_poll(
        self,
        job_id: int,
        remote_status: str | None,
        progress: int | None,
        next_poll_at: float,
        *,
        seen_running: bool = True,
    ) -> JobState:
        """A non-terminal poll answer: queued -> in_progress, or an update in place.

        Counts the poll and schedules the next; an event is written only when
        the state changes.  ``seen_running``: the answer showed the task not
        done (``False`` for a poll that got no usable answer, only a new time).
        Returns the job's state.
        """
        return self._move(
            job_id,
            "record a poll for",
            POLLING_STATES,
            lambda current: poll_state(current, remote_status),
            """remote_status = :remote_status, progress = coalesce(:progress, progress),
               polls = polls + 1, next_poll_at = :next_poll_at,
               last_running_at = CASE WHEN :seen THEN :now_at ELSE last_running_at END,
               started_utc = coalesce(started_utc, CASE WHEN :dst = 'in_progress' THEN :now END)""",
            {
                "remote_status": remote_status,
                "progress": progress,
                "next_poll_at": next_poll_at,
                "seen": seen_running,
            },
        )

    def record_completed(
        self,
        job_id: int,
        video_url: str | None,
        expires_at: float | None,
        *,
        remote_status: str | None = None,
        server_created_at: float | None = None,
        server_completed_at: float | None = None,
        render: RenderSample | None = None,
        render_s: float | None = None,
    ) -> None:
        """queued/in_progress -> completed: rendered upstream; ``video_url`` to fetch.

        ``render``: what the task proved about its render time (see
        :func:`batchvid.render_times.observe`), kept for later runs to learn from;
        ``render_s``: the best estimate within it, for reports.
        """
        self._move(
            job_id,
            "complete",
            POLLING_STATES,
            S.COMPLETED,
            """video_url = :url, video_url_expires_at = :expires_at, progress = 100,
               remote_status = coalesce(:remote_status, remote_status), polls = polls + 1,
               next_poll_at = NULL, completed_utc = :now,
               server_created_at = coalesce(:server_created_at, server_created_at),
               server_completed_at = :server_completed_at, render_lo_s = :lo, render_hi_s = :hi,
               render_s = coalesce(:render_s, (:lo + :hi) / 2)""",
            {
                "url": video_url,
                "expires_at": expires_at,
                "remote_status": remote_status,
                "server_created_at": server_created_at,
                "server_completed_at": server_completed_at,
                "lo": render.lo if render else None,
                "hi": render.hi if render else None,
                "render_s": render_s,
            },
        )

    def record_failed(
        self,
        job_id: int,
        code: str | None,
        message: str,
        *,
        remote_status: str | None = None,
    ) -> None:
        """queued/in_progress (or completed, task gone) -> failed; the reason is kept."""
        self._move(
            job_id,
            "fail",
            POLLING_STATES | {S.COMPLETED},
            S.FAILED,
            """error_code = :code, error_message = :message, polls = polls + 1,
               remote_status = coalesce(:remote_status, remote_status),
               next_poll_at = NULL, finished_utc = :now""",
            {"code": code, "message": message, "remote_status": remote_status},
            {"code": code, "message": message},
        )

    def record_stalled(
        self, job_id: int, reason: str = "still not finished after max_wait"
    ) -> None:
        """queued/in_progress -> stalled: given up on for this run (``reason`` is kept).

        The poll that found it still running counts; polling stops.
        """
        self._move(
            job_id,
            "stall",
            POLLING_STATES,
            S.STALLED,
            """next_poll_at = NULL, finished_utc = :now, polls = polls + 1,
               error_code = 'stalled', error_message = :reason""",
            {"reason": reason},
            {"reason": reason},
        )

    def refresh_url(self, job_id: int, video_url: str, expires_at: float | None) -> None:
        """A completed job's fresh signed URL (after re-querying the task); no state change."""
        self._move(
            job_id,
            "refresh the URL of",
            {S.COMPLETED},
            S.COMPLETED,
            "video_url = :url, video_url_expires_at = :expires_at, polls = polls + 1",
            {"url": video_url, "expires_at": expires_at},
        )

    def record_downloaded(
        self, job_id: int, file_path: str | Path, bytes: int, sha256: str
    ) -> None:
        """completed -> downloaded: the file is in place under its final name."""
        self._move(
            job_id,
            "mark downloaded",
            {S.COMPLETED},
            S.DOWNLOADED,
            """file_path = :file_path, bytes = :bytes, sha256 = :sha256, error_code = NULL,
               error_message = NULL, downloaded_utc = :now, finished_utc = :now""",
            {"file_path": str(file_path), "bytes": bytes, "sha256": sha256},
            {"file_path": str(file_path), "bytes": bytes, "sha256": sha256},
        )

    def record_download_error(self, job_id: int, message: str) -> None:
        """A download attempt failed: the job stays completed; the last error is kept."""
        self._move(
            job_id,
            "record a download error for",
            {S.COMPLETED},
            S.COMPLETED,
            """download_errors = download_errors + 1, error_code = 'download',
               error_message = :message""",
            {"message": message},
        )

    # -- explicit user actions and crash recovery ---------------------------------

    def retry_failed(self, batch: str) -> int:
        """failed -> pending, as new attempts; the old task id stays in the event detail."""
        check_transition(S.FAILED, S.PENDING)
        return self._move_batch(
            batch,
            S.FAILED,
            "'pending'",
            _NEW_ATTEMPT,
            """json_object('previous_task_id', task_id, 'error_code', error_code,
                'error_message', error_message, 'attempt', attempts)""",
        )

    def retry_in_doubt(self, batch: str) -> int:
        """in_doubt -> pending, by the user's choice: a duplicate task may be billed."""
        check_transition(S.IN_DOUBT, S.PENDING)
        return self._move_batch(
            batch,
            S.IN_DOUBT,
            "'pending'",
            "submitted_utc = NULL, error_message = NULL, finished_utc = NULL",
            """json_object('duplicate_may_be_billed', json('true'), 'reason', error_message,
                'attempt', attempts)""",
        )

    def retry_stalled(self, batch: str) -> int:
        """stalled -> queued/in_progress with the same task id, due for polling now."""
        check_transition(S.STALLED, S.QUEUED)
        check_transition(S.STALLED, S.IN_PROGRESS)
        return self._move_batch(
            batch,
            S.STALLED,
            "CASE WHEN started_utc IS NULL THEN 'queued' ELSE 'in_progress' END",
            """next_poll_at = :now_at, watch_started_at = :now_at, finished_utc = NULL,
               error_code = NULL, error_message = NULL""",
            "json_object('task_id', task_id)",
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


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(dict(value), sort_keys=True)


def open_ledger(path: Path, *, create: bool = True) -> Ledger:
    """Open the ledger at ``path``; a clear LedgerError when it is missing and ``create`` is off."""
    if not create and not path.exists():
        raise LedgerError(f"no ledger at {path} (run a batch first, or pass --ledger)")
    return Ledger(path, create=create)
