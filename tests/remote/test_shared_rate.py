"""One rate over many processes: SharedRateLimiters that keep their state in one store.

The store here is an in-memory one with the store's contract (an atomic update under a
lock, on the store's clock), and a real PostgreSQL ledger's ``rate_buckets`` in the last
test.  Assertions are on grant times against the window, never on how long anything took.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from batchvid.errors import LedgerUnreachable
from batchvid.ledger import Ledger
from batchvid.remote.shared_rate import SharedRateLimiter
from batchvid.sim.state import max_in_window

pytestmark = pytest.mark.anyio


class MemoryStore:
    """What a ledger's bucket does: one state, changed atomically, on one clock."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.writes = 0
        self.down = False
        self._lock = threading.Lock()

    async def __call__(self, change: Any) -> Any:
        if self.down:
            raise LedgerUnreachable("the store is out of reach")
        with self._lock:
            self.state, result = change(self.state, time.monotonic())
            self.writes += 1
            return result


async def test_processes_sharing_a_store_never_pass_the_window_together() -> None:
    """Three limiters (three processes), eight waiters each: one window over all of them."""
    store = MemoryStore()
    window, rate = 0.6, 6
    limiters = [SharedRateLimiter(store, rate, burst=2, window=window) for _ in range(3)]
    grants: list[float] = []

    async def ask(limiter: SharedRateLimiter) -> None:
        await limiter.acquire()
        grants.append(time.monotonic())

    with anyio.fail_after(30):  # a hang, not speed
        async with anyio.create_task_group() as tg:
            for limiter in limiters:
                for _ in range(8):
                    tg.start_soon(ask, limiter)
    assert len(grants) == 24
    assert max_in_window(grants, window) <= rate


async def test_a_429_heard_by_one_slows_every_other() -> None:
    store = MemoryStore()
    hears, other = (SharedRateLimiter(store, 600, window=60.0) for _ in range(2))
    await other.acquire()
    assert other.stats.effective_rate == pytest.approx(600)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hears.share_penalties)
            hears.penalise(0.3)
            while store.state is None or not store.state.get("paused_until"):
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    paused_at = time.monotonic()
    with anyio.fail_after(10):
        await other.acquire()  # waits out the pause the first one heard
    assert time.monotonic() >= paused_at + 0.2
    assert (other.stats.effective_rate or 0) < 600  # and its rate was cut too


async def test_a_store_out_of_reach_loses_no_penalty() -> None:
    store = MemoryStore()
    limiter = SharedRateLimiter(store, 600, window=60.0)
    limiter.penalise(1.0)
    store.down = True
    with pytest.raises(LedgerUnreachable):
        await limiter.acquire()
    store.down = False
    with anyio.move_on_after(0.2):
        await limiter.acquire()  # the penalty is written with this grant: it waits
    assert store.state is not None and store.state["paused_until"] > 0
    assert (limiter.stats.effective_rate or 0) < 600


def test_the_ledger_bucket_is_the_store(pg_url: str) -> None:
    """Two PostgreSQL ledgers (two workers) grant from one bucket: one window over both."""
    with Ledger(pg_url) as first, Ledger(pg_url) as second:
        stores = [
            _ledger_store(first),
            _ledger_store(second),
        ]
        window, rate = 0.8, 8
        grants: list[float] = []

        async def main() -> None:
            limiters = [SharedRateLimiter(s, rate, burst=2, window=window) for s in stores]

            async def ask(limiter: SharedRateLimiter) -> None:
                await limiter.acquire()
                grants.append(time.monotonic())

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for limiter in limiters * 8:
                        tg.start_soon(ask, limiter)

        anyio.run(main)
    assert len(grants) == 16
    assert max_in_window(grants, window) <= rate


def _ledger_store(ledger: Ledger) -> Any:
    async def store(change: Any) -> Any:
        return await anyio.to_thread.run_sync(ledger.buckets.update, "bucket", change)

    return store
