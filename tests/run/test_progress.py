"""Counts for a live display: the last ones read when the ledger does not answer."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from ledger_helpers import add_batch, specs

from batchvid.errors import LedgerUnreachable
from batchvid.ledger import Ledger
from batchvid.ledger.port import RunLedger
from batchvid.run.progress import StateCounts


def test_counts_outlive_a_ledger_that_stops_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        add_batch(ledger, "b")
        ledger.plans.upsert_jobs("b", specs(3))
        counts = StateCounts(RunLedger(ledger), "b")
        fresh, why = anyio.run(counts.read)
        assert fresh["pending"] == 3 and why == ""

        def unreachable(batch: str) -> None:
            raise LedgerUnreachable("the ledger did not answer within 3 s")

        monkeypatch.setattr(ledger.reads, "counts", unreachable)
        stale, why = anyio.run(counts.read)
        assert stale == fresh and "not answering" in why and "3 s" in why
