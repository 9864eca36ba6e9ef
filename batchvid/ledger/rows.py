"""What the ledger takes in and hands out: typed rows, no SQL.

``NewJob`` is what :meth:`batchvid.ledger.Ledger.upsert_jobs` records;
``JobRow``, ``BatchRow``, ``Event`` and ``RenderSample`` are what its queries
return.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, NamedTuple

from ..catalogue import DEFAULT_RESOLUTION, DEFAULT_SECONDS, DEFAULT_SIZE
from ..request import VideoRequest
from ..states import JobState
from ..video import VideoFacts

__all__ = [
    "BATCH_COLUMNS",
    "EVENT_COLUMNS",
    "EXTRA_KEY_MARK",
    "JOB_COLUMNS",
    "AutoRetry",
    "BatchRow",
    "Event",
    "JobRow",
    "NewJob",
    "RenderSample",
    "StoredReference",
    "axes_json",
    "references_json",
    "utc_iso",
]


@dataclass(frozen=True, slots=True)
class AutoRetry:
    """A new attempt the retry policy gives a job whose attempt just ended.

    ``kind``: the outcome it answers (``error``, ``failed``, ``vanished``,
    ``stalled``); ``retry_at``: the job is not submitted before then (the
    back-off); ``rule``: what allowed it (``"retry.error = 2"``), for the event.
    """

    kind: str
    retry_at: float
    rule: str


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job to record in the ledger (``index`` becomes ``idx``).

    ``axes``: the matrix values that made it, as ``(name, value)`` pairs, for
    reports laid out on them; ``est_cost_usd``: its estimated cost, if priced.
    """

    key: str
    index: int
    prompt: str
    model: str
    seconds: int = DEFAULT_SECONDS
    size: str = DEFAULT_SIZE
    resolution: str = DEFAULT_RESOLUTION
    take: int = 1
    prompt_id: str | None = None
    references: tuple[StoredReference, ...] = field(default=())
    axes: tuple[tuple[str, str], ...] = field(default=())
    est_cost_usd: float | None = None


def _epoch(utc: str) -> float:
    """The ledger's ``..._utc`` text as unix seconds."""
    return datetime.fromisoformat(utc).timestamp()


def utc_iso(t: float) -> str:
    """Unix seconds as the ledger's ``..._utc`` text: ``2026-04-20T10:32:29.123Z``."""
    sec, ms = divmod(round(t * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ms:03d}Z"


def references_json(refs: Sequence[StoredReference]) -> str:
    """The ``jobs.references_json`` text for a job's reference images, in upload order."""
    if not refs:
        return "[]"
    return json.dumps(
        [{"path": str(r.path), "sha256": r.sha256, "content_type": r.content_type} for r in refs]
    )


def axes_json(axes: Sequence[tuple[str, str]]) -> str:
    """The ``jobs.axes_json`` text: ``[[name, value], ...]`` in manifest order."""
    if not axes:
        return "[]"
    return json.dumps([[str(name), str(value)] for name, value in axes], ensure_ascii=False)


class StoredReference(NamedTuple):
    """A reference image as recorded: its path (as a string), sha256 and content type."""

    path: str
    sha256: str
    content_type: str


class RenderSample(NamedTuple):
    """What one finished task proved: its render took between ``lo`` and ``hi`` seconds.

    ``lo`` may be 0 (seen done at the first look).  ``stamped``: the server's
    own timestamps narrowed it.  Made by :func:`batchvid.run.render_times.observe`,
    kept in ``jobs.render_lo_s`` / ``render_hi_s`` for later runs to learn from.
    """

    lo: float
    hi: float
    stamped: bool = False

    @property
    def mid(self) -> float:
        return (self.lo + self.hi) / 2


class JobRow(NamedTuple):
    """One row of ``jobs``; field names are the column names.

    Times named ``..._utc`` are ISO-8601 UTC strings; ``..._at`` are unix seconds.
    A named tuple rather than a frozen dataclass: as immutable, and built in half
    the time, which counts when a report or the dispatcher reads many thousands.
    """

    id: int
    batch: str
    key: str
    idx: int
    take: int
    prompt_id: str | None
    prompt: str
    model: str
    seconds: int
    size: str
    resolution: str
    references_json: str
    axes_json: str
    est_cost_usd: float | None
    state: JobState
    task_id: str | None
    attempts: int
    billable_attempts: int
    remote_status: str | None
    progress: int | None
    polls: int
    next_poll_at: float | None
    watch_started_at: float | None
    video_url: str | None
    video_url_expires_at: float | None
    file_path: str | None
    bytes: int | None
    sha256: str | None
    error_code: str | None
    error_message: str | None
    download_errors: int
    created_utc: str
    submitted_utc: str | None
    queued_utc: str | None
    started_utc: str | None
    completed_utc: str | None
    downloaded_utc: str | None
    finished_utc: str | None
    updated_utc: str
    sent_at: float | None
    answered_at: float | None
    last_running_at: float | None
    server_created_at: float | None
    server_completed_at: float | None
    render_lo_s: float | None
    render_hi_s: float | None
    render_s: float | None
    next_download_at: float | None
    retries_json: str
    retry_at: float | None
    extra_of: int | None
    width: int | None
    height: int | None
    duration_s: float | None
    fps: float | None
    vcodec: str | None
    has_audio: int | None
    #: How the rendered video differs from the request (``asked 1920x1080, rendered
    #: 1280x720 (normalised by the API)``), or ``None``: as asked, or not probed.
    normalised: str | None
    poster_path: str | None
    bad_downloads: int
    #: On a shared ledger, the worker that has taken the job (see ``leases``); else None.
    claimed_by: str | None
    #: The ETag of the object the video is in, when it went to a store (``s3://``).
    object_etag: str | None

    @property
    def facts(self) -> VideoFacts | None:
        """What probing the downloaded file found (``None``: not probed)."""
        if self.width is None or self.height is None:
            return None
        return VideoFacts(
            self.width,
            self.height,
            self.duration_s,
            self.fps,
            self.vcodec or "",
            bool(self.has_audio),
        )

    @property
    def source_key(self) -> str | None:
        """For an extra take (``extra_of`` set), the key of the job it is an earlier attempt of."""
        if self.extra_of is None:
            return None
        return self.key.rsplit(EXTRA_KEY_MARK, 1)[0]

    @property
    def retries(self) -> dict[str, int]:
        """The automatic new attempts made so far, per kind of outcome (``{"error": 1}``)."""
        return dict(_decode_retries(self.retries_json))

    @property
    def render_seconds(self) -> float | None:
        """Seconds the API took to render this job's task, or ``None`` before it finished.

        The estimate recorded when the task was seen done, within what it proved
        (the server's own timestamps, or the polls either side of its end: see
        :func:`batchvid.run.render_times.observe`).  Rows from a ledger older than
        that evidence: created to completion seen, which includes the poller's
        own delay (an upper bound).
        """
        if self.render_s is not None:
            return self.render_s
        start = self.queued_utc or self.submitted_utc
        if self.completed_utc is None or start is None:
            return None
        return max(0.0, _epoch(self.completed_utc) - _epoch(start))

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> JobRow:
        """Build from a row selected as ``SELECT {JOB_COLUMNS} FROM jobs`` (that order)."""
        values: list[Any] = list(row)
        values[_STATE] = _STATES[values[_STATE]]
        return cls._make(values)

    @property
    def references(self) -> tuple[StoredReference, ...]:
        return _decode_references(self.references_json)

    @property
    def axes(self) -> tuple[tuple[str, str], ...]:
        """The matrix values that made this job, ``(name, value)`` in manifest order."""
        return _decode_axes(self.axes_json)

    def to_request(self) -> VideoRequest:
        """The create request this job sends (references as paths, in upload order)."""
        return VideoRequest(
            self.prompt,
            self.model,
            self.seconds,
            self.size,
            self.resolution,
            tuple(Path(r.path) for r in self.references),
        )


# Jobs of a batch share a few distinct values (a matrix has few combinations), and
# the results are immutable: decode each text once.
@lru_cache(maxsize=4096)
def _decode_axes(text: str) -> tuple[tuple[str, str], ...]:
    if text == "[]":
        return ()
    return tuple((str(name), str(value)) for name, value in json.loads(text))


@lru_cache(maxsize=256)
def _decode_retries(text: str) -> tuple[tuple[str, int], ...]:
    if text == "{}":
        return ()
    return tuple((str(kind), int(n)) for kind, n in json.loads(text).items())


@lru_cache(maxsize=4096)
def _decode_references(text: str) -> tuple[StoredReference, ...]:
    if text == "[]":
        return ()
    return tuple(StoredReference(**r) for r in json.loads(text))


#: An extra take's key: its job's key, this mark, and the attempt it was (``<key>~a1``).
EXTRA_KEY_MARK: Final = "~a"
#: The ``jobs`` columns in :class:`JobRow` field order, for ``SELECT``.
JOB_COLUMNS: Final = ", ".join(JobRow._fields)
_STATE: Final = JobRow._fields.index("state")
#: ``jobs.state`` text -> JobState: a dict lookup is several times cheaper than ``JobState(text)``.
_STATES: Final = {s.value: s for s in JobState}


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One row of ``batches``, with its JSON columns decoded."""

    name: str
    manifest_path: str
    manifest_sha256: str
    output_dir: str
    limits: dict[str, Any]
    pricing: dict[str, Any]
    budget_usd: float | None
    created_utc: str
    updated_utc: str
    endpoint: str | None
    """The API base URL the batch last ran against, or ``"simulator"``; ``None``: not run yet."""
    retry: dict[str, int] = field(default_factory=dict)
    """The retry policy (``retry:``) the batch last ran under; empty: never run with one."""

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> BatchRow:
        """Build from a row selected as ``SELECT {BATCH_COLUMNS} FROM batches``."""
        name, path, sha, out, limits, pricing, budget, created, updated, endpoint, retry = row
        return cls(
            name=name,
            manifest_path=path,
            manifest_sha256=sha,
            output_dir=out,
            limits=json.loads(limits),
            pricing=json.loads(pricing),
            budget_usd=budget,
            created_utc=created,
            updated_utc=updated,
            endpoint=endpoint,
            retry=json.loads(retry),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One committed state change of a job (``detail`` is the decoded ``detail_json``)."""

    id: int
    job_id: int
    from_state: JobState
    to_state: JobState
    at_utc: str
    detail: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Event:
        """Build from a row selected as ``SELECT {EVENT_COLUMNS} FROM events``."""
        event_id, job_id, src, dst, at_utc, detail = row
        return cls(
            id=event_id,
            job_id=job_id,
            from_state=JobState(src),
            to_state=JobState(dst),
            at_utc=at_utc,
            detail=json.loads(detail) if detail is not None else None,
        )


#: The ``batches`` columns in :meth:`BatchRow.from_row` order.
BATCH_COLUMNS: Final = (
    "name, manifest_path, manifest_sha256, output_dir, limits_json, pricing_json, budget_usd,"
    " created_utc, updated_utc, endpoint, retry_json"
)
#: The ``events`` columns in :meth:`Event.from_row` order.
EVENT_COLUMNS: Final = "id, job_id, from_state, to_state, at_utc, detail_json"
