"""The built-in CometAPI simulator: a real HTTP server for demos, tests and benchmarks.

Two listeners on 127.0.0.1 (starlette apps served by uvicorn):

- the **API** (``base_url``): ``POST /v1/videos``, ``GET /v1/videos/{id}``,
  ``GET /v1/videos/{id}/content``, behaving as shared/api/cometapi-seedance.md
  documents, plus the unauthenticated admin routes ``GET /_sim/stats``,
  ``GET|POST /_sim/config``, ``POST /_sim/inject`` and ``POST /_sim/reset``
  (never counted as API requests);
- the **CDN** (``cdn_url``, another port: really another origin), serving the
  signed, expiring ``video_url`` s with Range support.

Use it in-process with ``async with serve_simulator(config) as sim:`` (asyncio
only), from synchronous code with ``with SimulatorThread(config) as sim:``, or
blocking with :func:`run_simulator` (the ``batchvid simulator`` command).
What the simulator decides lives in :mod:`batchvid.sim.state` and
:mod:`batchvid.sim.requests`; this module is only HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import SimConfig
from .requests import (
    SimError,
    error_body,
    parse_multipart,
    parse_range,
    to_json,
    validate_create,
)
from .state import FAULT_KINDS, SimState, SimTask, rendered_video

__all__ = [
    "Simulator",
    "SimulatorThread",
    "build_api_app",
    "build_cdn_app",
    "run_simulator",
    "serve_simulator",
]

#: Creates larger than this are refused with 413 (references are images, not films).
MAX_CREATE_BODY: Final = 64 * 1024 * 1024
_CLOSE: Final = "batchvid.sim.close_connection"
_DROPPED: Final = "batchvid.sim.dropped"
_STARTUP_TIMEOUT: Final = 15.0


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


# -- running it --------------------------------------------------------------


@dataclass(slots=True)
class Simulator:
    """A running simulator: where it listens, and a handle on its state."""

    state: SimState
    base_url: str
    cdn_url: str

    @property
    def api_key(self) -> str:
        return self.state.config.api_key

    @property
    def admin_url(self) -> str:
        return f"{self.base_url}/_sim"

    @property
    def config(self) -> SimConfig:
        return self.state.config

    def stats(self) -> dict[str, Any]:
        """The counters ``GET /_sim/stats`` returns."""
        return self.state.stats()

    def configure(self, **knobs: Any) -> SimConfig:
        """Change knobs while running (``configure(p_5xx=0.2)``)."""
        return self.state.configure(**knobs)

    def inject(self, **faults: int) -> None:
        """Queue one-shot faults (``inject(server_error=2, truncate=1)``)."""
        self.state.inject(**faults)

    def reset(self) -> None:
        self.state.reset()


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to whoever runs it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def _server(app: ASGIApp) -> _Server:
    config = uvicorn.Config(
        app,
        http="h11",
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        # Longer than clients keep idle connections, so a client never reuses
        # a connection the server is closing (that would look like a drop).
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,
    )
    return _Server(config)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP (not 0) so asyncio sets TCP_NODELAY on accepted
    # connections: without it every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@asynccontextmanager
async def serve_simulator(
    config: SimConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    cdn_port: int = 0,
) -> AsyncIterator[Simulator]:
    """Run the API and CDN listeners in this (asyncio) event loop; port 0 = any free port."""
    state = SimState(config)
    sockets = [_listen(host, port)]
    try:
        sockets.append(_listen(host, cdn_port))
    except OSError:
        sockets[0].close()
        raise
    state.cdn_url = _url(host, sockets[1])
    servers = [_server(build_api_app(state)), _server(build_cdn_app(state))]
    tasks = [
        asyncio.create_task(server.serve(sockets=[sock]))
        for server, sock in zip(servers, sockets, strict=True)
    ]
    try:
        await _until_started(servers, tasks)
        yield Simulator(state, _url(host, sockets[0]), state.cdn_url)
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in sockets:
            sock.close()


async def _until_started(servers: list[_Server], tasks: list[asyncio.Task[None]]) -> None:
    async with asyncio.timeout(_STARTUP_TIMEOUT):
        while not all(server.started for server in servers):
            for task in tasks:
                if task.done():
                    error = task.exception()
                    raise RuntimeError("the simulator failed to start") from error
            await asyncio.sleep(0.005)


class SimulatorThread:
    """The simulator on a background thread, for synchronous code::

    with SimulatorThread(SimConfig(time_scale=0.01)) as sim:
        ...  # sim.base_url, sim.api_key, sim.stats()
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
    ) -> None:
        self._args = (config, host, port, cdn_port)
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._sim: Simulator | None = None
        self._error: BaseException | None = None

    def start(self) -> Simulator:
        self._thread = threading.Thread(target=self._run, name="batchvid-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(_STARTUP_TIMEOUT) or self._sim is None:
            self.stop()
            raise RuntimeError("the simulator thread did not start") from self._error
        return self._sim

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already finished
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(_STARTUP_TIMEOUT)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        config, host, port, cdn_port = self._args
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve_simulator(config, host=host, port=port, cdn_port=cdn_port) as sim:
            self._sim = sim
            self._ready.set()
            await self._stop.wait()


def run_simulator(
    config: SimConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8787,
    cdn_port: int | None = None,
    *,
    on_ready: Callable[[Simulator], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM (the ``batchvid simulator`` command).

    ``cdn_port`` defaults to ``port + 1``; ``on_ready`` is called once both
    listeners accept connections.
    """
    cdn = cdn_port if cdn_port is not None else (port + 1 if port else 0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
        try:
            async with serve_simulator(config, host=host, port=port, cdn_port=cdn) as sim:
                if on_ready is not None:
                    on_ready(sim)
                await stop.wait()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    asyncio.run(main())
