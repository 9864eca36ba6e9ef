"""How an attempt ends without a video, and the new attempts the retry policy makes.

``record_failed`` and ``record_stalled`` end an attempt; given an
:class:`~batchvid.ledger.rows.AutoRetry` they also make the next one, in the
same transaction: the job goes back to ``pending`` (not submitted before the
back-off ends), its automatic retries counted per kind in ``retries_json``,
and every step an event.  A stalled or vanished attempt is not dropped: it is
split off into a row of its own (``extra_of`` the job) that keeps the task and
is still watched (a stalled task may still finish; one upstream lost may be
found again); if it finishes, its video is an extra take.
"""

from __future__ import annotations

import json
from typing import Final

from ..states import POLLING_STATES, JobState
from .core import Mover
from .engine import Tx
from .rows import EXTRA_KEY_MARK, AutoRetry, JobRow

__all__ = ["NEW_ATTEMPT", "AttemptMoves"]

S = JobState

#: Per-attempt fields, cleared when a job goes back to pending for a new attempt (but
#: ``error_message``: see :data:`NEW_ATTEMPT`).
_CLEARED: Final = """task_id = NULL, remote_status = NULL, progress = NULL, polls = 0,
    next_poll_at = NULL, watch_started_at = NULL, video_url = NULL,
    video_url_expires_at = NULL, error_code = NULL,
    download_errors = 0, submitted_utc = NULL, queued_utc = NULL, started_utc = NULL,
    completed_utc = NULL, finished_utc = NULL, sent_at = NULL, answered_at = NULL,
    last_running_at = NULL, server_created_at = NULL, server_completed_at = NULL,
    render_lo_s = NULL, render_hi_s = NULL, render_s = NULL, next_download_at = NULL,
    bad_downloads = 0"""
#: ... and the last attempt's error too.
NEW_ATTEMPT: Final = _CLEARED + ", error_message = NULL"
#: The columns an earlier attempt split off a job keeps as they were (see ``_split_off``).
_KEPT: Final = tuple(
    c
    for c in JobRow._fields
    if c not in {"id", "key", "billable_attempts", "next_poll_at", "watch_started_at",
                 "next_download_at", "updated_utc", "retries_json", "retry_at", "extra_of",
                 "claimed_by"}
)  # fmt: skip


_POLLED: Final = ", ".join(f"'{s.value}'" for s in sorted(POLLING_STATES))


class AttemptMoves(Mover):
    """Attempts that end without a video, and the new ones the retry policy makes."""

    def record_failed(
        self,
        job_id: int,
        code: str | None,
        message: str,
        *,
        remote_status: str | None = None,
        retry: AutoRetry | None = None,
        watch_at: float | None = None,
    ) -> int | None:
        """queued/in_progress (or completed, task gone) -> failed; the reason is kept.

        ``retry``: the retry policy gives the job a new attempt: failed -> pending
        in the same transaction, both steps in the events.  With ``watch_at`` too,
        the attempt is first split off and watched from then on (a task upstream
        lost may be found again); returns the id of that row.
        """
        with self._engine.write() as tx:
            kept = None
            if retry is not None and watch_at is not None:
                kept = self._split_off(tx, job_id, watch_at)
            self._step(
                tx,
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
            if retry is not None:
                self._new_attempt(tx, job_id, S.FAILED, retry, message, kept_as=kept)
            return kept

    def record_undecodable(self, job_id: int, message: str) -> None:
        """completed -> failed: the video fetched again still does not decode.

        Counted as a bad file and a download error (not as a poll); the task is
        never created again for it (no retry policy applies).
        """
        self._move(
            job_id,
            "fail (undecodable)",
            sources={S.COMPLETED},
            target=S.FAILED,
            sets="""download_errors = download_errors + 1, bad_downloads = bad_downloads + 1,
               error_code = 'undecodable', error_message = :message, next_download_at = NULL,
               finished_utc = :now""",
            params={"message": message},
            detail={"code": "undecodable", "message": message},
        )

    def record_stalled(
        self,
        job_id: int,
        reason: str = "still not finished after max_wait",
        *,
        retry: AutoRetry | None = None,
        watch_at: float | None = None,
    ) -> int | None:
        """queued/in_progress -> stalled: given up on for this run (``reason`` is kept).

        The poll that found it still running counts; polling stops.  With
        ``retry``, the job gets a new attempt (stalled -> pending) and its
        stalled attempt is split off into a row of its own that keeps the task,
        watched from ``watch_at`` on (see :meth:`_split_off`); returns that
        row's id.  One transaction.
        """
        with self._engine.write() as tx:
            kept = None
            if retry is not None:
                kept = self._split_off(tx, job_id, self.clock() if watch_at is None else watch_at)
            self._step(
                tx,
                job_id,
                "stall",
                POLLING_STATES,
                S.STALLED,
                """next_poll_at = NULL, finished_utc = :now, polls = polls + 1,
                   error_code = 'stalled', error_message = :reason""",
                {"reason": reason},
                {"reason": reason},
            )
            if retry is not None:
                self._new_attempt(tx, job_id, S.STALLED, retry, reason, kept_as=kept)
            return kept

    def _new_attempt(
        self,
        tx: Tx,
        job_id: int,
        src: JobState,
        retry: AutoRetry,
        why: str,
        *,
        kept_as: int | None = None,
    ) -> None:
        """``src`` -> pending by the retry policy: a new attempt, not before ``retry_at``."""
        row = tx.one("SELECT task_id, attempts, retries_json FROM jobs WHERE id = ?", (job_id,))
        assert row is not None
        task_id, attempts, retries_text = row
        retries = json.loads(retries_text)
        retries[retry.kind] = int(retries.get(retry.kind, 0)) + 1
        detail = {
            "retry": retry.kind,
            "rule": retry.rule,
            "previous_task_id": task_id,
            "attempt": attempts + 1,
            "after_s": round(max(0.0, retry.retry_at - self.clock()), 1),
            **({"kept_as_job": kept_as} if kept_as is not None else {}),
        }
        self._step(
            tx,
            job_id,
            f"retry ({retry.rule})",
            {src},
            S.PENDING,
            f"""{_CLEARED}, retry_at = :retry_at, error_message = :why,
               retries_json = :retries""",
            {
                "retry_at": retry.retry_at,
                "why": f"{retry.kind}, retried: {why}",
                "retries": json.dumps(retries),
            },
            detail,
        )

    def _split_off(self, tx: Tx, job_id: int, watch_at: float) -> int:
        """Copy a job's attempt, as it stands, into a row of its own: the extra take.

        Called before the attempt is ended on the job.  The copy keeps the task,
        its request, its state and its history (the job's events so far are
        copied, so its chain replays); it is keyed ``<key>~a<attempt>``, points
        at the job by ``extra_of``, bills nothing more (the cost stays counted
        on the job), and if its task is polled, is next polled at ``watch_at``.
        """
        kept = ", ".join(_KEPT)
        values = {
            "id": job_id,
            "watch_at": watch_at,
            "mark": EXTRA_KEY_MARK,
            **self._context.stamp(),
        }
        polled = f"CASE WHEN state IN ({_POLLED}) THEN :watch_at END"
        row = tx.one(
            f"""INSERT INTO jobs ({kept}, key, billable_attempts, next_poll_at,
                watch_started_at, updated_utc, extra_of)
            SELECT {kept}, key || :mark || attempts, 0, {polled}, :now_at, :now, id
            FROM jobs WHERE id = :id RETURNING id""",
            values,
        )
        assert row is not None
        new_id = int(row[0])
        tx.execute(
            """INSERT INTO events (job_id, from_state, to_state, at_utc, detail_json)
            SELECT ?, from_state, to_state, at_utc, detail_json FROM events
            WHERE job_id = ? ORDER BY id""",
            (new_id, job_id),
        )
        return new_id
