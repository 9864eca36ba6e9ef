"""The simulator's HTTP: the API app and the CDN app, as starlette ASGI apps.

What the simulator decides lives in :mod:`batchvid.sim.state` and
:mod:`batchvid.sim.requests`; this module turns it into requests and answers
(and into the faults the state asks for: dropped connections, slow or
truncated bodies).  :mod:`batchvid.sim.server` serves the two apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .requests import (
    SimError,
    error_body,
    parse_multipart,
    parse_range,
    to_json,
    validate_create,
)
from .state import FAULT_KINDS, SimState, SimTask, rendered_video

__all__ = ["build_api_app", "build_cdn_app"]

#: Creates larger than this are refused with 413 (references are images, not films).
MAX_CREATE_BODY: Final = 64 * 1024 * 1024
_CLOSE: Final = "batchvid.sim.close_connection"
_DROPPED: Final = "batchvid.sim.dropped"


# -- connection control ------------------------------------------------------


class _ConnectionControl:
    """Outermost ASGI layer: lets a handler close its connection without answering.

    Dropped creates and truncated downloads need a real broken connection, which
    ASGI cannot express: uvicorn would answer 500 to an exception.  uvicorn's
    ``send`` is a bound method of its request cycle, which holds the transport.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_CLOSE] = _closer(scope, send)
        await self.app(scope, receive, send)


def _closer(scope: Scope, send: Send) -> Callable[[], Awaitable[None]]:
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)

    async def close() -> None:
        if transport is None:
            raise RuntimeError("this server does not expose its connections; cannot drop one")
        scope[_DROPPED] = True
        transport.close()
        # Wait until the server has seen the disconnect, so it neither answers
        # afterwards nor logs the unfinished response as an application error.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while not getattr(cycle, "disconnected", True):
                    await asyncio.sleep(0.001)

    return close


class _ApiGate:
    """Auth, rate limit and injected 5xx for every ``/v1/`` request; logs each one."""

    def __init__(self, app: ASGIApp, state: SimState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        entry = self.state.log_request(str(scope["method"]), str(scope["path"]))

        async def watch(message: Message) -> None:
            # A dropped connection answered nothing, whatever the app sends after.
            if message["type"] == "http.response.start" and not scope.get(_DROPPED):
                entry["status"] = int(message["status"])
            await send(message)

        authorization = dict(scope["headers"]).get(b"authorization")
        rejection = self.state.admit(None if authorization is None else authorization.decode())
        if rejection is None:
            await self.app(scope, receive, watch)
        else:
            error, extra = rejection
            await _error(self.state, error, extra)(scope, receive, watch)


# -- responses ---------------------------------------------------------------


def _json(body: Mapping[str, Any], status: int = 200) -> Response:
    return Response(to_json(body), status_code=status, media_type="application/json")


def _error(state: SimState, error: SimError, headers: Mapping[str, str] | None = None) -> Response:
    shape: str = state.config.error_shape
    if shape == "mixed":
        shape = state.choose(("openai", "flat"))
    response = _json(error_body(shape, error), error.status)
    response.headers.update(headers or {})
    return response


def _cdn_error(status: int, code: str, message: str) -> Response:
    # Object stores answer in XML, not in the API's JSON shapes.
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml")


class _VideoResponse(Response):
    """An MP4 with single-range support and the truncation fault."""

    def __init__(self, state: SimState, task: SimTask, range_header: str | None) -> None:
        super().__init__(media_type="video/mp4")
        self.state = state
        self.task = task
        self.range_header = range_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content = self.task.content
        if self.range_header is None and (
            self.task.corrupt or self.state.fault("corrupt", 0.0)
        ):  # the whole file, its length true, but its index (the moov box, at the end) cut off
            self.state.count("corrupt_served")
            content = content[: len(content) * 3 // 5]
        total = len(content)
        wanted = parse_range(self.range_header, total)
        if self.range_header is not None and self.state.fault(
            "ignore_range", self.state.config.p_ignore_range
        ):
            self.state.count("ranges_ignored")
            wanted = None  # like a server without range support: the whole file, 200
        headers = [(b"accept-ranges", b"bytes"), (b"etag", f'"{self.task.sha256[:32]}"'.encode())]
        if wanted == "bad":
            headers.append((b"content-range", f"bytes */{total}".encode()))
            await _send_whole(send, 416, headers, b"")
            return
        status, (first, last) = (200, (0, total - 1)) if wanted is None else (206, wanted)
        if status == 206:
            self.state.count("ranges")
            headers.append((b"content-range", f"bytes {first}-{last}/{total}".encode()))
        body = content[first : last + 1] if scope["method"] != "HEAD" else b""
        headers += [
            (b"content-type", b"video/mp4"),
            (b"content-length", str(last - first + 1).encode()),
        ]
        if body and len(body) > 1 and self.state.fault("truncate", self.state.config.p_truncate):
            self.state.count("truncated")
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send(
                {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
            )
            await scope[_CLOSE]()
            return
        delay = self.state.config.cdn_delay
        if delay and len(body) > 1:  # a slow download: half now, the rest after a pause
            await send({"type": "http.response.start", "status": status, "headers": headers})
            half = len(body) // 2
            await send({"type": "http.response.body", "body": body[:half], "more_body": True})
            await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": body[half:]})
            return
        await _send_whole(send, status, headers, body)


async def _send_whole(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    if not any(name == b"content-length" for name, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise SimError(413, "InvalidParameter", f"the request body exceeds {limit} bytes")
    return bytes(body)


# -- the API -----------------------------------------------------------------


class _ApiRoutes:
    """The documented routes, and the ``/_sim/*`` admin routes, over one state."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def create(self, request: Request) -> Response:
        state = self.state
        try:
            body = await _read_body(request, MAX_CREATE_BODY)
            fields, uploads = parse_multipart(request.headers.get("content-type", ""), body)
            valid = validate_create(fields, uploads)
        except SimError as error:
            state.count("rejected")
            return _error(state, error)
        config = state.config
        # A video size and length not made yet takes a moment to encode: not on the loop.
        video = rendered_video(valid, only_made=True)
        if video is None:  # a size and length not made yet: encode it off the loop
            video = await anyio.to_thread.run_sync(rendered_video, valid)
        task = state.create(valid, video)
        if state.fault("drop_after_create", config.p_drop_after_create):
            state.count("drops")
            await request.scope[_CLOSE]()
            return Response(status_code=204)  # never sent: the connection is gone
        if config.create_delay:
            await asyncio.sleep(config.create_delay)
        return _json(state.task_view(task, fresh=True))

    async def retrieve(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        if self.state.config.poll_delay:
            await asyncio.sleep(self.state.config.poll_delay)
        self.state.count_poll(task_id)
        task = self.state.lookup(task_id)
        if task is None:
            return _error(self.state, SimError(400, "task_not_exist", "task_not_exist"))
        return _json(self.state.task_view(task))

    async def content(self, request: Request) -> Response:
        state = self.state
        if not state.config.content:
            return await self.not_found(request, HTTPException(404))
        task = state.lookup(request.path_params["task_id"])
        if task is None:
            return _error(state, SimError(400, "task_not_exist", "task_not_exist"))
        status, _, _ = task.phase(state.now())
        if status != "completed":
            word = state.status_word(status)
            message = f"the video is not available: task is {word}"
            return _error(state, SimError(400, "invalid_request_error", message))
        state.count("content_requests")
        if state.fault("content_redirect", state.config.p_content_redirect):
            state.count("content_redirects")
            return Response(status_code=302, headers={"location": state.sign_url(task.id)})
        return _VideoResponse(state, task, request.headers.get("range"))

    async def stats(self, request: Request) -> Response:
        return _json(self.state.stats())

    async def config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.state.configure(**await _json_object(request, "a JSON object of knobs"))
            except (ValueError, TypeError) as exc:
                return _json({"error": str(exc)}, 400)
        return _json(self.state.config.as_dict())

    async def inject(self, request: Request) -> Response:
        try:
            self.state.inject(**await _json_object(request, '{"server_error": 2}'))
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc), "known": list(FAULT_KINDS)}, 400)
        return _json({"pending_faults": self.state.stats()["pending_faults"]})

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return _json({"reset": True})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        message = f"no route {request.method} {request.url.path}"
        return _error(self.state, SimError(status, "not_found", message))


async def _json_object(request: Request, example: str) -> dict[str, Any]:
    """An admin request's body: a JSON object (an empty body is an empty one)."""
    value = json.loads(await request.body() or b"{}")
    if not isinstance(value, dict):
        raise ValueError(f"send a JSON object such as {example}")
    return value


def build_api_app(state: SimState) -> ASGIApp:
    """The API listener: the documented routes plus ``/_sim/*`` admin routes."""
    api = _ApiRoutes(state)
    app = Starlette(
        routes=[
            Route("/v1/videos", api.create, methods=["POST"]),
            Route("/v1/videos/{task_id}", api.retrieve, methods=["GET"]),
            Route("/v1/videos/{task_id}/content", api.content, methods=["GET"]),
            Route("/_sim/stats", api.stats, methods=["GET"]),
            Route("/_sim/config", api.config, methods=["GET", "POST"]),
            Route("/_sim/inject", api.inject, methods=["POST"]),
            Route("/_sim/reset", api.reset, methods=["POST"]),
        ],
        exception_handlers={404: api.not_found, 405: api.not_found},
    )
    return _ConnectionControl(_ApiGate(app, state))


# -- the CDN -----------------------------------------------------------------


def build_cdn_app(state: SimState) -> ASGIApp:
    """The CDN listener: signed, expiring video URLs; never wants a bearer token."""

    async def video(request: Request) -> Response:
        state.count("cdn_requests")
        if "authorization" in request.headers:
            state.count("cdn_authorization_headers")
        task_id = request.path_params["name"].removesuffix(".mp4")
        refusal = state.check_signature(
            task_id, request.query_params.get("expires", ""), request.query_params.get("sig", "")
        )
        if refusal is not None:
            state.count("cdn_refused")
            return _cdn_error(refusal.status, refusal.code, refusal.message)
        task = state.lookup(task_id)
        if task is None:
            return _cdn_error(404, "NoSuchKey", "the specified key does not exist")
        if state.fault("cdn_error", state.config.p_cdn_error):
            state.count("cdn_errors")
            status = state.choose((500, 502, 503))
            return _cdn_error(status, "InternalError", "we encountered an internal error")
        return _VideoResponse(state, task, request.headers.get("range"))

    async def not_found(request: Request, exc: Exception) -> Response:
        state.count("cdn_requests")
        return _cdn_error(404, "NoSuchKey", "the specified key does not exist")

    app = Starlette(
        routes=[Route("/v/{name}", video, methods=["GET"])],
        exception_handlers={404: not_found, 405: not_found},
    )
    return _ConnectionControl(app)
