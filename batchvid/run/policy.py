"""The run's smaller policies, as plain objects: slots, the budget, back-offs.

No I/O and no clock of their own: every method takes the time as an argument,
so tests drive them with a fake clock.  The dispatcher asks them and does the
waiting; when to poll a task is :mod:`batchvid.run.poll_policy`.

- :func:`poll_share`: the slots polls get before submissions;
- :class:`Budget`: jobs picked to submit but not sent yet, and the budget they claim;
- :class:`SubmitPause`: creates that keep failing before reaching the API
  back off every submission, longer with each setback in a row;
- :class:`DownloadRetries`: a job's downloads in this run, their next try and
  when they are spent;
- :class:`FaultPause`: a fault of the whole run (a full disk, a locked ledger);
- :class:`AttemptPolicy`: the manifest's ``retry:``: whether a job whose
  attempt ended gets a new one, and when; how an extra take is watched.

Back-offs follow one formula, :meth:`batchvid.remote.protocol.RetryPolicy.wait`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ..ledger.rows import AutoRetry
from ..manifest.model import Retries
from ..remote.protocol import RetryPolicy

__all__ = [
    "ATTEMPT_BACKOFF",
    "DISK_FULL_PATIENCE_S",
    "DOWNLOAD_BACKOFF",
    "FAULT_BACKOFF",
    "LEDGER_BUSY_PATIENCE_S",
    "MAX_SUBMIT_PAUSE_S",
    "STORE_DOWN_PATIENCE_S",
    "SUBMIT_BACKOFF",
    "WATCH_EVERY_S",
    "WATCH_FOR_S",
    "AttemptPolicy",
    "Budget",
    "DownloadRetries",
    "FaultPause",
    "SubmitPause",
    "poll_share",
]

#: Submissions after a setback: 2 s, 4 s, 8 s ... up to 5 minutes.
SUBMIT_BACKOFF: Final = RetryPolicy(wait_initial=2.0, wait_max=300.0, wait_jitter=0.0)
#: Longest a server's Retry-After holds back submissions (a longer one is more likely a
#: skewed clock than a real request; the next 429 says so again if it is real).
MAX_SUBMIT_PAUSE_S: Final = 3600.0
#: While a fault lasts (a full disk, a ledger locked by another program), work
#: waits 5 s, 10 s ... up to a minute between looks.
FAULT_BACKOFF: Final = RetryPolicy(wait_initial=5.0, wait_max=60.0, wait_jitter=0.0)
#: How long the disk holding the videos may stay full before the run stops.
DISK_FULL_PATIENCE_S: Final = 600.0
#: How long another program may hold the ledger's write lock before the run stops.
LEDGER_BUSY_PATIENCE_S: Final = 300.0
#: How long the videos' store may stay out of reach before the run stops (downloads
#: wait meanwhile; the videos are safe upstream, their signed URLs refreshed as needed).
STORE_DOWN_PATIENCE_S: Final = 600.0
#: An automatic new attempt waits 30 s, 60 s ... up to 10 minutes (by the job's
#: automatic retries so far), +0-15 s: a broken upstream is not hammered.
ATTEMPT_BACKOFF: Final = RetryPolicy(wait_initial=30.0, wait_max=600.0, wait_jitter=15.0)
#: A stalled task split off as an extra take is polled this often ...
WATCH_EVERY_S: Final = 300.0
#: ... for this long after the split; then it is stalled again (``retry --stalled``
#: watches it once more).
WATCH_FOR_S: Final = 2 * 3600.0
#: A job's next download after a failed one: 4 s, 8 s ... up to 2 minutes, +-1 s.
DOWNLOAD_BACKOFF: Final = RetryPolicy(wait_initial=4.0, wait_max=120.0, wait_jitter=1.0)


def poll_share(concurrency: int, polling: int) -> int:
    """Free slots offered to polls before submissions: a quarter of ``concurrency``.

    At least one; none at concurrency 1, where submissions simply come first
    (up to ``max_active``).  Slots already polling (``polling``) count towards it.
    """
    if concurrency < 2:
        return 0
    return max(0, max(1, concurrency // 4) - polling)


@dataclass(slots=True)
class Budget:
    """Jobs picked for submission whose create has not left yet, and what they may cost.

    The ledger counts every attempt that may bill once its intent is recorded
    (``committed``); a claim covers the moment before that.  ``limit`` is the
    manifest's ``budget_usd`` (``None``: no budget).  Once a claim is refused,
    the budget is spent for the rest of the run.
    """

    limit: float | None = None
    claims: int = 0
    claimed_usd: float = 0.0
    spent: bool = False

    def room(self, max_active: int, active: int) -> int:
        """How many more jobs may be picked: the active-task cap less live tasks and claims."""
        return max_active - active - self.claims

    def claim(self, cost: float | None, committed: float) -> bool:
        """Pick one job costing ``cost`` when ``committed`` USD are already in the ledger."""
        cost = cost or 0.0
        if self.limit is not None and committed + self.claimed_usd + cost > self.limit + 1e-9:
            self.spent = True
            return False
        self.claims += 1
        self.claimed_usd += cost
        return True

    def reached(self, committed: float) -> str:
        """Why a claim was refused, for the run's failures."""
        total = committed + self.claimed_usd
        return (
            f"budget ${self.limit or 0:,.2f} reached (${total:,.2f} committed): no more submissions"
        )

    def release(self, cost: float | None) -> None:
        """A picked job was sent (the ledger counts it now) or is pending again."""
        self.claims -= 1
        self.claimed_usd -= cost or 0.0


@dataclass(slots=True)
class SubmitPause:
    """Creates that keep failing before reaching the API hold back every submission.

    Each setback in a row doubles the pause (:data:`SUBMIT_BACKOFF`); a server's
    ``Retry-After`` is a floor (up to :data:`MAX_SUBMIT_PAUSE_S`).  A create
    that gets an answer resets it.
    """

    scale: float = 1.0
    setbacks: int = 0
    until: float = 0.0

    def setback(self, now: float, retry_after: float | None = None) -> float:
        """Record a setback at ``now``; the time submissions may start again."""
        self.setbacks += 1
        pause = SUBMIT_BACKOFF.scaled(self.scale).wait(self.setbacks)
        if retry_after is not None:
            pause = max(pause, min(retry_after, MAX_SUBMIT_PAUSE_S * self.scale))
        self.until = max(self.until, now + pause)
        return self.until

    def reset(self) -> None:
        self.setbacks = 0

    def paused(self, now: float) -> bool:
        return now < self.until


@dataclass(slots=True)
class DownloadRetries:
    """Each job's download tries in this run: when the next may start, and when they are spent.

    A job gets ``attempts`` tries per run (each with its own transfer retries,
    URL refresh and ``/content`` fallback inside); after that it waits, still
    ``completed``, for the next run.  The times go to the ledger
    (``next_download_at``), which the download queue is read through.
    """

    attempts: int = 5
    scale: float = 1.0
    tries: dict[int, int] = field(default_factory=dict)

    def failed(self, job_id: int, now: float, draw: float) -> float | None:
        """Record a failed try; when the next may start (``None``: spent for this run)."""
        tries = self.tries.get(job_id, 0) + 1
        self.tries[job_id] = tries
        if tries >= self.attempts:
            return None
        return now + DOWNLOAD_BACKOFF.scaled(self.scale).wait(tries, draw)


@dataclass(slots=True)
class FaultPause:
    """A fault of the whole run (not of one job): work waits, then looks again.

    Each hit in a row waits longer (:data:`FAULT_BACKOFF`); a success clears it.
    A fault that has lasted ``patience_s`` (scaled) is past waiting out: the
    run stops, nothing marked failed.
    """

    patience_s: float
    scale: float = 1.0
    since: float | None = None
    hits: int = 0
    until: float = 0.0

    def hit(self, now: float) -> float:
        """Record the fault at ``now``; when to look again."""
        if self.since is None:
            self.since = now
        self.hits += 1
        self.until = now + FAULT_BACKOFF.scaled(self.scale).wait(self.hits)
        return self.until

    def clear(self) -> None:
        self.since, self.hits, self.until = None, 0, 0.0

    def paused(self, now: float) -> bool:
        return now < self.until

    def outlasted(self, now: float) -> bool:
        """Whether the fault has lasted past the run's patience."""
        return self.since is not None and now - self.since >= self.patience_s * self.scale


@dataclass(frozen=True, slots=True)
class AttemptPolicy:
    """The manifest's ``retry:`` at work: new attempts for ended ones, and extra takes.

    ``rules``: how many automatic new attempts a job may get per kind of
    outcome (``in_doubt`` is never one: resubmitting a create whose answer was
    lost stays the user's decision).  ``enabled``: False for a run that submits
    nothing.  An extra take (a stalled attempt split off its job) is polled
    every :data:`WATCH_EVERY_S`, for :data:`WATCH_FOR_S`.
    """

    rules: Retries = field(default_factory=Retries)
    scale: float = 1.0
    enabled: bool = True

    def next_attempt(
        self, kind: str, made: Mapping[str, int], now: float, draw: float
    ) -> AutoRetry | None:
        """A new attempt after an outcome of ``kind`` (``None``: not allowed).

        ``made``: the job's automatic retries so far, per kind; the back-off
        grows with all of them (:data:`ATTEMPT_BACKOFF`), ``draw`` its jitter.
        """
        allowed = self.rules.allowed(kind)
        if not self.enabled or made.get(kind, 0) >= allowed:
            return None
        wait = ATTEMPT_BACKOFF.scaled(self.scale).wait(sum(made.values()) + 1, draw)
        return AutoRetry(kind, now + wait, f"retry.{kind} = {allowed}")

    @property
    def watch_every(self) -> float:
        return WATCH_EVERY_S * self.scale

    def watched_enough(self, watched_s: float) -> bool:
        """Whether an extra take watched for ``watched_s`` is given up on for now."""
        return watched_s >= WATCH_FOR_S * self.scale
