"""CometAPI's protocol as plain data and functions: no I/O happens here.

What the Seedance endpoints answer (shared/api/cometapi-seedance.md) is
normalised here, once, for every caller:

- both status vocabularies (``SUBMITTED``/``queued`` ... ``ERROR``/``error``)
  become one :class:`TaskStatus`; an unknown status is kept verbatim and is not
  terminal;
- both error body shapes (OpenAI-style ``{"error": {...}}`` and flat
  ``{"code", "message"}``), and bodies that are not JSON at all, become one
  :class:`~batchvid.errors.ApiError` subclass carrying status, code and message;
- every failure is classified: retryable (429, 5xx, the request never left),
  rejected (400), auth (401), or in doubt (a create was sent but its answer was
  lost).

The async client (``batchvid.remote.client``) only moves bytes and asks these
functions what the bytes mean.
"""

from __future__ import annotations

import dataclasses
import email.utils
import enum
import json
import math
import os
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from ..errors import (
    ApiError,
    AuthError,
    InDoubtError,
    RateLimited,
    RejectedError,
    RetryableError,
    ServiceRefused,
    TaskNotFound,
)
from ..states import JobState
from .urls import url_expiry

__all__ = [
    "AMBIGUOUS_CREATE_STATUSES",
    "FAILURE_KEYS",
    "SERVICE_REFUSAL_STATUSES",
    "FilePart",
    "RetryPolicy",
    "Task",
    "TaskStatus",
    "backoff_hint",
    "create_error",
    "encode_multipart",
    "error_from_transport",
    "failure_reason",
    "never_sent",
    "normalise_status",
    "parse_error",
    "parse_retry_after",
    "parse_task",
    "redact",
]


class TaskStatus(enum.Enum):
    """One status vocabulary for both of the docs' versions."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    ERROR = "error"
    #: A status neither version of the docs lists; kept verbatim in ``Task.raw_status``.
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        """True once the task will not change any more (success, failure or error)."""
        return self in _TERMINAL

    @property
    def job_state(self) -> JobState | None:
        """The job state this status means (``None`` for an unknown one)."""
        return _JOB_STATES.get(self)


_TERMINAL: Final = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.ERROR})
_JOB_STATES: Final = {
    TaskStatus.QUEUED: JobState.QUEUED,
    TaskStatus.IN_PROGRESS: JobState.IN_PROGRESS,
    TaskStatus.COMPLETED: JobState.COMPLETED,
    TaskStatus.FAILED: JobState.FAILED,
    TaskStatus.ERROR: JobState.FAILED,
}

# Both columns of the docs' status table, compared case-insensitively.
_STATUS_WORDS: Final = {
    "submitted": TaskStatus.QUEUED,
    "queued": TaskStatus.QUEUED,
    "in_progress": TaskStatus.IN_PROGRESS,
    "success": TaskStatus.COMPLETED,
    "completed": TaskStatus.COMPLETED,
    "failed": TaskStatus.FAILED,
    "error": TaskStatus.ERROR,
}

#: Task body keys that may carry failure details (the docs say the shape is not fixed).
FAILURE_KEYS: Final = (
    "error",
    "fail_reason",
    "failure_reason",
    "reason",
    "error_message",
    "message",
)


def normalise_status(raw: object) -> TaskStatus:
    """Map either vocabulary's status word to :class:`TaskStatus` (``UNKNOWN`` otherwise).

    Case does not matter (``Success``, ``In_Progress``), nor whether words are
    joined by ``_``, ``-`` or a space (``in progress``).
    """
    if not isinstance(raw, str):
        return TaskStatus.UNKNOWN
    word = re.sub(r"[\s\-]+", "_", raw.strip().lower())
    return _STATUS_WORDS.get(word, TaskStatus.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Task:
    """One remote video task as the API last described it."""

    id: str
    status: TaskStatus
    #: The status word exactly as the API sent it (``""`` when absent).
    raw_status: str = ""
    progress: int | None = None
    video_url: str | None = None
    created_at: int | None = None
    completed_at: int | None = None
    #: Failure details, kept verbatim as JSON text whatever their shape.
    error_detail: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def url_expires_at(self) -> float | None:
        """When ``video_url`` stops working (unix seconds), if its signature says so."""
        return url_expiry(self.video_url) if self.video_url else None


def _as_int(value: object) -> int | None:
    """An integer from the loose forms gateways use (``45``, ``45.0``, ``"45"``, ``"45%"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().rstrip("%").strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, float):
        # NaN and Infinity are valid to Python's json module; they are no number here.
        return int(value) if math.isfinite(value) else None
    return None


#: Fields of an ordinary task body; on a failed task, anything else may be its reason.
_ORDINARY_KEYS: Final = frozenset(
    {
        "id",
        "task_id",
        "object",
        "model",
        "status",
        "progress",
        "created_at",
        "completed_at",
        "updated_at",
        "video_url",
        "seconds",
        "size",
        "resolution",
        "prompt",
    }
)

_EMPTY: Final[tuple[object, ...]] = (None, "", {}, [])


def _failure_detail(body: Mapping[str, Any], status: TaskStatus) -> str | None:
    """Failure details as JSON text: the known keys, else (on FAILED/ERROR) any unknown ones."""
    present = {key: body[key] for key in FAILURE_KEYS if body.get(key) not in _EMPTY}
    if not present and status in (TaskStatus.FAILED, TaskStatus.ERROR):
        # The docs fix no shape: keep whatever else is there.
        present = {
            str(key): value
            for key, value in body.items()
            if key not in _ORDINARY_KEYS and value not in _EMPTY
        }
    if not present:
        return None
    return json.dumps(present, sort_keys=True, ensure_ascii=False, default=str)


def _task_id(body: Mapping[str, Any]) -> str | None:
    """``id``, else its alias ``task_id``: the first that is a non-empty string or integer."""
    for key in ("id", "task_id"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def parse_task(body: Mapping[str, Any] | bytes | str) -> Task:
    """Read a create or query answer into a :class:`Task`.

    Accepts ``id`` or its alias ``task_id``.  Raises ``ValueError`` when the
    body is not a JSON object with a task id: the caller decides what that
    means (a create that cannot be read is in doubt; a query can be repeated).
    """
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except ValueError as exc:
            raise ValueError("the answer is not JSON") from exc
    if not isinstance(body, Mapping):
        raise ValueError("the answer is not a JSON object")
    task_id = _task_id(body)
    if task_id is None:
        raise ValueError("the answer carries no task id")
    raw_status = body.get("status")
    status = normalise_status(raw_status)
    progress = _as_int(body.get("progress"))
    video_url = body.get("video_url")
    return Task(
        id=task_id,
        status=status,
        raw_status=raw_status if isinstance(raw_status, str) else "",
        progress=None if progress is None else max(0, min(100, progress)),
        video_url=video_url.strip() if isinstance(video_url, str) and video_url.strip() else None,
        created_at=_as_int(body.get("created_at")),
        completed_at=_as_int(body.get("completed_at")),
        error_detail=_failure_detail(body, status),
        raw=dict(body),
    )


def failure_reason(task: Task) -> tuple[str | None, str]:
    """A failed task's ``(code, message)`` for people, whatever shape the details took.

    An ``error`` object gives its code and message; a reason string is the
    message; with no details at all, the status itself is the reason.  The
    code falls back to the raw status (``FAILED``/``ERROR``).
    """
    status = task.raw_status or task.status.value
    for key in FAILURE_KEYS:
        value = task.raw.get(key)
        if isinstance(value, Mapping) and value:
            code = value.get("code") or value.get("type")
            message = value.get("message") or value.get("msg") or task.error_detail or ""
            return (str(code) if code else status), str(message)
        if isinstance(value, str) and value.strip():
            return status, value.strip()
    return status, task.error_detail or f"the provider reported {status} with no reason"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date.

    ``None`` when absent or unreadable; never negative.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        # NaN and Infinity ("1e999") are unreadable, not "wait forever".
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _error_fields(body: bytes) -> tuple[str | None, str]:
    """``(code, message)`` from either documented error shape, or from plain text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data: object = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error")
        source: dict[str, Any] = inner if isinstance(inner, dict) else data
        code = source.get("code") if source.get("code") not in (None, "") else source.get("type")
        message = source.get("message")
        if message in (None, "") and isinstance(inner, str):
            message = inner
        if message in (None, ""):
            message = data.get("detail") or data.get("msg") or text
        return (None if code in (None, "") else str(code)), str(message)[:500]
    if text.startswith("<"):
        # A gateway's HTML (or XML) page: its words, not its markup.
        text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>|<[^>]*>", " ", text)
    text = " ".join(text.split())
    return None, (text[:300] or "(empty body)")


def parse_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str] | httpx.Headers,
    *,
    secrets: Iterable[str] = (),
    now: float | None = None,
) -> ApiError:
    """The exception an error answer stands for.

    401 -> AuthError; 429 -> RateLimited; 408/5xx -> RetryableError (with the
    server's Retry-After when given); a ``task_not_exist`` message ->
    TaskNotFound; any other 4xx (or an unexpected 1xx/3xx) -> RejectedError.
    ``secrets`` are scrubbed from the message in case a server echoes them.
    """
    code, message = _error_fields(body)
    message = redact(message, secrets)
    code = None if code is None else redact(code, secrets)
    retry_after = parse_retry_after(_header(headers, "retry-after"), now=now)
    if status == 401:
        return AuthError(message, status=status, code=code)
    if status == 429:
        return RateLimited(message, status=status, code=code, retry_after=retry_after)
    if status == 408 or status >= 500:
        return RetryableError(message, status=status, code=code, retry_after=retry_after)
    if 300 <= status < 400:
        moved = f"the API answered an unexpected redirect{_where(_header(headers, 'location'))}"
        return RejectedError(redact(f"{moved} (check the base URL)", secrets), status=status)
    if _TASK_NOT_EXIST.search(f"{code or ''} {message}"):
        return TaskNotFound(message, status=status, code=code)
    return RejectedError(message, status=status, code=code)


# The docs' ``task_not_exist``, in any case, with ``_`` or spaces.
_TASK_NOT_EXIST: Final = re.compile(r"task[_\s]+not[_\s]+exist", re.IGNORECASE)


def _where(location: str | None) -> str:
    """`` to scheme://host/path`` of a redirect target (its query may hold a signature)."""
    if not location:
        return ""
    try:
        url = httpx.URL(location)
    except httpx.InvalidURL:
        return ""
    return f" to {url.copy_with(query=None, fragment=None)}"


def _header(headers: Mapping[str, str] | httpx.Headers, name: str) -> str | None:
    if isinstance(headers, httpx.Headers):
        found: str | None = headers.get(name)
        return found
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


# Transport failures raised before a single byte of the request left this
# machine: repeating them cannot duplicate anything.
_NEVER_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def never_sent(exc: BaseException) -> bool:
    """True when the request provably never reached the server."""
    return isinstance(exc, _NEVER_SENT)


#: Answers to a create that can come *after* the task was made: a gateway that gave
#: up waiting on the service behind it (which may have created, and billed, the task).
AMBIGUOUS_CREATE_STATUSES: Final = frozenset({504})
#: Refusals of a create that say nothing about the job: the account (402, 403) or the
#: endpoint (404, 405) is wrong, so every other job would be refused the same way.
SERVICE_REFUSAL_STATUSES: Final = frozenset({402, 403, 404, 405})


def create_error(error: ApiError) -> ApiError:
    """The error an error answer to a *create* stands for.

    A 504 is in doubt, never retried blindly (:data:`AMBIGUOUS_CREATE_STATUSES`);
    402/403/404/405 and redirects are :class:`ServiceRefused`, not the job's
    fault; every other answer means what :func:`parse_error` says.
    """
    status = error.status
    if (
        isinstance(error, RejectedError)
        and status is not None
        and (status in SERVICE_REFUSAL_STATUSES or 300 <= status < 400)
    ):
        return ServiceRefused(error.message, status=status, code=error.code)
    if status in AMBIGUOUS_CREATE_STATUSES:
        return InDoubtError(
            f"the gateway timed out waiting for the service ({error.message or 'no detail'}); "
            "a task may have been created",
            status=error.status,
            code=error.code,
        )
    return error


def error_from_transport(exc: httpx.RequestError, *, idempotent: bool) -> ApiError:
    """Classify a request that got no usable HTTP answer.

    A request that never left is retryable.  Otherwise an idempotent request
    (a GET) is retryable too, but a create is in doubt: it may have made a
    (billed) task whose id we will never learn.  Everything that is not
    provably unsent counts as sent: when unsure, in doubt.  An answer that
    arrived but could not be decoded (``httpx.DecodingError``: a corrupt
    gzip body) is as good as lost.
    """
    kind = type(exc).__name__
    if never_sent(exc):
        return RetryableError(f"could not connect ({kind}); the request was not sent")
    lost = (
        "the answer could not be decoded"
        if isinstance(exc, httpx.DecodingError)
        else "no answer arrived"
    )
    if idempotent:
        return RetryableError(f"the request failed ({kind}: {lost}); safe to repeat")
    return InDoubtError(f"the request was sent but {lost} ({kind}); a task may have been created")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard the client tries before it gives an error back.

    Waits grow as ``min(wait_max, wait_initial * 2**(n-1) + U(0, wait_jitter))``.
    A server's Retry-After is a floor; one longer than ``max_retry_after`` is
    not slept through here but handed to the caller (it can schedule better).
    """

    attempts: int = 6
    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0
    max_retry_after: float = 300.0

    def wait(self, attempt: int, draw: float = 0.0) -> float:
        """Seconds before try ``attempt + 1`` after ``attempt`` failures (``draw`` in [0, 1)).

        The formula stamina applies to the client's retries with these same
        settings; the run's own schedules (submit pauses, download retries) use
        it too, so batchvid backs off one way everywhere.
        """
        exponent = min(max(attempt, 1) - 1, 60)
        return min(self.wait_max, self.wait_initial * 2.0**exponent + draw * self.wait_jitter)

    def scaled(self, factor: float) -> RetryPolicy:
        """The same policy with every duration multiplied by ``factor``."""
        return dataclasses.replace(
            self,
            wait_initial=self.wait_initial * factor,
            wait_max=self.wait_max * factor,
            wait_jitter=self.wait_jitter * factor,
            max_retry_after=self.max_retry_after * factor,
        )


def backoff_hint(
    exc: BaseException, policy: RetryPolicy, rng: random.Random | None = None
) -> bool | float:
    """Should ``exc`` be retried, and after how long?

    ``False``: give up. ``True``: retry after the policy's jittered exponential
    wait. A float: retry after exactly that many seconds (the server's
    Retry-After plus a little jitter so a crowd of clients does not return at
    once).  This is the shape ``stamina``'s backoff hooks take.
    """
    if not isinstance(exc, RetryableError):
        return False
    if exc.retry_after is None:
        return True
    if exc.retry_after > policy.max_retry_after:
        return False
    spread = min(policy.wait_jitter, 0.1 * exc.retry_after)
    return exc.retry_after + (rng or random).uniform(0.0, spread)


@dataclass(frozen=True, slots=True)
class FilePart:
    """One file part of a multipart form (a reference image)."""

    name: str
    filename: str
    content_type: str
    content: bytes = field(repr=False)


def _quote_param(value: str) -> str:
    # The HTML form-data rules: quote, CR and LF are percent-escaped in names.
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def encode_multipart(
    fields: Mapping[str, str], files: Iterable[FilePart], *, boundary: str | None = None
) -> tuple[str, bytes]:
    """``(content_type, body)`` of a ``multipart/form-data`` request.

    Plain text fields first, then the file parts in the order given (the API
    numbers references by upload order).  Built here rather than by httpx so
    a create is multipart even without files, each part carries exactly the
    content type we detected, and one body serves every retry.
    """
    files = list(files)
    boundary = boundary or f"batchvid-{os.urandom(16).hex()}"
    marker = boundary.encode("ascii")
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(
            b"--"
            + marker
            + b"\r\n"
            + f'Content-Disposition: form-data; name="{_quote_param(name)}"\r\n\r\n'.encode()
            + value.encode("utf-8")
            + b"\r\n"
        )
    for part in files:
        disposition = (
            f'Content-Disposition: form-data; name="{_quote_param(part.name)}"; '
            f'filename="{_quote_param(part.filename)}"\r\n'
        )
        chunks.append(
            b"--"
            + marker
            + b"\r\n"
            + disposition.encode("utf-8")
            + f"Content-Type: {part.content_type}\r\n\r\n".encode("ascii")
            + part.content
            + b"\r\n"
        )
    chunks.append(b"--" + marker + b"--\r\n")
    body = b"".join(chunks)
    if any(marker in part.content for part in files) or any(boundary in v for v in fields.values()):
        return encode_multipart(fields, files)  # astronomically rare: draw another boundary
    return f"multipart/form-data; boundary={boundary}", body
