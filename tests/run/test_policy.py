"""The run's smaller policies, on a fake clock: slots, the budget, back-offs."""

from __future__ import annotations

import pytest

from batchvid.remote.protocol import RetryPolicy
from batchvid.run.policy import (
    MAX_SUBMIT_PAUSE_S,
    Budget,
    DownloadRetries,
    SubmitPause,
    poll_share,
)


def test_polls_get_a_quarter_of_the_slots_first() -> None:
    assert poll_share(8, 0) == 2
    assert poll_share(8, 2) == 0  # already polling: the share is used
    assert poll_share(3, 0) == 1  # at least one
    assert poll_share(1, 0) == 0  # at concurrency 1, submissions come first


def test_the_budget_claims_before_the_ledger_counts() -> None:
    budget = Budget(limit=1.0)
    assert budget.room(max_active=4, active=1) == 3
    assert budget.claim(0.4, committed=0.2) and budget.claim(0.3, committed=0.2)
    assert budget.room(max_active=4, active=1) == 1
    assert not budget.claim(0.2, committed=0.2)  # 0.2 + 0.7 + 0.2 > 1.0
    assert budget.spent
    budget.release(0.4)  # sent: the ledger counts it now
    assert (budget.claims, budget.claimed_usd) == (1, pytest.approx(0.3))


def test_no_budget_never_refuses() -> None:
    budget = Budget()
    assert all(budget.claim(100.0, committed=1e9) for _ in range(5)) and not budget.spent


def test_the_submit_pause_grows_with_each_setback_and_resets_on_an_answer() -> None:
    pause = SubmitPause()
    assert not pause.paused(0.0)
    assert pause.setback(now=0.0) == 2.0
    assert pause.setback(now=2.0) == 6.0  # 4 s after the second
    assert pause.setback(now=6.0) == 14.0  # 8 s after the third
    assert pause.paused(10.0) and not pause.paused(14.0)
    for n in range(20):
        pause.setback(now=100.0 + n)
    assert pause.until == pytest.approx(119.0 + 300.0)  # capped at 5 minutes
    pause.reset()
    assert pause.setback(now=1000.0) == 1002.0  # back to the first step


def test_a_servers_retry_after_is_a_floor_up_to_an_hour() -> None:
    pause = SubmitPause()
    assert pause.setback(now=0.0, retry_after=30.0) == 30.0
    assert pause.setback(now=0.0, retry_after=86_400.0) == MAX_SUBMIT_PAUSE_S
    scaled = SubmitPause(scale=0.01)
    assert scaled.setback(now=0.0, retry_after=None) == pytest.approx(0.02)


def test_download_tries_back_off_then_are_spent_for_the_run() -> None:
    retries = DownloadRetries(attempts=3)
    assert not retries.spent(7)
    assert retries.failed(7, now=0.0, draw=0.0) == 4.0  # the first: 4 s
    assert retries.failed(7, now=4.0, draw=0.5) == pytest.approx(4.0 + 8.0 + 0.5)
    assert not retries.spent(7)
    assert retries.failed(7, now=20.0, draw=0.0) is None  # the third: spent
    assert retries.spent(7) and not retries.spent(8)
    assert retries.spent_count(excluding=set()) == 1 and retries.spent_count(excluding={7}) == 0
    half = DownloadRetries(attempts=5, scale=0.5)
    assert [half.failed(1, now=0.0, draw=0.0) for _ in range(5)] == [2.0, 4.0, 8.0, 16.0, None]


def test_one_backoff_formula() -> None:
    policy = RetryPolicy(wait_initial=0.5, wait_max=30.0, wait_jitter=1.0)
    assert [policy.wait(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert policy.wait(3, draw=0.5) == 2.5
    assert policy.wait(100) == 30.0
    assert policy.scaled(0.1).wait(2) == pytest.approx(0.1)
