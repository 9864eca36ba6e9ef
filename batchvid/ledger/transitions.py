"""The transitions of a run: a job's create, its polls and its download, as named writes.

How an attempt ends without a video (failed, stalled) and the new attempts
the retry policy makes are in :mod:`batchvid.ledger.attempts`.

Every method is one state change (or same-state update) and its event,
atomic (see :mod:`batchvid.ledger.core`).  Cost is counted per attempt:
``billable_attempts`` is raised when a create intent is recorded and lowered
only when the request provably did no work (``release_unsent``) or was refused
(``record_rejected``).  So :meth:`~batchvid.ledger.Ledger.committed_cost` is
``sum(est_cost_usd * billable_attempts)``: in-flight, in-doubt, finished and
failed-then-retried attempts all count.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..errors import IllegalTransition, LedgerError
from ..states import POLLING_STATES, JobState, poll_state
from ..video import VideoFacts
from .core import LedgerCore
from .rows import RenderSample, utc_iso

__all__ = ["RunTransitions"]

S = JobState


class RunTransitions(LedgerCore):
    """The writes a run makes, one per thing that happens to a job."""

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
        now_at = self.clock()
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
                    retry_at = NULL, updated_utc = :now
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
        seen: JobState | None = None,
        server_created_at: float | None = None,
        recovered: bool = False,
    ) -> JobState:
        """submitting -> queued (or in_progress, if the server says so): the task exists.

        ``remote_status`` is kept as the server wrote it; ``seen`` is the job
        state it means (the caller's reading of it: ``None`` for a word it does
        not know).  ``server_created_at``: the task's ``created_at`` as sent.
        ``recovered``: the id comes from the recovery file (see
        :mod:`batchvid.run.recovery`), so an ``in_doubt`` job takes it too.
        """
        if not task_id:
            raise ValueError("task_id must not be empty")
        started = seen is S.IN_PROGRESS
        return self._move(
            job_id,
            "record a task for",
            {S.SUBMITTING, S.IN_DOUBT} if recovered else {S.SUBMITTING},
            S.IN_PROGRESS if started else S.QUEUED,
            """task_id = :task_id, remote_status = :remote_status, progress = 0,
               next_poll_at = :next_poll_at, watch_started_at = :now_at, queued_utc = :now,
               answered_at = :now_at, server_created_at = :server_created_at,
               error_message = NULL, finished_utc = NULL,
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
                "first_poll_in_s": round(next_poll_at - self.clock(), 3),
                **({"recovered": True} if recovered else {}),
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
        seen: JobState | None = None,
        seen_running: bool = True,
    ) -> JobState:
        """A non-terminal poll answer: queued -> in_progress, or an update in place.

        ``seen``: the job state the answer's status means (``None``: unknown);
        never moves a job backwards (see :func:`batchvid.states.poll_state`).
        Counts the poll and schedules the next; an event is written only when
        the state changes.  ``seen_running``: the answer showed the task not
        done (``False`` for a poll that got no usable answer, only a new time).
        Returns the job's state.
        """
        return self._move(
            job_id,
            "record a poll for",
            POLLING_STATES,
            lambda current: poll_state(current, seen),
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
        :func:`batchvid.run.render_times.observe`), kept for later runs to learn from;
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

    def refresh_url(
        self, job_id: int, video_url: str, expires_at: float | None, *, queries: int = 1
    ) -> None:
        """A completed job's fresh signed URL (after ``queries`` re-queries of the task)."""
        self._move(
            job_id,
            "refresh the URL of",
            {S.COMPLETED},
            S.COMPLETED,
            "video_url = :url, video_url_expires_at = :expires_at, polls = polls + :queries",
            {"url": video_url, "expires_at": expires_at, "queries": queries},
        )

    def record_downloaded(
        self,
        job_id: int,
        file_path: str | Path,
        bytes: int,
        sha256: str,
        *,
        refreshes: int = 0,
        facts: VideoFacts | None = None,
        normalised: str | None = None,
        poster: str | Path | None = None,
    ) -> None:
        """completed -> downloaded: the file is in place under its final name.

        ``refreshes``: how often the task was queried for a fresh URL on the way;
        ``facts``: what probing the file found, ``normalised`` how that differs
        from the request (:func:`batchvid.video.mismatch`), ``poster``: its poster.
        """
        values = {
            "file_path": str(file_path),
            "bytes": bytes,
            "sha256": sha256,
            "refreshes": refreshes,
            "poster": None if poster is None else str(poster),
            "normalised": normalised,
            **_facts_columns(facts),
        }
        self._move(
            job_id,
            "mark downloaded",
            {S.COMPLETED},
            S.DOWNLOADED,
            """file_path = :file_path, bytes = :bytes, sha256 = :sha256, error_code = NULL,
               error_message = NULL, downloaded_utc = :now, finished_utc = :now,
               polls = polls + :refreshes, width = :width, height = :height,
               duration_s = :duration_s, fps = :fps, vcodec = :vcodec,
               has_audio = :has_audio, normalised = :normalised, poster_path = :poster""",
            values,
            {"file_path": str(file_path), "bytes": bytes, "sha256": sha256},
        )

    def record_download_error(
        self, job_id: int, message: str, retry_at: float | None = None, *, bad_file: bool = False
    ) -> None:
        """A download try failed: the job stays completed; the last error is kept.

        ``retry_at``: when the next try may start (:data:`~batchvid.ledger.schema.NEVER`:
        not in this run).  ``bad_file``: the file arrived whole but did not decode
        (counted in ``bad_downloads``).
        """
        self._move(
            job_id,
            "record a download error for",
            sources={S.COMPLETED},
            target=S.COMPLETED,
            sets="""download_errors = download_errors + 1, error_code = :code,
               error_message = :message, next_download_at = :retry_at,
               bad_downloads = bad_downloads + :bad""",
            params={
                "message": message,
                "retry_at": retry_at,
                "bad": int(bad_file),
                "code": "undecodable" if bad_file else "download",
            },
        )


def _facts_columns(facts: VideoFacts | None) -> dict[str, object]:
    """The ``jobs`` columns a probe fills (all ``NULL`` without one)."""
    return {
        "width": facts.width if facts else None,
        "height": facts.height if facts else None,
        "duration_s": facts.duration_s if facts else None,
        "fps": facts.fps if facts else None,
        "vcodec": facts.codec if facts else None,
        "has_audio": None if facts is None else int(facts.has_audio),
    }
