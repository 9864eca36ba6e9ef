"""The async CometAPI client: create, retrieve and download Seedance videos.

:class:`CometClient` owns one ``httpx.AsyncClient`` (HTTP/2 where the server
offers it, bounded connections, explicit timeouts) and speaks the API exactly
as shared/api/cometapi-seedance.md documents it.  What answers mean is decided
in :mod:`batchvid.remote.protocol`; this module only sends, waits and retries:

- retryable failures (429 honouring Retry-After, 5xx, connect errors) are
  retried with jittered exponential backoff (``stamina``), up to a cap, then
  raised as :class:`~batchvid.errors.RetryableError`;
- a create is repeated only when the request provably never reached the
  server; a create that was sent but lost its answer raises
  :class:`~batchvid.errors.InDoubtError` and is never repeated here;
- 401 raises :class:`~batchvid.errors.AuthError` at once, a 400 on create
  :class:`~batchvid.errors.RejectedError` with the API's own words;
- the bearer token is attached only to requests for the API base URL's
  scheme, host and port: never to a CDN's signed ``video_url``, nor to any
  host a redirect leads to (httpx does not re-run auth for redirects and
  drops ``Authorization`` when one leaves the origin);
- a relative ``video_url`` is resolved against the API base URL; one that is
  no http(s) URL at all falls back to ``/content``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self
from urllib.parse import quote

import anyio
import httpx
import stamina

from ..errors import (
    ApiError,
    AuthError,
    DownloadError,
    InDoubtError,
    RateLimited,
    RejectedError,
    RetryableError,
)
from ..request import VideoRequest, image_type
from .download import DownloadResult, Opener, error_document, read_limited
from .protocol import (
    FilePart,
    RetryPolicy,
    Task,
    backoff_hint,
    create_error,
    encode_multipart,
    error_from_transport,
    parse_error,
    parse_task,
)
from .urls import resolve_url

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "CometClient",
    "RequestGate",
]

log = logging.getLogger(__name__)

#: Polls and creates answer fast; a create uploading reference images may take
#: a while to write; downloads use their own, longer read timeout.
DEFAULT_TIMEOUT: Final = httpx.Timeout(30.0, connect=10.0, write=60.0, pool=60.0)
DOWNLOAD_READ_TIMEOUT: Final = 120.0
DEFAULT_LIMITS: Final = httpx.Limits(
    max_connections=32, max_keepalive_connections=16, keepalive_expiry=5.0
)


class RequestGate(Protocol):
    """What the client asks of a rate limiter (``batchvid.remote.ratelimit`` provides one).

    ``acquire`` is awaited before every API request, each retry included
    (creates, polls, ``/content``; not CDN downloads); ``penalise`` is told of
    every 429 (with the server's Retry-After, if any); ``reward`` of every
    successful API answer.
    """

    async def acquire(self) -> None: ...

    def penalise(self, retry_after: float | None) -> None: ...

    def reward(self) -> None: ...


class _HostBearer(httpx.Auth):
    """Adds the bearer token only to requests for the API's own origin."""

    def __init__(self, origin: tuple[str, str, int], api_key: str) -> None:
        self._origin = origin
        self._header = f"Bearer {api_key}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _origin(request.url) == self._origin:
            request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        scheme, host, port = self._origin
        return f"<_HostBearer {scheme}://{host}:{port} key=***>"


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    default = {"http": 80, "https": 443}.get(url.scheme, 0)
    return url.scheme, url.host.lower(), url.port or default


def _api_root(base_url: str) -> httpx.URL:
    """``https://host[:port][/prefix]`` without a trailing ``/`` or ``/v1``."""
    url = httpx.URL(base_url.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"the API base URL must be http(s)://host[:port], not {base_url!r}")
    path = url.path.rstrip("/")
    path = path.removesuffix("/v1")
    return url.copy_with(path=path or "", query=None, fragment=None)


class CometClient:
    """Async CometAPI client; use as ``async with CometClient(url, key) as client:``.

    ``limiter`` is an optional :class:`RequestGate` shared with the rest of the
    batch.  ``transport`` replaces the network (tests use ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        limiter: RequestGate | None = None,
        max_attempts: int = 6,
        wait_initial: float = 0.5,
        wait_max: float = 30.0,
        wait_jitter: float = 1.0,
        max_retry_after: float = 300.0,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        max_refreshes: int = 1,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        api_key = api_key.strip()
        if not api_key:
            raise AuthError("no API key was given")
        if not _HEADER_SAFE.fullmatch(api_key):
            # httpx/h11 would refuse it mid-request, quoting the header (and the key).
            raise AuthError(
                "the API key contains spaces, control or non-ASCII characters: check COMETAPI_KEY"
            )
        root = _api_root(base_url)
        self._origin = _origin(root)
        self._root = str(root).rstrip("/")
        self._secrets = (api_key,)
        self._limiter = limiter
        self._policy = RetryPolicy(
            attempts=max(1, max_attempts),
            wait_initial=wait_initial,
            wait_max=wait_max,
            wait_jitter=wait_jitter,
            max_retry_after=max_retry_after,
        )
        #: How often a download may ask the task for a fresh signed URL.
        self.max_refreshes = max_refreshes
        self._rng = rng or random.Random()
        self._http = httpx.AsyncClient(
            auth=_HostBearer(self._origin, api_key),
            http2=True,
            timeout=timeout,
            limits=limits,
            transport=transport,
            headers={"User-Agent": "batchvid"},
            follow_redirects=False,
        )

    @property
    def base_url(self) -> str:
        return self._root

    def __repr__(self) -> str:
        return f"<CometClient {self._root}>"

    async def __aenter__(self) -> Self:
        await self._http.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the API -------------------------------------------------------------

    async def create(
        self, request: VideoRequest, *, before_send: Callable[[], Awaitable[None]] | None = None
    ) -> Task:
        """``POST /v1/videos``: start one render; the task as first described.

        ``before_send`` is called before each attempt leaves, after the rate
        limiter's grant (the ledger records the intent there).  Raises
        RejectedError (400: the job is wrong), AuthError (401), ServiceRefused
        (402/403/404/405, a redirect: the account or base URL is wrong),
        RetryableError (gave up; the request provably did no work) or
        InDoubtError (sent, answer lost, or a 504: a task may exist; never retried).
        """
        files = await _reference_parts(request.references)
        content_type, body = encode_multipart(request.form_fields(), files)
        response = await self._call(
            "POST",
            "/v1/videos",
            idempotent=False,
            content=body,
            headers={"Content-Type": content_type},
            before_send=before_send,
        )
        try:
            return self._resolved(parse_task(response.content))
        except ValueError as exc:
            said = parse_error(response.status_code, response.content, {}, secrets=self._secrets)
            raise InDoubtError(
                f"the create answer could not be read ({exc}); a task may have been created"
                f" (the answer said: {said.message[:200]})",
                status=response.status_code,
            ) from exc

    async def retrieve(self, task_id: str) -> Task:
        """``GET /v1/videos/{id}``: the task's current state.

        Raises TaskNotFound for an unknown id, AuthError, or RetryableError.
        """
        response = await self._call("GET", f"/v1/videos/{_quote(task_id)}", idempotent=True)
        try:
            return self._resolved(parse_task(response.content))
        except ValueError as exc:
            raise RetryableError(
                f"the task answer could not be read ({exc})", status=response.status_code
            ) from exc

    async def download(
        self,
        source: Task | str,
        dest: Path | str,
        *,
        attempts: int | None = None,
        check: Callable[[Path], object] | None = None,
    ) -> DownloadResult:
        """Fetch a finished video into ``dest`` (see :func:`.download.fetch_video`)."""
        from .download import fetch_video  # the download path imports this module

        return await fetch_video(self, source, Path(dest), attempts=attempts, check=check)

    def resolve_url(self, url: str | None) -> str | None:
        """An absolute http(s) download URL, or ``None`` (see :func:`.urls.resolve_url`)."""
        return resolve_url(self._root, url)

    # -- internals -----------------------------------------------------------

    def _resolved(self, task: Task) -> Task:
        url = self.resolve_url(task.video_url)
        return task if url == task.video_url else dataclasses.replace(task, video_url=url)

    def cdn_opener(self, url: str) -> Opener:
        """Opens GETs of a download URL: no token unless it is the API's own origin."""
        api_origin = _origin(httpx.URL(url)) == self._origin

        @asynccontextmanager
        async def open_(headers: Mapping[str, str]) -> AsyncIterator[httpx.Response]:
            # Signed URLs need no token: _HostBearer adds none unless the URL
            # is the API's own origin (and then the request counts as an API
            # request for the rate limiter).  Redirects are followed by httpx
            # inside the auth flow, which is not run again for them, and httpx
            # drops Authorization whenever a redirect leaves the origin.
            if api_origin:
                await self._gate()
            async with self._http.stream(
                "GET",
                url,
                headers={**headers, "Accept-Encoding": "identity"},
                follow_redirects=True,
                timeout=self._download_timeout(),
            ) as response:
                yield response

        return open_

    def content_opener(self, task_id: str) -> Opener:
        """Opens GETs of ``/v1/videos/{id}/content`` (authenticated, rate limited)."""
        path = f"/v1/videos/{_quote(task_id)}/content"

        @asynccontextmanager
        async def open_(headers: Mapping[str, str]) -> AsyncIterator[httpx.Response]:
            await self._gate()
            async with self._http.stream(
                "GET",
                self._root + path,
                headers={**headers, "Accept-Encoding": "identity"},
                follow_redirects=True,
                timeout=self._download_timeout(),
            ) as response:
                ok = response.status_code in (200, 206, 416)
                if ok and error_document(response.headers) is None:
                    self._rewarded()
                    yield response
                    return
                # An error answer, or a 2xx whose body is a JSON/HTML document
                # (a not-ready task's invalid_request_error) rather than a video.
                body = await read_limited(response)
                error = parse_error(
                    response.status_code, body, response.headers, secrets=self._secrets
                )
                if isinstance(error, RateLimited) and self._limiter is not None:
                    self._limiter.penalise(error.retry_after)
                if type(error) is RejectedError:
                    # Not ready, or failed: this download cannot succeed now.
                    raise DownloadError(f"/content refused: {error}") from error
                raise error

        return open_

    def _download_timeout(self) -> httpx.Timeout:
        base = self._http.timeout
        return httpx.Timeout(
            connect=base.connect, read=DOWNLOAD_READ_TIMEOUT, write=base.write, pool=base.pool
        )

    def retrying(
        self,
        hint: Callable[[BaseException, RetryPolicy, random.Random], bool | float],
        attempts: int | None = None,
    ) -> AsyncIterable[stamina.Attempt]:
        policy = self._policy
        return stamina.retry_context(
            on=lambda exc: hint(exc, policy, self._rng),
            attempts=attempts or policy.attempts,
            timeout=None,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
            wait_jitter=policy.wait_jitter,
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> httpx.Response:
        """Send one API request with retries; the 2xx answer, or raise."""
        async for attempt in self.retrying(backoff_hint):
            with attempt:
                return await self._send_once(
                    method, path, idempotent, content, headers, before_send
                )
        raise AssertionError("unreachable: stamina re-raises the last error")

    async def _send_once(
        self,
        method: str,
        path: str,
        idempotent: bool,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        before_send: Callable[[], Awaitable[None]] | None,
    ) -> httpx.Response:
        await self._gate()
        if before_send is not None:
            await before_send()
        try:
            response = await self._http.request(
                method, self._root + path, content=content, headers=headers
            )
        except httpx.RequestError as exc:  # transport failures, and undecodable answers
            error = error_from_transport(exc, idempotent=idempotent)
            log.debug("%s %s: %s", method, path, error)
            raise error from exc
        if response.is_success:
            self._rewarded()
            return response
        error = self._error_from(response)
        if not idempotent:
            error = create_error(error)
        log.debug("%s %s: %s", method, path, error)
        raise error

    def _error_from(self, response: httpx.Response) -> ApiError:
        error = parse_error(
            response.status_code, response.content, response.headers, secrets=self._secrets
        )
        if isinstance(error, RateLimited) and self._limiter is not None:
            self._limiter.penalise(error.retry_after)
        return error

    async def _gate(self) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()

    def _rewarded(self) -> None:
        if self._limiter is not None:
            self._limiter.reward()


#: What an API key may contain to travel in a header: visible ASCII, no spaces.
_HEADER_SAFE: Final = re.compile(r"[\x21-\x7e]+")


def _quote(task_id: str) -> str:
    """A task id as one path segment (ids come from the server; trust nothing)."""
    return quote(task_id, safe="")


async def _reference_parts(references: Sequence[Path]) -> list[FilePart]:
    """Repeated ``input_reference`` file parts, in order, with their real content type."""
    parts: list[FilePart] = []
    for index, path in enumerate(references, start=1):
        try:
            content = await anyio.Path(path).read_bytes()
        except OSError as exc:
            raise RejectedError(
                f"reference image {index} ({path.name}) cannot be read: {exc.strerror}"
            ) from exc
        ctype = image_type(content[:12])
        if ctype is None:
            raise RejectedError(
                f"reference image {index} ({path.name}) is not a JPEG, PNG or WebP image"
            )
        parts.append(FilePart("input_reference", path.name, ctype, content))
    return parts
