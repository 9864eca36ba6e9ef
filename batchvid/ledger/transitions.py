"""A task's life after its create, as named writes: its polls, completion and download.

How an attempt ends without a video (failed, stalled) and the new attempts
the retry policy makes are in :mod:`batchvid.ledger.attempts`; the create's
own writes in :mod:`batchvid.ledger.submits`.  Every method is one state
change (or same-state update) and its event, atomic (see
:mod:`batchvid.ledger.core`).
"""

from __future__ import annotations

from pathlib import Path

from ..states import POLLING_STATES, JobState, poll_state
from ..video import VideoFacts
from .core import Mover
from .rows import RenderSample

__all__ = ["TaskMoves"]

S = JobState


class TaskMoves(Mover):
    """The writes a task's polls and download make, one per thing that happens to it."""

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
               render_s = :render_s""",
            {
                "url": video_url,
                "expires_at": expires_at,
                "remote_status": remote_status,
                "server_created_at": server_created_at,
                "server_completed_at": server_completed_at,
                "lo": render.lo if render else None,
                "hi": render.hi if render else None,
                "render_s": render.mid if render_s is None and render else render_s,
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
            ends_work=False,  # the download's outcome is recorded next
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
        etag: str | None = None,
    ) -> None:
        """completed -> downloaded: the file is in place under its final name.

        ``refreshes``: how often the task was queried for a fresh URL on the way;
        ``facts``: what probing the file found, ``normalised`` how that differs
        from the request (:func:`batchvid.video.mismatch`), ``poster``: its poster;
        ``etag``: for a video kept in a store (``file_path`` an ``s3://`` URI), its
        object's ETag.
        """
        values = {
            "file_path": str(file_path),
            "bytes": bytes,
            "sha256": sha256,
            "refreshes": refreshes,
            "poster": None if poster is None else str(poster),
            "normalised": normalised,
            "etag": etag,
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
               has_audio = :has_audio, normalised = :normalised, poster_path = :poster,
               object_etag = :etag""",
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
