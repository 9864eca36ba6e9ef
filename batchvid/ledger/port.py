"""The ledger as a running batch uses it: its roles, called without blocking the event loop.

A run reaches the ledger only through a :class:`RunLedger`: the roles it needs
(``plans``, ``moves``, ``queue``, ``reads``, ``leases``, ``buckets``), each
call awaited through :meth:`RunLedger.call`.  How a call runs is the
backend's business:

- SQLite, a local file: in place.  A call takes microseconds; a thread hop
  would cost more than the call.
- PostgreSQL, across a network: on one of a few daemon threads, with a
  deadline, so the event loop never waits on the network and a server that
  stops answering (a partition, a hung proxy) is a
  :class:`~batchvid.errors.LedgerUnreachable` after the deadline, never a hang.
  Once one call has timed out, the next ones get a short deadline until one
  gets through, so a run that must stop is not held up call after call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, ParamSpec, TypeVar

from ..errors import LedgerUnreachable
from ..threads import DaemonThreads
from .store import Ledger
from .target import LedgerTarget

__all__ = ["CALL_TIMEOUT_S", "RunLedger"]

P = ParamSpec("P")
T = TypeVar("T")

#: Longest a call on a shared ledger may take (its server's lock and statement
#: timeouts come first: this is for a server that no longer answers at all).
CALL_TIMEOUT_S: Final = 30.0
#: ... and once one has not answered, until one does.
DOWN_TIMEOUT_S: Final = 3.0
#: Calls on a shared ledger at once (its connection pool is as large).
THREADS: Final = 6


class RunLedger:
    """A running batch's ledger (see the module docstring)."""

    def __init__(self, ledger: Ledger, *, timeout: float = CALL_TIMEOUT_S) -> None:
        self.ledger = ledger
        self.plans = ledger.plans
        self.moves = ledger.moves
        self.queue = ledger.queue
        self.reads = ledger.reads
        self.leases = ledger.leases
        self.buckets = ledger.buckets
        self.timeout = timeout
        self._threads = DaemonThreads(THREADS, "batchvid-ledger") if ledger.shared else None
        #: The server stopped answering a call, and none has got through since.
        self.down = False

    @property
    def shared(self) -> bool:
        """Many workers may run the batch (PostgreSQL): work is claimed, limits are shared."""
        return self.ledger.shared

    @property
    def where(self) -> str:
        return self.ledger.where

    @property
    def target(self) -> LedgerTarget:
        return self.ledger.target

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)``, a method of one of the roles, as this backend runs it."""
        if self._threads is None:
            return fn(*args, **kwargs)
        timeout = DOWN_TIMEOUT_S if self.down else self.timeout
        return await self._offload(timeout, fn, *args, **kwargs)

    async def call_within(self, timeout: float, fn: Callable[..., T], *args: object) -> T:
        """:meth:`call` with a deadline of its own (on SQLite, the call runs in place)."""
        if self._threads is None:
            return fn(*args)
        return await self._offload(min(timeout, self.timeout), fn, *args)

    async def _offload(
        self, timeout: float, fn: Callable[..., T], *args: object, **kw: object
    ) -> T:
        assert self._threads is not None
        try:
            result = await self._threads.run(lambda: fn(*args, **kw), timeout=timeout)
        except TimeoutError:
            self.down = True
            raise LedgerUnreachable(
                f"the ledger {self.where} did not answer within {timeout:g} s"
            ) from None
        self.down = False
        return result

    def close(self) -> None:
        if self._threads is not None:
            self._threads.close()
