"""Fixtures of the ledger tests: a fresh ledger file on a fake clock."""

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


@pytest.fixture
def ledger(path: Path, clock: Clock) -> Iterator[Ledger]:
    with Ledger(path, clock=clock) as opened:
        add_batch(opened, "b")
        yield opened
