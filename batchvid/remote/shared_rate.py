"""One rate limit shared by every process using an API key: the limiter's state kept in a store.

:class:`SharedRateLimiter` is :class:`~batchvid.remote.ratelimit.RateLimiter`
with its :class:`~batchvid.remote.ratelimit.RateState` kept outside the
process: every grant is one atomic update of the stored state (the store
locks it, hands it over with its own clock, and keeps what comes back; a
PostgreSQL ledger's ``rate_buckets`` does: see :mod:`batchvid.ledger.buckets`).
So the sliding window's hard cap and the token bucket count every worker's
requests together, and a 429 any worker hears slows all of them: it is
written to the shared state at once (:meth:`SharedRateLimiter.share_penalties`),
and successes raise the shared rate again as each worker's next grant passes
them on.

The arithmetic stays :class:`RateState`'s; only the waiting is here, FIFO
within a process, and between processes whoever asks first once a grant is due.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio

from ..errors import BatchvidError
from .ratelimit import DEFAULT_BURST, DEFAULT_SLACK, RateState, RateStats

__all__ = ["BucketStore", "SharedRateLimiter"]

#: Applies ``change`` to the stored state atomically: ``change(stored or None, store's
#: clock in seconds)`` returns the state to keep and a result, which the store returns.
BucketStore = Callable[
    [Callable[[dict[str, Any] | None, float], tuple[dict[str, Any], Any]]], Awaitable[Any]
]
#: Longest a waiter sleeps before asking the store again (others may have been penalised).
MAX_NAP_S: Final = 5.0


class SharedRateLimiter:
    """Await :meth:`acquire` before every API request; report 429s and successes back.

    ``store`` holds the state (see the module docstring); the other arguments
    are :class:`~batchvid.remote.ratelimit.RateLimiter`'s.
    """

    def __init__(
        self,
        store: BucketStore,
        rate_per_minute: float,
        *,
        burst: int = DEFAULT_BURST,
        window: float = 60.0,
        slack: float = DEFAULT_SLACK,
    ) -> None:
        self._store = store
        self._settings: dict[str, Any] = {
            "rate": rate_per_minute,
            "burst": burst,
            "window": window,
            "slack": slack,
        }
        self._turn = anyio.Lock()
        self._waiting = 0
        #: What this process heard since it last wrote the shared state.
        self._penalties: list[float | None] = []
        self._rewards = 0
        self._heard = anyio.Event()
        #: The shared state as last seen (for :attr:`stats`).
        self._seen: RateState = RateState(rate_per_minute, burst=burst, window=window, slack=slack)
        self._nap = window / 12

    def _state(self, saved: dict[str, Any] | None, now: float) -> RateState:
        state = RateState(
            self._settings["rate"],
            burst=self._settings["burst"],
            window=self._settings["window"],
            slack=self._settings["slack"],
            now=now,
        )
        if saved:
            state.restore(saved)
        return state

    def _take_heard(self) -> tuple[list[float | None], int]:
        heard = (self._penalties, self._rewards)
        self._penalties, self._rewards = [], 0
        return heard

    def _give_back(self, heard: tuple[list[float | None], int]) -> None:
        """The store could not be written: keep what was heard for the next try."""
        self._penalties[:0] = heard[0]
        self._rewards += heard[1]

    async def _update(self, grant: bool) -> float:
        """Pass on what was heard and (``grant``) try for a grant: seconds until one may
        be due (0: granted)."""
        heard = self._take_heard()

        def change(saved: dict[str, Any] | None, now: float) -> tuple[dict[str, Any], float]:
            state = self._state(saved, now)
            for retry_after in heard[0]:
                state.penalise(now, retry_after)
            for _ in range(heard[1]):
                state.reward(now)
            wait = 0.0
            if grant and not state.try_grant(now):
                wait = max(0.0, state.ready_at(now) - now) or self._nap
            self._seen = state
            return state.snapshot(), wait

        try:
            result: float = await self._store(change)
        except BaseException:
            self._give_back(heard)
            raise
        return result

    async def acquire(self) -> None:
        """Wait for a grant, counted with every other process's.

        Cancellation-safe: a waiter cancelled before its grant consumes nothing
        (a store write in flight when it is cancelled may still grant: one
        request's worth, never more).
        """
        self._waiting += 1
        try:
            async with self._turn:
                while True:
                    wait = await self._update(grant=True)
                    if wait <= 0:
                        return
                    with anyio.move_on_after(min(wait, MAX_NAP_S)):
                        await self._heard.wait()
        finally:
            self._waiting -= 1

    def penalise(self, retry_after: float | None = None) -> None:
        """A 429 arrived: every process pauses for ``retry_after`` seconds and slows down
        (written to the store at once by :meth:`share_penalties`)."""
        self._penalties.append(retry_after)
        self._heard.set()

    def reward(self) -> None:
        """A request succeeded: passed on with this process's next grant."""
        self._rewards += 1

    async def share_penalties(self) -> None:
        """Write each 429 to the shared state as it arrives (run it in a task group; it
        never returns).  A store out of reach is tried again with the next one."""
        while True:
            await self._heard.wait()
            self._heard = anyio.Event()
            if self._penalties:
                try:
                    await self._update(grant=False)
                except BatchvidError:
                    continue

    @property
    def stats(self) -> RateStats:
        """The shared state as this process last saw it."""
        return self._seen.stats(self._waiting)
