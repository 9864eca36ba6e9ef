"""Shared fixtures: a clean environment, the anyio backend, the simulator on a real socket,
a real PostgreSQL server (``pg_server``) and a fresh database on it for each test (``pg_url``),
a real S3-compatible server (``s3_server``) and a fresh bucket on it (``s3_bucket``)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from pg_server import MissingPostgres, PgServer
from s3_server import S3Server

from batchvid.remote.client import CometClient
from batchvid.sim.config import SimConfig
from batchvid.sim.server import Simulator, SimulatorThread, serve_simulator

#: Renders take a few tens of milliseconds; seeded so runs repeat.
FAST_SIM = SimConfig(time_scale=0.0005, seed=7)


#: Why the PostgreSQL tests skip on a machine without the server.
PG_MISSING_REASON = (
    "PostgreSQL server binaries not found (apt-get install postgresql; .ci/run installs it)"
)

#: Every environment variable batchvid reads (the AWS ones: obstore, for a store).
BATCHVID_ENV = (
    "COMETAPI_KEY",
    "COMETAPI_BASE_URL",
    "BATCHVID_LEDGER",
    "BATCHVID_SPOOL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ALLOW_HTTP",
    "AWS_PROFILE",
)


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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server on 127.0.0.1 for the whole session (fsync off).

    Without the server binaries the tests that use it skip, except in CI
    (``CI=true``), where ``.ci/run`` should have installed them: there they fail.
    """
    in_ci = os.environ.get("CI") == "true"
    if importlib.util.find_spec("psycopg") is None:
        if in_ci:
            pytest.fail(
                "psycopg is not installed; the dev dependencies should bring it", pytrace=False
            )
        pytest.skip("psycopg is not installed")
    server: PgServer | None = None
    with contextlib.suppress(MissingPostgres):
        server = PgServer()
    if server is None:
        if in_ci:
            pytest.fail(
                "PostgreSQL server binaries not found, and CI=true: .ci/run installs"
                " Debian's postgresql package (apt-get install postgresql); did that fail?"
                " See /tmp/batchvid-apt.log.",
                pytrace=False,
            )
        pytest.skip(PG_MISSING_REASON)
    with server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database of this test's own on the session's server: its URL."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = pg_server.create_database(name)
    yield url
    with contextlib.suppress(Exception):
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 for the whole session (it comes with the dev
    install; without it these tests skip, except under CI=true, where they fail)."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("obstore") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("moto or obstore is not installed; the dev group brings them")
        pytest.skip("moto and obstore are not installed (pip install -e . --group dev)")
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket of this test's own, with the AWS environment pointing at it."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server.bucket()
