"""Shared fixtures: a clean environment, the anyio backend, the simulator on a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from batchvid.remote.client import CometClient
from batchvid.sim.config import SimConfig
from batchvid.sim.server import Simulator, SimulatorThread, serve_simulator

#: Renders take a few tens of milliseconds; seeded so runs repeat.
FAST_SIM = SimConfig(time_scale=0.0005, seed=7)


#: Every environment variable batchvid reads.
BATCHVID_ENV = ("COMETAPI_KEY", "COMETAPI_BASE_URL", "BATCHVID_LEDGER")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's key, endpoint or ledger (nor sends to them)."""
    for name in BATCHVID_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def anyio_backend() -> str:
    # The simulator runs on uvicorn, which needs asyncio.
    return "asyncio"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """The simulator in this test's event loop, on free 127.0.0.1 ports."""
    async with serve_simulator(FAST_SIM) as running:
        yield running


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[CometClient]:
    """A client for ``sim`` whose backoff is fast enough for tests."""
    async with CometClient(
        sim.base_url, sim.api_key, wait_initial=0.01, wait_max=0.05, wait_jitter=0.01
    ) as comet:
        yield comet


@pytest.fixture(scope="module")
def _sim_thread_server() -> Iterator[Simulator]:
    with SimulatorThread(FAST_SIM) as running:
        yield running


@pytest.fixture
def sim_thread(_sim_thread_server: Simulator) -> Simulator:
    """The simulator on a background thread, for synchronous tests.

    One server per test module (starting one takes a few hundred ms); every
    test gets it freshly reset: no tasks, no counters, the starting knobs.
    """
    _sim_thread_server.reset()
    return _sim_thread_server
