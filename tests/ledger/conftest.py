"""Fixtures of the ledger tests: a fresh ledger on a fake clock, on each backend.

``ledger`` is parametrized: every test that takes it runs on SQLite (a file in
the test's temp dir) and on PostgreSQL (a fresh database on the session's real
server, see ``tests/pg_server.py``).  ``sqlite_ledger`` is for the tests of
SQLite's own file (pragmas, fsyncs, a second connection to the same file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_helpers import add_batch
from report_ledgers import Clock

from batchvid.ledger import Ledger


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested" / "ledger.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, path: Path, clock: Clock) -> Iterator[Ledger]:
    target: Path | str = path if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with Ledger(target, clock=clock) as opened:
        add_batch(opened, "b")
        yield opened


@pytest.fixture
def sqlite_ledger(path: Path, clock: Clock) -> Iterator[Ledger]:
    with Ledger(path, clock=clock) as opened:
        add_batch(opened, "b")
        yield opened
