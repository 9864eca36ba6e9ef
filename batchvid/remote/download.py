"""Streaming a finished video to disk, safely and resumably.

One attempt (:func:`fetch_once`) streams into ``dest + ".part"``; if a
``.part`` is already there it asks for the rest with ``Range: bytes=N-`` and
appends when the server answers 206, or starts over when it answers 200.  The
byte count is checked against ``Content-Length`` (or the total of
``Content-Range``); a short body keeps the ``.part`` and raises
:class:`TransferInterrupted` so the next attempt resumes.  A complete file is
fsynced, renamed over ``dest`` with ``os.replace`` and its directory fsynced:
nothing half-written ever carries the final name.

A ``.part`` remembers where it came from in ``dest + ".part.json"`` (the
source's identity, e.g. its task id, and the server's ``ETag``): a ``.part``
of another source is discarded rather than resumed, and a resume sends
``If-Range`` so a server whose file changed answers the whole new file.
A 2xx whose body is a JSON or HTML document is an error page, and an empty
body is no video: neither is ever written under the final name.
Which status means what (403 = the signed URL expired, 5xx = try again...) is
decided by plain functions here.

:func:`fetch_video` is the one download path, from a task (or a URL) to a
verified file: the signed ``video_url`` (or, without one, the authenticated
``/content`` route), broken transfers resumed with the client's retry policy,
a refused or expired URL replaced by asking the task again.  It returns what
it learned (the file, its size and sha256, the URL that served it, how often
it was refreshed); it never touches the ledger.  The client supplies the HTTP
(openers that add the token only for the API's own origin, the rate limiter).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import itertools
import json
import logging
import os
import random
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

import anyio.to_thread
import httpx

from ..errors import DiskFull, DownloadError, RetryableError, Undecodable, UrlExpired
from .check import Check, run_check
from .protocol import RetryPolicy, Task, TaskStatus, backoff_hint, parse_retry_after

if TYPE_CHECKING:
    from .client import CometClient

__all__ = [
    "DownloadResult",
    "Opener",
    "TransferInterrupted",
    "WritePlan",
    "checked",
    "download_problem",
    "error_document",
    "fetch_once",
    "fetch_video",
    "parse_content_range",
    "part_path",
    "plan_write",
    "read_limited",
    "rejected_path",
]

log = logging.getLogger(__name__)

#: Opens one GET (with the extra headers given, e.g. ``Range``) as a streaming response.
Opener = Callable[[Mapping[str, str]], AbstractAsyncContextManager[httpx.Response]]

# Error bodies are read only this far: enough for a message, never a video.
_ERROR_BODY_LIMIT: Final = 4096


class TransferInterrupted(DownloadError):
    """The transfer broke off (short body, dropped connection, 5xx, 429).

    The ``.part`` file is kept; repeating the download resumes it.
    ``retry_after`` is the server's hint in seconds, when it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """A verified file on disk under its final name."""

    path: Path
    size: int
    sha256: str
    #: The byte the last (successful) attempt resumed from; 0 = a whole-file transfer.
    resumed_from: int = 0
    #: Attempts it took, the successful one included.
    attempts: int = 1
    #: How many times the signed URL was refused and fetched afresh.
    refreshes: int = 0
    #: The last signed URL a refresh gave (``None``: none was asked for).
    fresh_url: str | None = None
    #: Fetched from ``/v1/videos/{id}/content`` (the signed URL could not be used).
    via_content: bool = False
    #: What the caller's ``check`` of the file returned (``None``: nothing checked).
    checked: object = None


@dataclass(frozen=True, slots=True)
class WritePlan:
    """Where to write a response's body, and how long the file must end up."""

    #: Byte offset the body starts at (0 = truncate the ``.part`` and start over).
    start: int
    #: The complete file's size, when the server told us.
    total: int | None


def part_path(dest: Path) -> Path:
    """The temporary name a download is written under until it is complete."""
    return dest.with_name(dest.name + ".part")


def _meta_path(dest: Path) -> Path:
    """Where a ``.part`` notes its source and validator."""
    return dest.with_name(dest.name + ".part.json")


def _read_meta(dest: Path) -> dict[str, str | None] | None:
    try:
        data = json.loads(_meta_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): (v if isinstance(v, str) else None) for k, v in data.items()}


def _write_meta(dest: Path, identity: str | None, etag: str | None) -> None:
    """Note the ``.part``'s source, whole or not at all (a full disk leaves no empty note)."""
    meta = _meta_path(dest)
    scratch = meta.with_name(meta.name + ".tmp")
    try:
        scratch.write_text(json.dumps({"source": identity, "etag": etag}), encoding="utf-8")
        os.replace(scratch, meta)
    except OSError as exc:
        scratch.unlink(missing_ok=True)
        raise _disk_error(exc) from exc


def _discard(dest: Path) -> None:
    part_path(dest).unlink(missing_ok=True)
    _meta_path(dest).unlink(missing_ok=True)


def _resume_point(dest: Path, identity: str | None) -> tuple[int, dict[str, str]]:
    """Bytes already in the ``.part`` worth keeping, and the headers asking for the rest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    if not offset:
        return 0, {}
    meta = _read_meta(dest)
    if identity is not None and (meta is None or meta.get("source") != identity):
        _discard(dest)  # another source's bytes (an earlier task, say): never mix them
        return 0, {}
    headers = {"Range": f"bytes={offset}-"}
    etag = meta.get("etag") if meta else None
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        headers["If-Range"] = etag
    return offset, headers


_CONTENT_RANGE: Final = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, total)`` from ``Content-Range: bytes first-last/total``."""
    if value is None:
        return None
    match = _CONTENT_RANGE.match(value)
    if match is None:
        return None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


def _content_length(headers: httpx.Headers) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def plan_write(status: int, headers: httpx.Headers, offset: int) -> WritePlan:
    """Decide how a 200 or 206 answer continues a ``.part`` of ``offset`` bytes.

    Raises :class:`TransferInterrupted` (after which the caller starts over)
    when a 206 does not continue exactly where the ``.part`` ends.
    """
    length = _content_length(headers)
    if headers.get("content-encoding", "identity").strip().lower() != "identity":
        # We asked for identity; a body encoded anyway is decoded as it comes,
        # and its decoded size cannot be checked against the encoded length.
        length = None
        if status == 206:
            raise TransferInterrupted("an encoded partial answer cannot be resumed")
    if status == 200:
        return WritePlan(start=0, total=length)
    parsed = parse_content_range(headers.get("content-range"))
    if parsed is None:
        raise TransferInterrupted("206 answer without a readable Content-Range")
    first, last, total = parsed
    if first != offset:
        raise TransferInterrupted(f"asked to resume at byte {offset}, the server sent {first}")
    if length is not None and length != last - first + 1:
        raise TransferInterrupted("Content-Length disagrees with Content-Range")
    return WritePlan(start=first, total=total if total is not None else last + 1)


def download_problem(
    status: int, body: bytes, headers: httpx.Headers | None = None
) -> DownloadError:
    """The error a download answer that carries no video stands for.

    401/403/404/410, or a body that says the URL expired: :class:`UrlExpired`
    (re-query the task: a signed URL's object may be gone, or the signature
    stale).  408, 429 and 5xx: :class:`TransferInterrupted` (try again, after
    the server's Retry-After when it gave one).  Anything else (a 2xx error
    page included): a plain :class:`DownloadError`.
    """
    text = body[:_ERROR_BODY_LIMIT].decode("utf-8", errors="replace").strip()
    snippet = " ".join(text.split())[:200]
    detail = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if status in (401, 403, 404, 410) or "expire" in text.lower():
        return UrlExpired(f"the download URL was refused ({detail})")
    if status in (408, 429) or status >= 500:
        wait = parse_retry_after(headers.get("retry-after")) if headers is not None else None
        return TransferInterrupted(f"the download server failed ({detail})", retry_after=wait)
    return DownloadError(f"the download failed ({detail})")


#: Media types that are documents (error pages), never a video.
_DOCUMENT_TYPES: Final = re.compile(
    r"^\s*(application/(?:[\w.+-]*\+)?json|text/html|application/xhtml\+xml)\b", re.IGNORECASE
)


def error_document(headers: httpx.Headers) -> str | None:
    """The media type of a 2xx body that is an error document (JSON, HTML), else ``None``."""
    content_type = headers.get("content-type", "")
    match = _DOCUMENT_TYPES.match(content_type)
    return match.group(1).lower() if match else None


async def fetch_once(
    open_: Opener, dest: Path, identity: str | None = None, check: Check | None = None
) -> DownloadResult:
    """One download attempt into ``dest`` via ``dest.part``; see the module docs.

    ``identity`` names the source (``task:<id>``): a ``.part`` left by another
    one is discarded.  ``check`` looks at the complete ``.part`` before it gets
    its final name (see :func:`checked`).  Raises :class:`UrlExpired`,
    :class:`TransferInterrupted` (``.part`` kept for a resume),
    :class:`~batchvid.errors.Undecodable` or :class:`DownloadError`.
    """
    part = part_path(dest)
    offset, headers = await anyio.to_thread.run_sync(_resume_point, dest, identity)
    try:
        async with open_(headers) as response:
            if response.status_code == 416 and offset:  # (answered once the connection is free)
                raise _Unsatisfiable(response.headers.get("content-range"))
            if response.status_code not in (200, 206) or error_document(response.headers):
                body = await read_limited(response)
                raise download_problem(response.status_code, body, response.headers)
            try:
                plan = plan_write(response.status_code, response.headers, offset)
            except TransferInterrupted:
                _discard(dest)
                raise
            if plan.start == 0:
                _write_meta(dest, identity, response.headers.get("etag"))
            size = await _stream_into(response, part, plan)
    except httpx.TransportError as exc:
        raise TransferInterrupted(
            f"the download broke off ({type(exc).__name__}); the partial file is kept"
        ) from exc
    except httpx.DecodingError as exc:
        # The bytes on disk are decoded output of a broken stream: start over.
        _discard(dest)
        raise TransferInterrupted(f"the download could not be decoded ({exc})") from exc
    except httpx.TooManyRedirects as exc:
        raise DownloadError("the download URL redirects in a loop") from exc
    except _Unsatisfiable as answer:
        return await _finish_unsatisfiable(answer.content_range, part, dest, offset, check)
    if plan.total is not None and size != plan.total:
        if size > plan.total:
            _discard(dest)
            raise DownloadError(f"received {size} bytes, more than the announced {plan.total}")
        raise TransferInterrupted(
            f"received {size} of {plan.total} bytes; the partial file is kept"
        )
    if size == 0:
        _discard(dest)
        raise TransferInterrupted("the server answered an empty body, not a video")
    found = await checked(check, part, dest)
    final, digest = await anyio.to_thread.run_sync(_commit, part, dest)
    rejected_path(dest).unlink(missing_ok=True)  # an earlier bad copy: this one is good
    return DownloadResult(
        path=final, size=size, sha256=digest, resumed_from=plan.start, checked=found
    )


async def checked(check: Check | None, part: Path, dest: Path) -> object:
    """Run ``check`` on a complete ``.part`` before it is committed; what it returned.

    See :func:`.check.run_check`: a file that fails is kept aside as
    :func:`rejected_path` (its resume note dropped, so the next try fetches it
    whole) and :class:`~batchvid.errors.Undecodable` is raised; nothing that
    fails the check ever gets the final name.
    """
    if check is None:
        return None
    try:
        return await run_check(check, part, rejected_path(dest))
    except Undecodable:
        _meta_path(dest).unlink(missing_ok=True)
        raise


def rejected_path(dest: Path) -> Path:
    """Where a fetched file that failed its check is kept: ``NAME.mp4.undecodable`` (not
    ending in ``.mp4``, so nothing that collects the videos picks it up)."""
    return dest.with_name(f"{dest.name}.undecodable")


async def read_limited(response: httpx.Response) -> bytes:
    """The start of an error answer's body (never a whole video)."""
    try:
        return response.content[:_ERROR_BODY_LIMIT]  # already read (a mocked transport)
    except httpx.ResponseNotRead:
        pass
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) >= _ERROR_BODY_LIMIT:
            break
    return bytes(body)


class _Unsatisfiable(Exception):
    """A 416 to our Range (handled once its connection is back in the pool)."""

    def __init__(self, content_range: str | None) -> None:
        super().__init__(content_range)
        self.content_range = content_range


async def _finish_unsatisfiable(
    content_range: str | None, part: Path, dest: Path, offset: int, check: Check | None
) -> DownloadResult:
    """416 to our Range: the ``.part`` may already be complete, or be junk."""
    parsed = parse_content_range(content_range)
    total = parsed[2] if parsed else _unsatisfied_total(content_range)
    if total is not None and total == offset:
        found = await checked(check, part, dest)
        final, digest = await anyio.to_thread.run_sync(_commit, part, dest)
        rejected_path(dest).unlink(missing_ok=True)
        return DownloadResult(
            path=final, size=offset, sha256=digest, resumed_from=offset, checked=found
        )
    _discard(dest)
    raise TransferInterrupted("the partial file does not match the server's; starting over")


def _unsatisfied_total(value: str | None) -> int | None:
    """The total from a 416's ``Content-Range: bytes */total``."""
    if value is None:
        return None
    match = re.match(r"^\s*bytes\s+\*/(\d+)\s*$", value, re.IGNORECASE)
    return int(match.group(1)) if match else None


async def _stream_into(response: httpx.Response, part: Path, plan: WritePlan) -> int:
    """Write the body at ``plan.start`` of ``part``; the ``.part``'s size afterwards."""
    mode = "ab" if plan.start else "wb"
    try:
        with part.open(mode) as fh:
            try:
                # Every chunk is written as soon as it arrives (no chunk_size: no
                # buffering), so a broken transfer keeps all it got.  We asked for
                # identity encoding, so these are the bytes Content-Length counts.
                # Page-cache writes are fast; fsync runs in a worker thread in _commit.
                async for chunk in response.aiter_bytes():
                    fh.write(chunk)
            finally:
                fh.flush()
            return fh.tell()
    except OSError as exc:
        if part.exists() and part.stat().st_size == 0:
            _discard(part.with_suffix(""))  # nothing worth resuming
        raise _disk_error(exc) from exc


def _commit(part: Path, dest: Path) -> tuple[Path, str]:
    """fsync ``part`` and give it its final name; ``(that name, the file's sha256)``.

    Never over another video: when ``dest`` already holds different bytes (a
    batch sharing the folder, an earlier task of this job), the file takes the
    first free ``NAME-2.mp4``, ``NAME-3.mp4`` ... instead.  The directory is
    fsynced after the rename.
    """
    digest = _sha256(part, sync=True)
    final = dest
    for n in itertools.count(2):
        if not final.exists() or _sha256(final) == digest:
            break
        final = dest.with_name(f"{dest.stem}-{n}{dest.suffix}")
    try:
        os.replace(part, final)
    except OSError as exc:
        raise _disk_error(exc) from exc
    _meta_path(dest).unlink(missing_ok=True)
    _fsync_dir(final.parent)
    return final, digest


def _sha256(path: Path, *, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        if sync:
            _fsync(fh)
    return digest.hexdigest()


def _disk_error(exc: OSError) -> Exception:
    """A full disk (or quota) as :class:`DiskFull`; any other error as it is."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left for the video ({exc.strerror or exc})")
    return exc


def _fsync(fh: BinaryIO) -> None:
    os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    # Not every platform lets a directory be opened and fsynced (Windows).
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the one download path -----------------------------------------------------------


async def fetch_video(
    client: CometClient,
    source: Task | str,
    dest: Path,
    *,
    attempts: int | None = None,
    check: Check | None = None,
) -> DownloadResult:
    """Fetch a finished video into ``dest``, verified, under its final name only when whole.

    ``source`` is a :class:`Task` (its ``video_url``, else ``GET
    /v1/videos/{id}/content``), a signed URL, or a bare task id (``/content``).
    A broken transfer is resumed with a Range request, up to ``attempts``
    tries (the client's retry policy).  The signed URL comes first; refused or
    expired, it is replaced by querying the task again (``client.max_refreshes``
    times); still refused, or a CDN that keeps failing, and a task's video is
    fetched from ``/content`` instead (with the key, which goes to the API
    host only).  ``check`` looks at each complete file before it is committed
    (see :func:`checked`); a file it refuses ends the try with
    :class:`~batchvid.errors.Undecodable` (the caller decides whether to fetch it
    again).  Raises :class:`DownloadError` (with ``fresh_url`` when a
    refresh gave one), :class:`DiskFull`, or the :class:`~batchvid.errors.ApiError`
    of a failed ``/content`` or refresh request (``TaskNotFound``: the task is gone).
    """
    url, task_id = _download_source(source)
    url = client.resolve_url(url)
    if url is None and task_id is None:
        raise DownloadError("no usable download URL (not an absolute http(s) URL)")
    # What the bytes are of: a .part of anything else is never resumed.
    identity = f"task:{task_id}" if task_id else f"url:{_without_query(url or '')}"
    refreshed, fresh = 0, None
    while True:
        opener = client.cdn_opener(url) if url else client.content_opener(task_id or "")
        try:
            result = await _fetch_resuming(client, opener, dest, attempts, identity, check)
        except DownloadError as exc:
            exc.fresh_url = exc.fresh_url or fresh
            if url is None or task_id is None or isinstance(exc, DiskFull | Undecodable):
                raise  # /content failed too, or nothing else to try
            if isinstance(exc, UrlExpired) and refreshed < client.max_refreshes:
                refreshed += 1
                log.info("download URL refused; re-querying the task (refresh %d)", refreshed)
                url = fresh = await _fresh_url(client, task_id, exc)
                continue
            log.info("the signed URL cannot be used (%s); fetching from /content", exc)
            url = None
            continue
        return dataclasses.replace(
            result, refreshes=refreshed, fresh_url=fresh, via_content=url is None
        )


async def _fresh_url(client: CometClient, task_id: str, exc: DownloadError) -> str | None:
    """The task's signed URL, asked for again (it must still be completed)."""
    task = await client.retrieve(task_id)
    if task.status is not TaskStatus.COMPLETED:
        status = task.raw_status or task.status.value
        raise DownloadError(f"task {task_id} is {status}, not completed") from exc
    return task.video_url


async def _fetch_resuming(
    client: CometClient,
    opener: Opener,
    dest: Path,
    attempts: int | None,
    identity: str,
    check: Check | None,
) -> DownloadResult:
    tries = 0
    async for attempt in client.retrying(_transfer_hint, attempts):
        with attempt:
            tries += 1
            result = await fetch_once(opener, dest, identity, check)
            return dataclasses.replace(result, attempts=tries)
    raise AssertionError("unreachable: stamina re-raises the last error")


def _transfer_hint(exc: BaseException, policy: RetryPolicy, rng: random.Random) -> bool | float:
    """Broken transfers are resumed like any retryable API failure (a CDN's
    Retry-After included)."""
    if isinstance(exc, TransferInterrupted):
        if exc.retry_after is None:
            return True
        return backoff_hint(RetryableError("", retry_after=exc.retry_after), policy, rng)
    return backoff_hint(exc, policy, rng)


def _download_source(source: Task | str) -> tuple[str | None, str | None]:
    """``(url, task_id)`` for a Task, a signed URL or a bare task id."""
    if isinstance(source, Task):
        return source.video_url, source.id
    if source.startswith(("http://", "https://", "/")):
        return source, None
    return None, source


def _without_query(url: str) -> str:
    """A signed URL without its (changing) signature."""
    return url.split("?", 1)[0].split("#", 1)[0]
