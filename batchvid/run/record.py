"""What each worker's outcome means for its job: ledger transitions, and the run's policies.

The dispatcher hands every outcome here as soon as its worker returns, with no
other ledger step in between (a create's task id is recorded first).  The
:class:`Recorder` writes the ledger's named transitions, teaches the render
book, and keeps the run's :class:`Tally`: failures to show, jobs set aside,
hints for the dispatcher's next look, and whether the whole run must stop.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..errors import ApiError, AuthError, LedgerError, RetryableError, ServiceRefused
from ..ledger.port import RunLedger
from ..ledger.rows import AutoRetry, JobRow
from ..ledger.schema import NEVER
from ..ledger.submits import Admission
from ..remote.protocol import Task, TaskStatus, failure_reason
from ..remote.urls import url_expiry
from ..text import clip, span
from ..video import mismatch
from .lease import Lease
from .options import RunOptions
from .policy import (
    DISK_FULL_PATIENCE_S,
    LEDGER_BUSY_PATIENCE_S,
    STORE_DOWN_PATIENCE_S,
    AttemptPolicy,
    Budget,
    DownloadRetries,
    FaultPause,
    SubmitPause,
)
from .poll_policy import Combo, RenderBook
from .render_times import observe
from .workers import DownloadOutcome, PollOutcome

__all__ = ["BAD_FILES", "Faults", "Recorder", "Tally", "combo_of"]

#: Files of one job that may arrive whole but not decode before the job fails.
BAD_FILES: Final = 2


def combo_of(job: JobRow) -> Combo:
    """The kind of render a job is: model, seconds, resolution."""
    return (job.model, job.seconds, job.resolution)


@dataclass(slots=True)
class Tally:
    """What this run has seen that its dispatcher acts on, and its summary shows."""

    failures: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    finished: int = 0
    #: Jobs whose work failed unexpectedly: left alone until the next run.
    quarantined: set[int] = field(default_factory=set)
    #: Why every job must stop (401, or the service refusing creates).
    fatal: AuthError | ServiceRefused | None = None
    # Hints that spare the dispatcher queries that cannot find anything new:
    # set when work of that kind may have appeared.
    look_for_downloads: bool = True
    look_for_pending: bool = True
    #: Why the run stopped before its end (a fault past waiting out); None: it did not.
    halt: str | None = None

    def note(self, job: JobRow, message: str) -> None:
        label = job.prompt_id or clip(job.prompt, 30)
        self.failures.append(f"#{job.idx} {label}: {clip(message, 160)}")

    def stop_everything(self, error: AuthError | ServiceRefused) -> None:
        self.fatal = self.fatal or error


@dataclass(slots=True)
class Faults:
    """Faults of the whole run, not of one job: each pauses work, then stops the run if it lasts."""

    #: The disk holding the videos is full: downloads and new creates wait.
    disk: FaultPause = field(default_factory=lambda: FaultPause(DISK_FULL_PATIENCE_S))
    #: Another program holds the ledger's write lock: all new work waits.
    ledger_busy: FaultPause = field(default_factory=lambda: FaultPause(LEDGER_BUSY_PATIENCE_S))
    #: The store the videos go to does not answer: downloads and new creates wait.
    store: FaultPause = field(default_factory=lambda: FaultPause(STORE_DOWN_PATIENCE_S))

    @classmethod
    def scaled(cls, scale: float) -> Faults:
        return cls(
            FaultPause(DISK_FULL_PATIENCE_S, scale=scale),
            FaultPause(LEDGER_BUSY_PATIENCE_S, scale=scale),
            FaultPause(STORE_DOWN_PATIENCE_S, scale=scale),
        )

    def downloads_paused(self, now: float) -> bool:
        """Whether downloads wait: the disk (or spool) is full, or the store is down."""
        return self.disk.paused(now) or self.store.paused(now)

    def store_down(self, tally: Tally, now: float, reason: str) -> None:
        """The store did not answer: downloads wait; the run stops if it lasts."""
        _waits(
            self.store,
            tally,
            now,
            f"the store the videos go to does not answer ({reason}): downloads and new "
            "submissions wait",
            lambda lasted: (
                f"the store the videos go to has not answered for {lasted} "
                f"({reason}): stopped, nothing marked failed; run again once it answers"
            ),
        )

    def disk_full(self, tally: Tally, now: float, reason: str) -> None:
        """No space for a video: downloads and new creates wait; the run stops if it lasts."""
        _waits(
            self.disk,
            tally,
            now,
            f"the disk holding the videos is full ({reason}): downloads and new submissions wait",
            lambda lasted: (
                f"the disk holding the videos has been full for {lasted} ({reason}): "
                "stopped, nothing marked failed; free some space and run again"
            ),
        )

    def ledger_was_busy(self, tally: Tally, now: float, error: LedgerError) -> None:
        """Another program held the ledger's lock: all new work waits, then tries again."""
        busy = self.ledger_busy
        first = busy.since is None
        busy.hit(now)
        if busy.outlasted(now):
            tally.halt = f"the ledger stayed locked by another program ({error}): stopped"
        elif first:
            tally.failures.append(f"{error}; waiting for it")


def _waits(
    pause: FaultPause, tally: Tally, now: float, first: str, halt: Callable[[str], str]
) -> None:
    """One more hit of a fault that makes work wait: ``first`` is said once (with when it
    looks again); once the fault has outlasted its patience the run stops with
    ``halt(how long it lasted)``."""
    new = pause.since is None
    until = pause.hit(now)
    if pause.outlasted(now):
        tally.halt = halt(span((now - (pause.since or now)) / pause.scale))
    elif new:
        tally.failures.append(f"{first}, looking again in {span((until - now) / pause.scale)}")


@dataclass(slots=True)
class Recorder:
    """Turns outcomes into ledger transitions and policy updates (see the module docs)."""

    ledger: RunLedger
    renders: RenderBook
    budget: Budget
    pause: SubmitPause
    downloads: DownloadRetries
    clock: Callable[[], float]
    rng: random.Random
    #: False: the run stops at ``completed`` (a job counts as finished there).
    download: bool = True
    tally: Tally = field(default_factory=Tally)
    faults: Faults = field(default_factory=lambda: Faults())
    attempts: AttemptPolicy = field(default_factory=AttemptPolicy)
    #: On a shared ledger: this worker's lease (creates leave only while it surely
    #: holds), and the limits every create is admitted against, across all workers.
    lease: Lease | None = None
    admission: Admission | None = None

    # -- creates ------------------------------------------------------------

    @classmethod
    def for_run(
        cls,
        ledger: RunLedger,
        renders: RenderBook,
        options: RunOptions,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> Recorder:
        """A recorder with the policies ``options`` ask for, on the run's clock."""
        scale = options.time_scale
        return cls(
            ledger,
            renders,
            Budget(options.budget_usd),
            SubmitPause(scale=scale),
            DownloadRetries(options.download_attempts, scale=scale),
            clock,
            rng,
            download=options.download,
            faults=Faults.scaled(scale),
            attempts=options.attempt_policy(),
        )

    # -- polls --------------------------------------------------------------

    async def polled(self, job: JobRow, outcome: PollOutcome, asked_at: float) -> None:
        """Record a poll's outcome (``asked_at``: when the request was made)."""
        now = self.clock()
        task = outcome.task
        if outcome.kind == "vanished":
            await self._ended(job, "vanished", "task_not_exist", outcome.reason, keep=True)
        elif task is None:
            await self._no_answer(job, outcome.error or ApiError(outcome.reason), asked_at)
        elif task.status is TaskStatus.COMPLETED:
            await self._completed(job, task, now)
        elif task.status in (TaskStatus.FAILED, TaskStatus.ERROR):
            code, reason = failure_reason(task)
            kind = "failed" if task.status is TaskStatus.FAILED else "error"
            await self._ended(job, kind, code, reason, remote_status=task.raw_status)
        elif (stall := self._stall_reason(job, now)) is not None:
            await self._stalled(job, stall, stall)
        else:
            if job.extra_of is not None:  # an earlier attempt still watched: sparingly
                delay = self.attempts.watch_every
            else:
                born = job.answered_at if job.answered_at is not None else job.watch_started_at
                elapsed = now - (born if born is not None else now)
                delay = self.renders.next_poll_delay(combo_of(job), elapsed, task.progress)
            await self.ledger.call(self.ledger.moves.record_poll,
                job.id, task.raw_status or None, task.progress, now + delay,
                seen=task.status.job_state,
            )  # fmt: skip

    async def _no_answer(self, job: JobRow, error: Exception, asked_at: float) -> None:
        # The task may well be fine: ask again later; the stall rule still applies.
        stall = self._stall_reason(job, asked_at)
        if stall is not None:
            await self._stalled(
                job, f"{stall}; last answer: {error}", f"no usable answer ({error})"
            )
            return
        retry_after = error.retry_after if isinstance(error, RetryableError) else None
        later = self.renders.policy.retry_delay(retry_after, self.rng.random())
        await self.ledger.call(
            self.ledger.moves.record_poll,
            job.id,
            job.remote_status,
            job.progress,
            asked_at + later,
            seen_running=False,
        )
        if not isinstance(error, RetryableError):
            self.tally.note(job, f"poll answered {error}; will ask again")

    async def _ended(
        self,
        job: JobRow,
        kind: str,
        code: str | None,
        reason: str,
        *,
        remote_status: str | None = None,
        keep: bool = False,
    ) -> None:
        """An attempt ended without a video (``kind``: error, failed, vanished): the job
        is failed, or pending again for a new attempt when the retry policy allows one.

        ``keep``: a new attempt does not drop this one's task (upstream may find a
        vanished task again): it is split off and watched, its video an extra take.
        """
        retry = self._next_attempt(job, kind)
        watch_at = self.clock() + self.attempts.watch_every if keep and retry else None
        await self.ledger.call(
            self.ledger.moves.record_failed,
            job.id,
            code,
            reason,
            remote_status=remote_status,
            retry=retry,
            watch_at=watch_at,
        )
        kept = "; the task is still watched" if watch_at is not None else ""
        self.tally.note(job, f"{code}: {reason}{self._retrying(retry)}{kept}")

    async def _stalled(self, job: JobRow, reason: str, shown: str) -> None:
        """Given up on for now: stalled, or (policy allowing) a new attempt while the
        stalled task is split off and still watched, its video an extra take if it comes."""
        retry = self._next_attempt(job, "stalled")
        watch_at = self.clock() + self.attempts.watch_every
        await self.ledger.call(
            self.ledger.moves.record_stalled, job.id, reason, retry=retry, watch_at=watch_at
        )
        kept = "; the stalled task is still watched" if retry else ""
        self.tally.note(job, f"stalled: {shown}{self._retrying(retry)}{kept}")

    def _next_attempt(self, job: JobRow, kind: str) -> AutoRetry | None:
        if job.extra_of is not None:  # an earlier attempt: its job has a new one already
            return None
        retry = self.attempts.next_attempt(kind, job.retries, self.clock(), self.rng.random())
        if retry is not None:
            self.tally.look_for_pending = True
            self.downloads.tries.pop(job.id, None)  # the new attempt's video gets every try
        return retry

    def _retrying(self, retry: AutoRetry | None) -> str:
        if retry is None:
            return ""
        wait = span(max(0.0, retry.retry_at - self.clock()) / self.attempts.scale)
        return f"; new attempt in {wait} ({retry.rule})"

    async def _completed(self, job: JobRow, task: Task, now: float) -> None:
        """Record a task seen done, with what it proves about its render time."""
        sample = estimate = None
        # An extra take's render (a stall that finished late) teaches nothing about the kind.
        if job.sent_at is not None and job.answered_at is not None and job.extra_of is None:
            sample = observe(
                sent_at=job.sent_at,
                answered_at=job.answered_at,
                seen_done_at=now,
                last_running_at=job.last_running_at,
                server_created_at=(
                    task.created_at if task.created_at is not None else job.server_created_at
                ),
                server_completed_at=task.completed_at,
            )
        if sample is not None:
            estimate = self.renders.estimate(combo_of(job), sample)
        await self.ledger.call(
            self.ledger.moves.record_completed,
            job.id,
            task.video_url,
            task.url_expires_at,
            remote_status=task.raw_status,
            server_created_at=task.created_at,
            server_completed_at=task.completed_at,
            render=sample,
            render_s=estimate,
        )
        self.tally.look_for_downloads = True
        if not self.download:
            self.tally.finished += 1
        if sample is not None and job.answered_at is not None:
            last = job.last_running_at
            self.renders.learn(
                combo_of(job),
                sample,
                created_at=job.answered_at,
                last_running=None if last is None else (last - job.answered_at, job.progress),
            )

    def _stall_reason(self, job: JobRow, now: float) -> str | None:
        if job.watch_started_at is None:
            return None
        if job.extra_of is not None:
            watched = now - job.watch_started_at
            if not self.attempts.watched_enough(watched):
                return None
            return f"an earlier attempt, watched for {span(watched / self.attempts.scale)} more"
        return self.renders.stall_reason(
            combo_of(job),
            watched_s=now - job.watch_started_at,
            created_at=job.answered_at if job.answered_at is not None else job.watch_started_at,
        )

    # -- downloads ----------------------------------------------------------

    async def downloaded(self, job: JobRow, outcome: DownloadOutcome) -> None:
        """Record a download try: the file, a vanished task, or a failure to try again.

        A file that arrived whole but does not decode is fetched once more; bad
        twice, the job fails with the reason (the task is never re-created for it).
        """
        if outcome.kind == "disk_full":
            self.faults.disk_full(self.tally, self.clock(), outcome.reason)
        elif outcome.kind == "store_down":
            self.faults.store_down(self.tally, self.clock(), outcome.reason)
        elif outcome.kind == "store_refused":  # no video could be kept: none more is bought
            self.tally.halt = self.tally.halt or (
                f"{outcome.reason}: stopped, nothing marked failed; run again once the "
                "store takes videos"
            )
        elif outcome.kind == "fetched" and (outcome.result or outcome.stored) is not None:
            self.faults.disk.clear()
            self.faults.store.clear()
            await self._record_video(job, outcome)
            self.tally.finished += 1
        elif outcome.kind == "vanished":
            await self._ended(job, "vanished", "task_not_exist", outcome.reason, keep=True)
        elif outcome.kind == "undecodable" and job.bad_downloads + 1 >= BAD_FILES:
            await self.ledger.call(self.ledger.moves.record_undecodable, job.id, outcome.reason)
            self.tally.note(job, f"the video does not decode, fetched {BAD_FILES} times")
        else:
            if outcome.fresh_url is not None:
                await self.ledger.call(
                    self.ledger.moves.refresh_url,
                    job.id,
                    outcome.fresh_url,
                    url_expiry(outcome.fresh_url),
                )
            retry_at = self.downloads.failed(job.id, self.clock(), self.rng.random())
            bad = outcome.kind == "undecodable"
            await self.ledger.call(
                self.ledger.moves.record_download_error,
                job.id,
                outcome.reason,
                retry_at or NEVER,
                bad_file=bad,
            )
            if retry_at is None:
                tries = self.downloads.tries[job.id]
                self.tally.note(job, f"download failed {tries} times: {outcome.reason}")

    async def _record_video(self, job: JobRow, outcome: DownloadOutcome) -> None:
        """A video in place: a file in the output folder, or an object in the store."""
        result, stored, facts = outcome.result, outcome.stored, outcome.facts
        normalised = (
            None
            if facts is None
            else mismatch(job.model, job.size, job.resolution, job.seconds, facts)
        )
        if stored is not None:
            where, size, sha256 = stored.uri, stored.size, stored.sha256
            poster: str | Path | None = stored.poster_uri
        else:
            assert result is not None
            where, size, sha256 = str(result.path), result.size, result.sha256
            poster = outcome.poster
        await self.ledger.call(
            self.ledger.moves.record_downloaded,
            job.id,
            where,
            size,
            sha256,
            refreshes=result.refreshes if result is not None else 0,
            facts=facts,
            normalised=normalised,
            poster=poster,
            etag=stored.etag if stored is not None else None,
        )
