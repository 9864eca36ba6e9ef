"""The poll schedule and the stall rule, driven by a fake clock through many generations."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import pytest

from batchvid.run.poll_policy import PollPolicy, RenderBook, poll_time
from batchvid.run.render_times import LogNormal, RenderSample, observe

KIND = ("doubao-seedance-2-0", 5, "720p")
FLOOR = 10.0
Stamps = Literal["seconds", "absent", "created"]


@dataclass
class Task:
    created: float
    render: float
    polls: list[float] = field(default_factory=list)  # elapsed seconds since creation
    first_delay: float = 0.0

    @property
    def seen_after(self) -> float:
        return self.polls[-1] - self.render


def run_generations(
    book: RenderBook,
    render: Callable[[int], float],
    *,
    generations: int,
    active: int = 16,
    stamps: Stamps = "seconds",
    curve: float = 0.75,
) -> list[Task]:
    """``active`` slots, each running one task after another until ``generations`` each.

    A task is created 0.3 s after the previous one in its slot was seen done;
    it reports progress ``100 * share ** curve`` after a queued spell (0).  Every
    poll goes through the book, and every spacing is checked against the floor.
    """
    slots = [0.0] * active
    tasks: list[Task] = []
    for n in range(active * generations):
        slot = min(range(active), key=slots.__getitem__)
        task = Task(slots[slot] + 0.3, render(n))
        task.first_delay = at = book.first_poll_delay(KIND)
        last_running: tuple[float, int | None] | None = None
        while True:
            assert at - (task.polls[-1] if task.polls else 0.0) >= book.policy.floor - 1e-9
            task.polls.append(at)
            if at >= task.render:
                break
            share = max(0.0, (at - 0.1 * task.render) / (0.9 * task.render))
            progress = 0 if share == 0 else max(1, min(99, int(100 * share**curve)))
            last_running = (at, progress)
            at += book.next_poll_delay(KIND, at, progress)
        wall = 1_800_000_000.0 + task.created
        created_at = math.floor(wall)
        completed_at = {
            "seconds": math.floor(wall + task.render),
            "absent": None,
            "created": created_at,
        }[stamps]
        sample = observe(
            sent_at=task.created - 0.05,
            answered_at=task.created,
            seen_done_at=task.created + at,
            last_running_at=None if last_running is None else task.created + last_running[0],
            server_created_at=created_at,
            server_completed_at=completed_at,
        )
        assert sample is not None
        book.learn(KIND, sample, created_at=task.created, last_running=last_running)
        slots[slot] = task.created + at
        tasks.append(task)
    return tasks


def generation(tasks: list[Task], g: int, active: int = 16) -> list[Task]:
    return tasks[g * active : (g + 1) * active]


def efficiency(tasks: list[Task]) -> float:
    return sum(t.render for t in tasks) / sum(t.polls[-1] for t in tasks)


def test_constant_renders_the_first_poll_converges_and_stays_near_the_truth() -> None:
    book = RenderBook()
    tasks = run_generations(book, lambda n: 90.0, generations=50)
    for g in range(3, 50):
        delays = [t.first_delay for t in generation(tasks, g)]
        assert all(90 <= d <= 99 for d in delays), (g, delays)  # within 10 % of the truth
    assert statistics.fmean(len(t.polls) for t in tasks[-160:]) == 1.0
    assert book.model(KIND).fit.median == pytest.approx(90, rel=0.02)


def test_no_drift_over_a_long_batch_with_spread() -> None:
    """The old estimate learned its own delay and grew each generation; this one does not."""
    rng = random.Random(4)
    tasks = run_generations(
        RenderBook(), lambda n: 90 * math.exp(rng.gauss(0, 0.12)), generations=40
    )
    first, last = tasks[16 * 3 : 16 * 11], tasks[-16 * 8 :]
    assert efficiency(last) >= 0.88
    assert efficiency(last) >= efficiency(first) - 0.03
    assert statistics.median(t.first_delay for t in last) == pytest.approx(
        statistics.median(t.first_delay for t in first), rel=0.06
    )
    assert statistics.fmean(len(t.polls) for t in last) <= 1.6


@pytest.mark.parametrize("stamps", ["seconds", "absent", "created"])
def test_renders_that_halve_then_double_are_followed_within_a_few_generations(
    stamps: Stamps,
) -> None:
    book = RenderBook()
    medians: list[float] = []

    def render(n: int) -> float:
        g = n // 16
        if n % 16 == 0:
            medians.append(book.model(KIND).fit.median)
        return 90.0 if g < 10 or g >= 20 else 45.0

    tasks = run_generations(book, render, generations=30, stamps=stamps)
    # Three generations after each change the estimate is within 15 % of the new truth...
    assert medians[13] == pytest.approx(45, rel=0.15), medians
    assert medians[23] == pytest.approx(90, rel=0.15), medians
    # ... and the polls that find the renders follow them: little wait, few polls.
    for g in (14, 24):
        group = tasks[16 * g : 16 * (g + 3)]
        assert efficiency(group) >= 0.8, (g, efficiency(group))
        assert statistics.fmean(len(t.polls) for t in group) <= 2.5


def test_without_server_stamps_some_tasks_are_probed_early() -> None:
    book = RenderBook()
    tasks = run_generations(book, lambda n: 90.0, generations=8, stamps="absent")
    early = [t for t in tasks[16:] if t.first_delay < 0.8 * 90]
    assert len(early) == pytest.approx(len(tasks[16:]) / book.policy.probe_every, abs=2)
    stamped = run_generations(RenderBook(), lambda n: 90.0, generations=8)
    assert not [t for t in stamped[16:] if t.first_delay < 0.8 * 90]


def test_with_nothing_learned_the_first_polls_follow_the_docs_cadence() -> None:
    book = RenderBook()
    assert book.first_poll_delay(KIND) == FLOOR
    # Renders far shorter than the docs' 1-3 minutes are found at once...
    tasks = run_generations(book, lambda n: 12.0, generations=3)
    assert all(t.seen_after <= FLOOR for t in tasks)
    # ... and from the second generation on, at the first poll, within a second or so
    # (whole-second stamps on a 12 s render: it ended within [11, 13]).
    assert all(len(t.polls) == 1 and t.seen_after <= 1.5 for t in tasks[16:])


def test_a_new_kind_leans_on_what_other_kinds_taught() -> None:
    book = RenderBook()
    run_generations(book, lambda n: 20.0, generations=2)
    other = ("doubao-seedance-1-0-pro", 5, "480p")
    delay = book.first_poll_delay(other)
    assert FLOOR <= delay < 20  # not the docs' guess of a minute or more


def test_the_schedule_scales_with_a_simulated_clock() -> None:
    fast = RenderBook(PollPolicy(scale=0.01))
    tasks = run_generations(fast, lambda n: 0.9, generations=10)
    assert fast.policy.floor == pytest.approx(0.1)
    # Renders under a second: whole-second stamps say little, our own looks the rest.
    first = statistics.median(t.first_delay for t in tasks[48:])
    assert 0.9 <= first <= 0.99, first


def test_poll_time_aims_at_the_distribution_not_the_median_times_a_margin() -> None:
    def first(sigma: float) -> float:
        return poll_time(
            LogNormal(math.log(90), sigma), running_at=0, earliest=10, latest=300, miss_price=23
        )

    assert 90 < first(0.02) < 95  # tight: just after the renders end
    assert first(0.3) < 90  # wide: earlier, where most renders end
    # A task long past the distribution is asked at a quarter of its age, within bounds.
    past = LogNormal(math.log(90), 0.05)
    assert poll_time(past, running_at=200, earliest=210, latest=500, miss_price=23) == 250
    assert poll_time(past, running_at=200, earliest=210, latest=230, miss_price=23) == 230


def test_retry_after_a_bad_answer_keeps_the_floor_and_honours_retry_after() -> None:
    policy = PollPolicy()
    assert policy.retry_delay(None, 0.0) == FLOOR
    assert policy.retry_delay(None, 0.999) == pytest.approx(1.5 * FLOOR, rel=1e-3)
    assert policy.retry_delay(120.0, 0.5) == 120.0


def stalled_after(book: RenderBook, watched: float, *, created_at: float = 0.0) -> str | None:
    return book.stall_reason(KIND, watched_s=watched, created_at=created_at)


def test_a_learned_ceiling_lets_a_hung_task_go_once_later_tasks_finish() -> None:
    book = RenderBook()
    assert stalled_after(book, 3600) is None  # no history: the 2 h default holds
    assert stalled_after(book, 7201) is not None
    for n in range(20):
        book.learn(KIND, RenderSample(89, 91, stamped=True), created_at=float(n))
    ceiling = book.policy.ceiling(book.model(KIND))
    assert ceiling is not None and 180 <= ceiling <= 600
    # Later tasks of its kind finished: a task running past the ceiling is let go, with why.
    reason = stalled_after(book, ceiling + 1, created_at=5.0)
    assert reason is not None and "99th percentile" in reason and "doubao-seedance-2-0" in reason
    assert stalled_after(book, ceiling - 1, created_at=5.0) is None
    # Nothing created after it has finished: the service is slow for everyone; wait.
    assert stalled_after(book, ceiling + 1, created_at=100.0) is None


def test_the_users_max_wait_is_applied_as_given() -> None:
    book = RenderBook(PollPolicy(max_wait_s=600, fixed_max_wait=True))
    for n in range(20):
        book.learn(KIND, RenderSample(89, 91, stamped=True), created_at=float(n))
    assert stalled_after(book, 599, created_at=5.0) is None
    reason = stalled_after(book, 601)
    assert reason is not None and "max_wait (10 min)" in reason
