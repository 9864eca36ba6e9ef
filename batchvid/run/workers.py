"""The workers: one job's create, poll or download, as requests that return what happened.

A worker sends its requests (through the client, its retries and the shared
rate limiter) and returns an **outcome**; it never decides what the outcome
means for the job: :mod:`batchvid.run.record` does, and writes the ledger.
The one exception is a create's **intent** (:class:`Intent`): it must be
committed after the limiter's grant and immediately before the request leaves,
so the client calls it there.

One outcome type per kind of work (:class:`SubmitOutcome`,
:class:`PollOutcome`, :class:`DownloadOutcome`), each saying how it ended.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio.to_thread

from ..errors import (
    ApiError,
    AuthError,
    DiskFull,
    DownloadError,
    InDoubtError,
    RejectedError,
    RetryableError,
    ServiceRefused,
    TaskNotFound,
    Undecodable,
)
from ..ledger.rows import JobRow
from ..media import POSTER_WIDTH, Inspection, inspect, poster_path, save_poster
from ..outputs import Stored
from ..remote.client import CometClient
from ..remote.download import DownloadResult
from ..remote.protocol import Task, TaskStatus
from ..video import VideoFacts

__all__ = ["DownloadOutcome", "Intent", "PollOutcome", "SubmitOutcome", "Withdrawn", "Workers"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Intent:
    """A create's intent: ``commit`` runs once, right before the request first leaves.

    ``commit`` raises :class:`Withdrawn` when the create must not leave after all.
    """

    commit: Callable[[], Awaitable[None]]
    sent: bool = False

    async def __call__(self) -> None:
        if not self.sent:
            await self.commit()
            self.sent = True


class Withdrawn(Exception):
    """A create withdrawn before it left, nothing sent: a limit shared with other
    workers was reached (``budget``: the budget), or this worker's lease is not sure."""

    def __init__(self, reason: str, *, budget: bool = False) -> None:
        super().__init__(reason)
        self.budget = budget


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """How a create ended; ``kind`` says which, the other fields say what came with it.

    - ``created``: ``task`` is the new task;
    - ``rejected``: the API refused the request itself (400: ``code``,
      ``reason``), or the job's own files could not be sent;
    - ``in_doubt``: sent, but the answer was lost (``reason``): a task may
      exist, and be billed;
    - ``not_sent``: no task was made (``reason``, the server's ``retry_after``;
      ``unexpected`` when it was no refusal the API documents);
    - ``withdrawn``: the intent was not recorded, nothing sent (``reason``;
      ``budget``: the batch's budget is spent across its workers);
    - ``refused``: 401, or 402/403/404/405/3xx on create (``refusal``): every
      job would be refused the same way.
    """

    kind: Literal["created", "rejected", "in_doubt", "not_sent", "withdrawn", "refused"]
    task: Task | None = None
    reason: str = ""
    code: str | None = None
    retry_after: float | None = None
    unexpected: bool = False
    budget: bool = False
    refusal: AuthError | ServiceRefused | None = None


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """How a poll ended: ``answered`` (``task``), ``vanished`` (the task id is unknown
    upstream: ``reason``) or ``no_answer`` (a 429/5xx after the client's retries, or
    an answer the docs do not describe: ``error``)."""

    kind: Literal["answered", "vanished", "no_answer"]
    task: Task | None = None
    reason: str = ""
    error: ApiError | None = None


@dataclass(frozen=True, slots=True)
class DownloadOutcome:
    """How a download try ended: ``fetched`` (``result``; ``facts`` and ``poster`` when
    probed; ``stored``: the object it went to, for a store), ``vanished`` (``reason``),
    ``failed`` (``reason``; ``fresh_url``: a signed URL a refresh gave meanwhile),
    ``undecodable`` (the file arrived whole but is no video: ``reason``), ``disk_full``
    (nothing wrong with the video: no space), ``store_down`` (nothing wrong with it:
    the store did not answer), or ``store_refused`` (the store will not take videos:
    the run stops)."""

    kind: Literal[
        "fetched", "vanished", "failed", "undecodable", "disk_full", "store_down", "store_refused"
    ]
    result: DownloadResult | None = None
    reason: str = ""
    fresh_url: str | None = None
    facts: VideoFacts | None = None
    poster: Path | None = None
    stored: Stored | None = None


class Workers:
    """Create, poll or download one job through ``client``."""

    def __init__(self, client: CometClient, *, probe: bool = True) -> None:
        self.client = client
        #: Probe every file before it is committed, and make its poster.
        self.probe = probe

    async def submit(self, job: JobRow, intent: Intent) -> SubmitOutcome:
        """Create the job's task.  ``intent`` is committed right before the request leaves.

        Anything unexpected after the intent (an OSError mid-request, say) is in
        doubt: the request may have reached the server.
        """
        try:
            task = await self.client.create(job.to_request(), before_send=intent)
        except Withdrawn as exc:
            return SubmitOutcome("withdrawn", reason=str(exc), budget=exc.budget)
        except (AuthError, ServiceRefused) as exc:
            return SubmitOutcome("refused", reason=str(exc), refusal=exc)
        except RejectedError as exc:
            return SubmitOutcome("rejected", reason=exc.message, code=exc.code)
        except InDoubtError as exc:
            return SubmitOutcome("in_doubt", reason=str(exc))
        except RetryableError as exc:
            return SubmitOutcome("not_sent", reason=str(exc), retry_after=exc.retry_after)
        except (ApiError, OSError) as exc:
            if intent.sent:
                return SubmitOutcome("in_doubt", reason=f"create failed unexpectedly: {exc}")
            return SubmitOutcome("not_sent", reason=f"not submitted: {exc}", unexpected=True)
        return SubmitOutcome("created", task=task)

    async def poll(self, job: JobRow) -> PollOutcome:
        """Ask the API how the job's task is doing (a 401 is raised: it stops the run)."""
        assert job.task_id is not None
        try:
            return PollOutcome("answered", task=await self.client.retrieve(job.task_id))
        except TaskNotFound as exc:
            return PollOutcome("vanished", reason=exc.message)
        except AuthError:
            raise
        except ApiError as exc:
            return PollOutcome("no_answer", reason=str(exc), error=exc)

    async def download(self, job: JobRow, dest: Path) -> DownloadOutcome:
        """Fetch the job's video into ``dest`` (its signed URL, refreshed as needed).

        Probed, the file must decode before it gets its final name; its facts
        and poster come back with it.
        """
        assert job.task_id is not None
        source = Task(
            job.task_id, TaskStatus.COMPLETED, job.remote_status or "", video_url=job.video_url
        )
        check = _inspect if self.probe else None
        try:
            result = await self.client.download(source, dest, check=check)
        except TaskNotFound as exc:
            reason = f"the task vanished before its download: {exc.message}"
            return DownloadOutcome("vanished", reason=reason)
        except AuthError:
            raise
        except DiskFull as exc:
            return DownloadOutcome("disk_full", reason=str(exc))
        except Undecodable as exc:
            return DownloadOutcome("undecodable", reason=str(exc), fresh_url=exc.fresh_url)
        except DownloadError as exc:
            return DownloadOutcome("failed", reason=str(exc), fresh_url=exc.fresh_url)
        except (ApiError, OSError) as exc:
            return DownloadOutcome("failed", reason=str(exc))
        if not isinstance(result.checked, Inspection):
            return DownloadOutcome("fetched", result=result)
        poster = None
        if result.checked.poster is not None:
            try:
                poster = await anyio.to_thread.run_sync(
                    save_poster, result.checked.poster, poster_path(result.path)
                )
            except OSError as exc:  # the video is safe; a gallery shows it without one
                log.warning("no poster for %s: %s", result.path.name, exc)
        return DownloadOutcome("fetched", result=result, facts=result.checked.facts, poster=poster)


def _inspect(path: Path) -> Inspection:
    """Probe a downloaded file and take its poster frame (blocking; a worker thread)."""
    return inspect(path, poster_width=POSTER_WIDTH)
