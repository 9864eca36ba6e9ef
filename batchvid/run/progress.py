"""Counts by state for a live display, read so that a display can never end the run."""

from __future__ import annotations

from ..errors import LedgerError
from ..ledger.port import RunLedger

__all__ = ["StateCounts"]


class StateCounts:
    """A batch's jobs by state, as last read: a ledger that does not answer (its server
    out of reach) gives the counts read before, and says why."""

    def __init__(self, ledger: RunLedger, batch: str) -> None:
        self._ledger = ledger
        self._batch = batch
        self._last: dict[str, int] = {}

    async def read(self) -> tuple[dict[str, int], str]:
        """The counts, and ``""`` or why they are the last ones read, not current ones."""
        ledger = self._ledger
        try:
            counts = await ledger.call(ledger.reads.counts, self._batch)
        except LedgerError as exc:
            return dict(self._last), f"the ledger is not answering ({exc})"
        self._last = {str(state): n for state, n in counts.items()}
        return dict(self._last), ""
