"""One rate limiter shared by every API request (creates, polls, URL refreshes).

Two mechanisms, each doing one job:

* a **sliding-window log** of grant times is the hard guarantee: never more
  than ``rate`` grants in any ``window``-second interval (``[t, t + window)``),
  checked over ``window + slack`` so that uneven network delays (a first
  request that waited on a TLS handshake, later ones on a warm connection)
  cannot make the *server* count one more than the limit in its own window;
* a **token bucket** (capacity ``burst``, refilled at the *effective* rate)
  paces grants smoothly and allows a small burst after idle time.

After a 429, :meth:`RateLimiter.penalise` pauses every grant until the server's
``Retry-After`` has passed and halves the effective rate (never below a floor);
each success then :meth:`~RateLimiter.reward`\\ s it back up by a small step
(AIMD).  The arithmetic lives in :class:`RateState`, a plain synchronous
object driven by an explicit clock; :class:`RateLimiter` only adds the async
waiting, in FIFO order, on top.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_SLACK",
    "RateLimiter",
    "RateState",
    "RateStats",
    "refill",
    "token_wait",
    "window_ready_at",
]

#: Grants the bucket can hold: how many requests may go back to back after idle time.
DEFAULT_BURST: Final = 4
#: Seconds added to the hard window: covers the spread of request latencies.
DEFAULT_SLACK: Final = 0.25
#: Multiplicative decrease of the effective rate on each 429.
DECREASE: Final = 0.5
#: Longest pause one 429 can impose, in windows (15 min for a per-minute limit): a
#: Retry-After of a day is more likely a skewed clock; a real one is repeated.
MAX_PAUSE_WINDOWS: Final = 15


def refill(tokens: float, elapsed: float, rate: float, window: float, burst: float) -> float:
    """The bucket after ``elapsed`` seconds at ``rate`` tokens per ``window``, capped."""
    return min(float(burst), tokens + max(0.0, elapsed) * rate / window)


def token_wait(tokens: float, rate: float, window: float) -> float:
    """Seconds until the bucket holds one whole token (0 if it does now)."""
    return 0.0 if tokens >= 1.0 else (1.0 - tokens) * window / rate


def window_ready_at(grants: Sequence[float], limit: int, window: float) -> float:
    """The earliest time one more grant keeps every ``window``-long interval at ``limit``.

    ``grants`` are the past grant times, oldest first.  With fewer than
    ``limit`` of them there is no constraint (``-inf``); otherwise the grant
    ``limit`` places back must have left the window.
    """
    if len(grants) < limit:
        return -math.inf
    return grants[-limit] + window


@dataclass(frozen=True, slots=True)
class RateStats:
    """A snapshot of a limiter.  Rates are grants per ``window`` (per minute by default)."""

    grants: int
    penalties: int
    configured_rate: float | None
    effective_rate: float | None
    paused_until: float
    last_grant_at: float | None = None
    waiting: int = 0


class RateState:
    """The limiter's arithmetic, synchronous and clock-explicit (every method takes ``now``).

    ``rate=None`` means unlimited: only penalty pauses apply.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        burst: int = DEFAULT_BURST,
        window: float = 60.0,
        min_rate: float | None = None,
        recovery_step: float | None = None,
        default_backoff: float | None = None,
        slack: float = DEFAULT_SLACK,
        now: float = 0.0,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be positive or None, not {rate}")
        if not window > 0:
            raise ValueError(f"window must be positive, not {window}")
        self.rate = rate
        self.window = window
        self.slack = max(0.0, slack)
        #: Hard cap per window; at least 1, so a fractional rate still makes progress.
        self.limit = max(1, math.floor(rate)) if rate is not None else 0
        self.burst = max(1, min(burst, self.limit)) if rate is not None else 0
        self.min_rate = min(rate, min_rate or rate / 10) if rate is not None else 0.0
        self.recovery_step = (recovery_step or rate / 50) if rate is not None else 0.0
        self.default_backoff = window / 12 if default_backoff is None else default_backoff
        self.max_pause = window * MAX_PAUSE_WINDOWS
        self.effective_rate = rate
        self.tokens = float(self.burst)
        self.refilled_at = now
        self.paused_until = -math.inf
        self.log: deque[float] = deque(maxlen=self.limit or 1)
        self.grants = 0
        self.penalties = 0
        self.last_grant_at: float | None = None

    def _refill(self, now: float) -> None:
        # During a pause nothing accrues: refilled_at may lie in the future.
        if self.effective_rate is not None and now > self.refilled_at:
            self.tokens = refill(
                self.tokens, now - self.refilled_at, self.effective_rate, self.window, self.burst
            )
            self.refilled_at = now

    def ready_at(self, now: float) -> float:
        """The earliest time (``>= now`` or in the past) the next grant may be made."""
        at = self.paused_until
        if self.effective_rate is not None and self.rate is not None:
            self._refill(now)
            start = max(now, self.refilled_at)
            at = max(at, start + token_wait(self.tokens, self.effective_rate, self.window))
            # The hard cap looks back a little further than the window: a request
            # granted now may reach the server sooner after an earlier one than the
            # grants were apart (that one waited on a connection or a handshake).
            at = max(at, window_ready_at(self.log, self.limit, self.window + self.slack))
        return at

    def try_grant(self, now: float) -> bool:
        """Grant one request at ``now`` if every constraint allows it."""
        if self.ready_at(now) > now:
            return False
        if self.effective_rate is not None:
            self.tokens -= 1.0
            self.log.append(now)
        self.grants += 1
        self.last_grant_at = now
        return True

    def penalise(self, now: float, retry_after: float | None = None) -> None:
        """A 429: pause all grants for ``retry_after`` (or the default backoff); slow down.

        The pause is capped at :data:`MAX_PAUSE_WINDOWS` windows.

        429s that arrive during a pause answer requests granted before it: they
        extend the pause but do not cut the rate again (one cut per congestion event).
        """
        self.penalties += 1
        wait = self.default_backoff if retry_after is None else max(0.0, retry_after)
        wait = min(wait, self.max_pause)
        already_paused = now < self.paused_until
        self.paused_until = max(self.paused_until, now + wait)
        if self.effective_rate is None or already_paused:
            return
        self._refill(now)
        self.effective_rate = max(self.min_rate, self.effective_rate * DECREASE)
        # Exactly one probe request when the pause ends, then the slower pace.
        self.tokens = 1.0
        self.refilled_at = self.paused_until

    def reward(self, now: float) -> None:
        """A success: raise the effective rate by one step, up to the configured rate."""
        if self.effective_rate is None or self.rate is None:
            return
        self._refill(now)
        self.effective_rate = min(self.rate, self.effective_rate + self.recovery_step)

    def snapshot(self) -> dict[str, Any]:
        """The state that changes (not the settings), as JSON-ready data (see :meth:`restore`)."""
        return {
            "effective_rate": self.effective_rate,
            "tokens": self.tokens,
            "refilled_at": self.refilled_at,
            "paused_until": None if self.paused_until == -math.inf else self.paused_until,
            "log": list(self.log),
            "grants": self.grants,
            "penalties": self.penalties,
            "last_grant_at": self.last_grant_at,
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Take up a :meth:`snapshot` (another process's, perhaps with other settings:
        the effective rate is kept within this one's)."""
        if self.rate is not None and saved.get("effective_rate") is not None:
            rate = float(saved["effective_rate"])
            self.effective_rate = max(self.min_rate, min(self.rate, rate))
        self.tokens = min(float(self.burst), float(saved.get("tokens", self.tokens)))
        self.refilled_at = float(saved.get("refilled_at", self.refilled_at))
        paused = saved.get("paused_until")
        self.paused_until = -math.inf if paused is None else float(paused)
        self.log.extend(float(t) for t in saved.get("log", ()))
        self.grants = int(saved.get("grants", 0))
        self.penalties = int(saved.get("penalties", 0))
        self.last_grant_at = saved.get("last_grant_at")

    def stats(self, waiting: int = 0) -> RateStats:
        return RateStats(
            grants=self.grants,
            penalties=self.penalties,
            configured_rate=self.rate,
            effective_rate=self.effective_rate,
            paused_until=self.paused_until,
            last_grant_at=self.last_grant_at,
            waiting=waiting,
        )


class RateLimiter:
    """Await :meth:`acquire` before every API request; report 429s and successes back.

    ``rate_per_minute`` grants per ``window`` seconds (60 by default: per
    minute; tests scale the window down); ``None`` means unlimited, though a
    429's pause is still honoured.  ``clock`` must tick in seconds alongside the
    event loop's clock (``time.monotonic``).
    """

    def __init__(
        self,
        rate_per_minute: float | None,
        *,
        burst: int = DEFAULT_BURST,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        min_rate: float | None = None,
        recovery_step: float | None = None,
        default_backoff: float | None = None,
        slack: float = DEFAULT_SLACK,
    ) -> None:
        self._clock = clock
        self._state = RateState(
            rate_per_minute,
            burst=burst,
            window=window,
            min_rate=min_rate,
            recovery_step=recovery_step,
            default_backoff=default_backoff,
            slack=slack,
            now=clock(),
        )
        # Waiters queue on a FIFO lock; only its holder sleeps until its grant is due.
        self._turn = anyio.Lock()
        self._changed: anyio.Event | None = None
        self._waiting = 0

    async def acquire(self) -> None:
        """Wait for a grant (its time is then ``stats.last_grant_at``).

        Cancellation-safe: a waiter cancelled before its grant consumes nothing,
        and the grant is taken with no await between it and the return.
        """
        self._waiting += 1
        try:
            async with self._turn:
                while True:
                    now = self._clock()
                    if self._state.try_grant(now):
                        return
                    changed = self._changed = anyio.Event()
                    with anyio.move_on_after(self._state.ready_at(now) - now):
                        await changed.wait()
        finally:
            self._waiting -= 1

    def penalise(self, retry_after: float | None = None) -> None:
        """A 429 arrived: pause everyone for ``retry_after`` seconds and halve the rate."""
        self._state.penalise(self._clock(), retry_after)
        self._wake()

    def reward(self) -> None:
        """A request succeeded: recover the effective rate by one step."""
        self._state.reward(self._clock())
        self._wake()

    def _wake(self) -> None:
        # The waiting head recomputes its due time (earlier after a reward).
        if self._changed is not None:
            self._changed.set()

    @property
    def stats(self) -> RateStats:
        return self._state.stats(self._waiting)
