"""The one exception tree of batchvid.

::

    BatchvidError
    ├── ManifestError          the manifest cannot be used (carries every Issue found)
    ├── LedgerError            the ledger is missing, locked, corrupt or asked something illegal
    │   ├── IllegalTransition  a job state change that the state machine forbids
    │   │   └── LostClaim      the job was taken over by another worker (a shared ledger)
    │   ├── LimitReached       a create would pass a limit the batch's workers share
    │   ├── LedgerBusy         another program holds the ledger's write lock: try again later
    │   │   └── LedgerUnreachable  the ledger's server did not answer in time
    │   └── LedgerFull         the disk holding the ledger is full: nothing more can be recorded
    ├── ApiError               CometAPI answered with an error, or did not answer
    │   ├── AuthError          401: the key is missing or refused; stop everything
    │   ├── RejectedError      400: the request is wrong; retrying cannot help
    │   │   └── TaskNotFound   400 task_not_exist: the task id is unknown upstream
    │   ├── ServiceRefused     402/403/404/405/3xx on create: the endpoint or account is wrong
    │   ├── RetryableError     429, 5xx, connect errors: the request provably did no work
    │   │   └── RateLimited    429, with the server's Retry-After if it gave one
    │   └── InDoubtError       a create was sent but its answer was lost: a task may exist
    ├── DownloadError          a video could not be fetched or verified
    │   ├── UrlExpired         the signed URL is refused or expired: re-query the task
    │   ├── DiskFull           no space left for the video: nothing wrong with it
    │   └── Undecodable        the bytes arrived whole but are not a playable video
    └── OutputError            the videos' store cannot be used (scheme, bucket, credentials)
        └── StoreUnreachable   the store did not answer: videos wait upstream, nothing wrong

The library raises only these (``raise ... from exc`` at every boundary); the
CLI turns them into messages and exit codes in one place.  No exception ever
carries the API key: messages are built from the server's text and our own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ApiError",
    "AuthError",
    "BatchvidError",
    "DiskFull",
    "DownloadError",
    "IllegalTransition",
    "InDoubtError",
    "Issue",
    "LedgerBusy",
    "LedgerError",
    "LedgerFull",
    "LedgerUnreachable",
    "LimitReached",
    "LostClaim",
    "ManifestError",
    "OutputError",
    "RateLimited",
    "RejectedError",
    "RetryableError",
    "ServiceRefused",
    "StoreUnreachable",
    "TaskNotFound",
    "Undecodable",
    "UrlExpired",
    "ledger_error",
]


class BatchvidError(Exception):
    """Base class of every error batchvid raises on purpose."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a manifest, located at ``file:line``.

    ``path`` is the dotted path of the offending field (``prompts[2].seconds``);
    ``severity`` is ``"error"`` (blocks the batch) or ``"warning"`` (reported only).
    """

    file: str
    line: int
    path: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.path}:" if self.path else ""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}:{field} {prefix}{self.message}"


class ManifestError(BatchvidError):
    """The manifest is invalid; ``issues`` lists every error (and warning) found."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        errors = [i for i in issues if i.severity == "error"]
        first = str(errors[0]) if errors else "invalid manifest"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


class LedgerError(BatchvidError):
    """The ledger cannot be opened, is not a batchvid ledger, or was asked something illegal."""


class IllegalTransition(LedgerError):
    """A job was asked to move between two states the state machine does not connect."""


class LostClaim(IllegalTransition):
    """On a shared ledger: another worker took the job over (this one's lease had ended)."""


class LimitReached(LedgerError):
    """On a shared ledger: a create would pass ``limit`` ("active": the batch's active-task
    cap, counted over every worker; "budget": its budget), so it is not recorded."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class LedgerBusy(LedgerError):
    """Another program held the ledger's write lock past the wait: nothing was written."""


class LedgerUnreachable(LedgerBusy):
    """The ledger's database server did not answer in time (a network fault, a server
    down): nothing is known to have been written; try again later."""


class LedgerFull(LedgerError):
    """The disk (or quota) holding the ledger is full: nothing was written."""


class ApiError(BatchvidError):
    """An error answer (or a missing answer) from CometAPI.

    ``status`` is the HTTP status (``None`` when no answer arrived), ``code`` the
    API's error code when it gave one, ``message`` the API's own words.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        label = f"HTTP {status}" if status is not None else "no answer"
        detail = f"{code}: {message}" if code and code not in message else message
        super().__init__(f"{label}: {detail}")


class AuthError(ApiError):
    """401: the API key is missing or was refused. Nothing more should be sent."""


class RejectedError(ApiError):
    """400: the API refused the request itself (a wrong field, a wrong model)."""


class ServiceRefused(ApiError):
    """A create refused for a reason that is not the job's own: every job would meet it.

    402/403 (the account: balance, permissions), 404/405 or a redirect (the base
    URL is wrong).  The run stops and the jobs stay pending: none is ``rejected``.
    """


class TaskNotFound(RejectedError):
    """400 ``task_not_exist``: the task id is not known to the API."""


class RetryableError(ApiError):
    """The request did no work upstream (429, 5xx, connection refused): safe to repeat.

    ``retry_after`` is the server's hint in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class RateLimited(RetryableError):
    """429: too many requests. ``retry_after`` says how long the server asked us to wait."""


class InDoubtError(ApiError):
    """A create request was sent but its answer was lost: a (billed) task may exist.

    Never retried automatically; the ledger records the job as ``in_doubt``.
    """


class DownloadError(BatchvidError):
    """A video could not be downloaded or did not verify (size, truncation).

    ``fresh_url``: a signed URL the task gave while this download was being
    tried (worth recording for the next try), when there was one.
    """

    def __init__(self, message: str, *, fresh_url: str | None = None) -> None:
        super().__init__(message)
        self.fresh_url = fresh_url


class UrlExpired(DownloadError):
    """The signed ``video_url`` was refused (401/403/404/410) or expired: query the task again."""


class DiskFull(DownloadError):
    """The disk (or quota) holding the videos is full: nothing is wrong with the video.

    Its ``.part`` keeps what it has; the download is worth trying again once
    there is space.
    """


class Undecodable(DownloadError):
    """The file arrived whole (length checked) but does not decode as a video: not a video,
    a truncated ``moov``, no frames.  It never gets its final name; the task is still
    there, so it is worth fetching again (the job fails if it is bad twice)."""


def ledger_error(path: object, exc: BaseException) -> LedgerError:
    """The LedgerError an SQLite error on ``path`` stands for (busy, full, or other)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return LedgerBusy(f"ledger {path}: another program is writing it ({exc})")
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return LedgerFull(f"ledger {path}: its disk is full ({exc})")
    return LedgerError(f"ledger {path}: {exc}")


class OutputError(BatchvidError):
    """Where the videos go cannot be used: an unknown scheme, a bucket that does not
    exist, credentials the store refuses, an object it will not take."""


class StoreUnreachable(OutputError):
    """The videos' store did not answer (network, 5xx): the videos wait upstream."""
