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
:mod:`batchvid.sim.requests`; its HTTP apps in :mod:`batchvid.sim.apps`; this
module only serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import uvicorn
from starlette.types import ASGIApp

from .apps import build_api_app, build_cdn_app
from .config import SimConfig
from .state import SimState

__all__ = [
    "Simulator",
    "SimulatorThread",
    "build_api_app",
    "build_cdn_app",
    "run_simulator",
    "serve_simulator",
]

_STARTUP_TIMEOUT: Final = 15.0


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
