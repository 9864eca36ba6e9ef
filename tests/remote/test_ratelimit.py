"""The shared rate limiter: the window is never exceeded, bursts, 429 pauses, recovery."""

from __future__ import annotations

import math
import random
import time

import anyio
import pytest

from batchvid.remote.ratelimit import RateLimiter, RateState, refill, token_wait, window_ready_at
from batchvid.sim.state import max_in_window


def drain(state: RateState, now: float) -> int:
    """Take every grant available at ``now``."""
    n = 0
    while state.try_grant(now):
        n += 1
    return n


# -- the arithmetic ---------------------------------------------------------------


def test_pure_functions() -> None:
    assert refill(0.0, 30.0, rate=60, window=60.0, burst=4) == 4.0  # capped
    assert refill(0.5, 0.25, rate=60, window=60.0, burst=4) == 0.75
    assert refill(1.0, -5.0, rate=60, window=60.0, burst=4) == 1.0  # time never runs back
    assert token_wait(1.0, rate=60, window=60.0) == 0.0
    assert token_wait(0.25, rate=60, window=60.0) == 0.75
    assert window_ready_at([1.0, 2.0], limit=3, window=10.0) == -math.inf
    assert window_ready_at([1.0, 2.0, 3.0], limit=2, window=10.0) == 12.0


@pytest.mark.parametrize("seed", range(40))
def test_the_sliding_window_is_never_exceeded(seed: int) -> None:
    """Random demand, penalties and rewards: never more than ``rate`` in any window."""
    rnd = random.Random(seed)
    rate = rnd.choice([1, 2, 5, 7.5, 20, 60, 100])
    window = rnd.choice([1.0, 60.0])
    state = RateState(rate, burst=rnd.randint(1, 12), window=window, now=0.0)
    now, grants, pauses = 0.0, list[float](), list[tuple[int, float]]()
    for _ in range(3000):
        now += rnd.choice([0.0, 0.0, rnd.expovariate(4 * rate / window), rnd.uniform(0, window)])
        roll = rnd.random()
        if roll < 0.01:
            retry_after = rnd.choice([None, 0.0, rnd.uniform(0, 2 * window)])
            state.penalise(now, retry_after)
            pauses.append((len(grants), state.paused_until))
        elif roll < 0.2:
            state.reward(now)
        else:
            grants.extend([now] * drain(state, now) if roll < 0.3 else [now] * state.try_grant(now))
    assert len(grants) > rate  # the limiter was really pushed
    assert max_in_window(grants, window) <= math.floor(rate)
    for granted_before, end in pauses:
        assert all(g >= end for g in grants[granted_before:]), "a grant during a 429 pause"


def test_a_burst_then_smooth_pacing() -> None:
    state = RateState(60, burst=5, window=60.0, now=0.0)
    assert drain(state, 0.0) == 5
    assert state.ready_at(0.0) == pytest.approx(1.0)  # one token per second
    assert drain(state, 0.5) == 0
    assert drain(state, 1.0) == 1
    assert drain(state, 3.0) == 2


def test_the_window_caps_the_first_minute_despite_the_burst() -> None:
    state = RateState(10, burst=5, window=60.0, now=0.0)
    grants = []
    t = 0.0
    while t < 120:
        grants += [t] * drain(state, t)
        t += 0.5
    assert max_in_window(grants, 60.0) == 10
    assert len([g for g in grants if g < 60]) == 10  # 5 burst + refills, cut at the cap


def test_sustained_demand_gets_the_configured_rate() -> None:
    state = RateState(30, burst=3, window=60.0, now=0.0)
    grants = []
    t = 0.0
    while t < 600:
        grants += [t] * drain(state, t)
        t += 0.25
    assert 0.95 * 300 <= len(grants) <= 300


def test_a_fractional_rate_still_makes_progress() -> None:
    state = RateState(0.5, window=60.0, now=0.0)
    assert (state.limit, state.burst) == (1, 1)
    assert drain(state, 0.0) == 1
    assert state.ready_at(0.0) == pytest.approx(120.0)
    assert drain(state, 120.0) == 1


def test_a_penalty_pauses_everything_and_halves_the_rate() -> None:
    state = RateState(60, burst=4, window=60.0, now=0.0)
    state.penalise(10.0, retry_after=7.0)
    assert state.ready_at(10.0) == 17.0
    assert drain(state, 16.99) == 0
    assert state.effective_rate == 30
    assert drain(state, 17.0) == 1  # one probe when the pause ends...
    assert state.ready_at(17.0) == pytest.approx(19.0)  # ...then the halved pace
    assert state.stats().penalties == 1


def test_429s_during_a_pause_extend_it_but_cut_the_rate_once() -> None:
    state = RateState(60, window=60.0, now=0.0)
    state.penalise(0.0, retry_after=5.0)
    state.penalise(1.0, retry_after=10.0)
    state.penalise(2.0, retry_after=1.0)
    assert (state.paused_until, state.effective_rate, state.penalties) == (11.0, 30, 3)
    state.penalise(12.0, retry_after=1.0)  # after the pause: a new congestion event
    assert state.effective_rate == 15


def test_the_rate_never_falls_below_its_floor() -> None:
    state = RateState(60, window=60.0, min_rate=10, now=0.0)
    for n in range(10):
        state.penalise(n * 100.0, retry_after=1.0)
    assert state.effective_rate == 10


def test_without_retry_after_the_default_backoff_applies() -> None:
    state = RateState(60, window=60.0, now=0.0)
    state.penalise(0.0, None)
    assert state.paused_until == 5.0  # window / 12
    custom = RateState(60, window=60.0, default_backoff=2.5, now=0.0)
    custom.penalise(1.0, None)
    assert custom.paused_until == 3.5


def test_recovery_is_gradual_and_capped() -> None:
    state = RateState(60, window=60.0, now=0.0)
    state.penalise(0.0, retry_after=0.0)
    assert state.effective_rate == 30
    state.reward(1.0)
    assert state.effective_rate == pytest.approx(31.2)  # one step: rate / 50
    for n in range(100):
        state.reward(2.0 + n)
    assert state.effective_rate == 60


def test_unlimited_grants_at_once_but_honours_a_pause() -> None:
    state = RateState(None, now=0.0)
    assert drain_some(state, 0.0, 1000) == 1000
    state.penalise(0.0, retry_after=3.0)
    assert not state.try_grant(2.9)
    assert state.try_grant(3.0)
    state.reward(4.0)
    assert state.stats().effective_rate is None


def drain_some(state: RateState, now: float, n: int) -> int:
    return sum(state.try_grant(now) for _ in range(n))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateState(0)
    with pytest.raises(ValueError):
        RateState(10, window=0)


# -- the async limiter ----------------------------------------------------------------


def granted_at(limiter: RateLimiter) -> float:
    """The time of the grant just returned (read before any other await)."""
    at = limiter.stats.last_grant_at
    assert at is not None
    return at


@pytest.mark.anyio
async def test_concurrent_waiters_never_exceed_the_window_in_real_time() -> None:
    limiter = RateLimiter(20, burst=5, window=0.5)
    grants: list[float] = []

    async def worker() -> None:
        for _ in range(2):
            await limiter.acquire()
            grants.append(granted_at(limiter))

    async with anyio.create_task_group() as tg:
        for _ in range(25):
            tg.start_soon(worker)
    assert len(grants) == 50 == limiter.stats.grants
    assert max_in_window(grants, 0.5) <= 20


@pytest.mark.anyio
async def test_waiters_are_served_in_arrival_order() -> None:
    limiter = RateLimiter(10, burst=1, window=0.2)
    order: list[int] = []

    async def worker(n: int) -> None:
        await limiter.acquire()
        order.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(worker, n)
            await anyio.sleep(0)  # each one queues before the next starts
    assert order == list(range(8))


@pytest.mark.anyio
async def test_a_cancelled_waiter_consumes_no_grant() -> None:
    limiter = RateLimiter(1, burst=1, window=0.3)
    await limiter.acquire()
    first = granted_at(limiter)
    with anyio.move_on_after(0.05) as scope:
        await limiter.acquire()
    assert scope.cancelled_caught
    assert limiter.stats.grants == 1
    assert limiter.stats.waiting == 0
    await limiter.acquire()  # the queue is not left locked
    assert granted_at(limiter) - first >= 0.3
    assert limiter.stats.grants == 2


@pytest.mark.anyio
async def test_a_penalty_makes_everyone_wait_at_least_retry_after() -> None:
    limiter = RateLimiter(100, burst=10, window=1.0)
    await limiter.acquire()
    limiter.penalise(0.2)
    penalised_at = time.monotonic()
    grants: list[float] = []

    async def worker() -> None:
        await limiter.acquire()
        grants.append(granted_at(limiter))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(worker)
    assert min(grants) >= penalised_at + 0.2 - 1e-3
    assert limiter.stats.penalties == 1
    assert limiter.stats.effective_rate == 50
    limiter.reward()
    assert limiter.stats.effective_rate == pytest.approx(52)


@pytest.mark.anyio
async def test_unlimited_acquires_at_once() -> None:
    limiter = RateLimiter(None)
    with anyio.fail_after(5):
        for _ in range(500):
            await limiter.acquire()
    assert limiter.stats.grants == 500
    assert limiter.stats.configured_rate is None


def test_a_huge_retry_after_pauses_at_most_fifteen_windows() -> None:
    """Retry-After: 86400 (a skewed clock, say) must not stop every request for a day."""
    state = RateState(60, window=60.0, now=0.0)
    state.penalise(10.0, retry_after=86_400.0)
    assert state.ready_at(10.0) == 10.0 + 15 * 60.0
