"""The run's smaller policies, on a fake clock: slots, the budget, back-offs."""

from __future__ import annotations

import pytest

from batchvid.manifest import Retries
from batchvid.remote.protocol import RetryPolicy
from batchvid.run.policy import (
    MAX_SUBMIT_PAUSE_S,
    AttemptPolicy,
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
    assert retries.failed(7, now=0.0, draw=0.0) == 4.0  # the first: 4 s
    assert retries.failed(7, now=4.0, draw=0.5) == pytest.approx(4.0 + 8.0 + 0.5)
    assert retries.failed(7, now=20.0, draw=0.0) is None  # the third: spent
    assert retries.failed(8, now=20.0, draw=0.0) == 24.0  # each job its own tries
    half = DownloadRetries(attempts=5, scale=0.5)
    assert [half.failed(1, now=0.0, draw=0.0) for _ in range(5)] == [2.0, 4.0, 8.0, 16.0, None]


def test_one_backoff_formula() -> None:
    policy = RetryPolicy(wait_initial=0.5, wait_max=30.0, wait_jitter=1.0)
    assert [policy.wait(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert policy.wait(3, draw=0.5) == 2.5
    assert policy.wait(100) == 30.0
    assert policy.scaled(0.1).wait(2) == pytest.approx(0.1)


def test_new_attempts_follow_the_rules_per_kind_and_back_off_together() -> None:
    policy = AttemptPolicy(Retries(error=2, failed=0, vanished=1, stalled=1))
    first = policy.next_attempt("error", {}, now=100.0, draw=0.0)
    assert first is not None and (first.kind, first.retry_at, first.rule) == (
        "error",
        130.0,
        "retry.error = 2",
    )
    second = policy.next_attempt("error", {"error": 1}, now=100.0, draw=1.0)
    assert second is not None and second.retry_at == 100.0 + 60.0 + 15.0  # 60 s, full jitter
    assert policy.next_attempt("error", {"error": 2}, now=100.0, draw=0.0) is None  # spent
    assert policy.next_attempt("failed", {}, now=100.0, draw=0.0) is None  # never by default
    # The back-off counts every automatic retry of the job, whatever the kind.
    third = policy.next_attempt("stalled", {"error": 2, "vanished": 1}, now=0.0, draw=0.0)
    assert third is not None and third.retry_at == 240.0  # the 4th: 30 s x 2^3
    assert policy.next_attempt("vanished", {"error": 9}, now=0.0, draw=0.0) is not None
    capped = policy.next_attempt("stalled", {"error": 9}, now=0.0, draw=0.0)
    assert capped is not None and capped.retry_at == 600.0  # at most 10 minutes


def test_a_run_that_submits_nothing_makes_no_new_attempt_and_waits_scale() -> None:
    assert AttemptPolicy(enabled=False).next_attempt("error", {}, 0.0, 0.0) is None
    fast = AttemptPolicy(scale=0.01)
    retry = fast.next_attempt("error", {}, now=0.0, draw=0.0)
    assert retry is not None and retry.retry_at == pytest.approx(0.3)
    assert fast.watch_every == pytest.approx(3.0)
    assert not fast.watched_enough(71.9) and fast.watched_enough(72.0)
