"""The dispatcher: drives a batch's jobs through the ledger until each one is terminal.

One loop hands out work in priority order, within one shared cap on requests
in flight (``concurrency``):

1. **downloads** of completed videos, soonest-expiring URL first;
2. **polls** of tasks whose ``next_poll_at`` is due, up to a quarter of the slots;
3. **submissions** of pending jobs, while fewer than ``max_active`` tasks are
   live upstream and the budget allows;
4. more **polls** in whatever slots are left.

Under a rate limit, slots are requests waiting for the limiter, so this is
also how the rate is shared.  While the active-task cap has room, starting
renders is what shortens the batch, so submissions take what polls leave; once
it is full, only polls (which find finished renders and free their slots) can
move it, and they get every slot.  Polls never get less than their quarter, so
finished videos are still noticed, and fetched, during a long submission
phase; submissions never wait behind polls due by the thousand.

Each piece of work is a worker (:mod:`batchvid.run.workers`: requests in,
outcome out), recorded by :mod:`batchvid.run.record` as soon as it returns.
Every API request also passes the one shared rate limiter (inside the client).
A job's ``submitting`` intent is committed only once the limiter has granted
its request, immediately before the bytes leave, so a crash while waiting for
the limiter leaves the job ``pending``, not in doubt.

The dispatcher never prints and never installs signal handlers: the CLI reads
:meth:`Runner.snapshot` for progress and calls :meth:`Runner.request_stop`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

import anyio
from anyio.abc import TaskGroup

from ..errors import AuthError, ServiceRefused
from ..ledger.rows import JobRow
from ..ledger.store import Ledger
from ..remote.client import CometClient
from ..states import ACTIVE_STATES, JobState
from .files import job_filename, safe_destination
from .options import RunOptions, RunReport, Snapshot
from .policy import Budget, DownloadRetries, SubmitPause, poll_share
from .poll_policy import RenderBook
from .record import Recorder, combo_of
from .workers import Workers

__all__ = ["Runner"]

log = logging.getLogger(__name__)

S = JobState
Kind = Literal["download", "poll", "submit"]
#: Whether to start work on a job: yes, skip it, or stop looking (None).
Admit = Callable[[JobRow], bool | None]
#: Longest the dispatcher sleeps before looking at the ledger again (scaled).
MAX_IDLE_S: Final = 5.0
#: How long requests in flight may take to finish once the run stops (scaled, plus 5 s).
GRACE_S: Final = 30.0


class Runner:
    """Runs one batch that is already in the ledger; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        client: CometClient,
        batch: str,
        output_dir: Path,
        options: RunOptions,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.ledger = ledger
        self.batch = batch
        self.output_dir = output_dir
        self.options = options
        self._clock = clock
        self._workers = Workers(client)
        renders = RenderBook(
            options.poll_policy(), history=lambda combo: ledger.render_samples(*combo)
        )
        self._record = Recorder(
            ledger,
            renders,
            Budget(options.budget_usd),
            SubmitPause(scale=options.time_scale),
            DownloadRetries(options.download_attempts, scale=options.time_scale),
            clock,
            rng or random.Random(),
            download=options.download,
        )
        self._tally = self._record.tally
        self._wake = anyio.Event()
        self._busy: set[int] = set()
        #: Busy jobs per kind of work: a look for work of one kind skips only those.
        self._busy_kind: dict[Kind, int] = {"download": 0, "poll": 0, "submit": 0}
        self._stopping = False
        self._started = clock()
        #: Times the dispatcher looked for work (a spinning dispatcher shows here).
        self._rounds = 0

    # -- control ---------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop starting work; requests in flight finish and are recorded."""
        self._stopping = True
        self._wake.set()

    @property
    def stop_requested(self) -> bool:
        return self._stopping

    def snapshot(self) -> Snapshot:
        counts = {str(state): n for state, n in self.ledger.counts(self.batch).items()}
        return Snapshot(
            self.batch,
            counts,
            len(self._busy),
            self._tally.finished,
            self._clock() - self._started,
            tuple(self._tally.failures),
        )

    async def run(self) -> RunReport:
        """Drive the batch until every job is terminal for this run, or a stop.

        Raises AuthError at once on a 401, ServiceRefused when the API refuses
        creates for reasons not the job's (403, 404...); nothing is marked failed
        or rejected for either, and the jobs concerned stay pending.
        """
        recovered = self.ledger.recover_interrupted(self.batch)
        if recovered:
            self._tally.failures.append(
                f"{recovered} job(s) were being submitted when the last run stopped: in doubt"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        async with anyio.create_task_group() as tg:
            await self._dispatch(tg)
            # Stopping or done: let requests in flight finish and be recorded.
            with anyio.move_on_after(self.options.scaled(GRACE_S) + 5.0):
                while self._busy:
                    self._wake = anyio.Event()
                    await self._wake.wait()
            tg.cancel_scope.cancel()
        if self._tally.fatal is not None:
            raise self._tally.fatal
        return RunReport(
            batch=self.batch,
            counts={str(s): n for s, n in self.ledger.counts(self.batch).items()},
            output_dir=self.output_dir,
            elapsed_s=self._clock() - self._started,
            interrupted=self._stopping,
            recovered_in_doubt=recovered,
            budget_blocked=self._record.budget.spent,
            download=self.options.download,
            submitted=self.options.submit,
            finished_this_run=self._tally.finished,
            failures=list(self._tally.failures),
            dispatch_rounds=self._rounds,
        )

    # -- the loop ----------------------------------------------------------------

    async def _dispatch(self, tg: TaskGroup) -> None:
        while not self._stopping and self._tally.fatal is None:
            # A fresh event before looking: a worker finishing while we wait sets it.
            self._wake = anyio.Event()
            self._rounds += 1
            now = self._clock()
            free = self.options.concurrency - len(self._busy)
            if free > 0 and self.options.download:
                free -= self._start_downloads(tg, free, now)
            if free > 0:
                share = poll_share(self.options.concurrency, self._busy_kind["poll"])
                free -= self._start_polls(tg, min(free, share), now)
            if free > 0 and self._may_submit(now):
                free -= self._start_submits(tg, free)
            if free > 0:
                free -= self._start_polls(tg, free, now)
            if not self._busy and self._nothing_left():
                return
            with anyio.move_on_after(self._idle_for(now)):
                await self._wake.wait()

    def _may_submit(self, now: float) -> bool:
        return self._may_submit_ever() and not self._record.pause.paused(now)

    def _may_submit_ever(self) -> bool:
        return self.options.submit and not self._record.budget.spent and self._tally.fatal is None

    def _idle(self, job: JobRow) -> bool:
        return job.id not in self._busy and job.id not in self._tally.quarantined

    def _start_each(
        self, tg: TaskGroup, kind: Kind, jobs: list[JobRow], free: int, admit: Admit
    ) -> tuple[int, bool]:
        """Start ``kind`` work on each idle job ``admit`` lets through, up to ``free`` of them.

        ``admit`` answers True (start it), False (skip it) or None (stop looking).
        Returns how many started, and whether jobs were left for lack of room.
        """
        started = 0
        for job in jobs:
            if started >= free:
                return started, True
            if not self._idle(job):
                continue
            verdict = admit(job)
            if verdict is None:
                break
            if verdict:
                self._spawn(tg, kind, job)
                started += 1
        return started, False

    def _page(
        self, kind: Kind, wanted: int, fetch: Callable[[int], list[JobRow]]
    ) -> tuple[list[JobRow], bool]:
        """The next jobs to consider for ``kind`` (enough for ``wanted``, past those busy),
        and whether there may be more after them (the page came back full)."""
        limit = wanted + self._busy_kind[kind]
        jobs = fetch(limit)
        return jobs, len(jobs) >= limit

    def _start_downloads(self, tg: TaskGroup, free: int, now: float) -> int:
        retries = self._record.downloads
        if not (self._tally.look_for_downloads or retries.any_due(now)):
            return 0
        jobs, more = self._page(
            "download", free, lambda n: self.ledger.completed_jobs(self.batch, n)
        )
        started, cut = self._start_each(
            tg, "download", jobs, free, lambda job: retries.ready(job.id, now)
        )
        # Seen them all only if the page was short and none was left for lack of room.
        self._tally.look_for_downloads = more or cut
        return started

    def _start_polls(self, tg: TaskGroup, free: int, now: float) -> int:
        next_poll = self.ledger.next_poll_time(self.batch)
        if free <= 0 or next_poll is None or next_poll > now:
            return 0
        jobs, _ = self._page("poll", free, lambda n: self.ledger.due_polls(self.batch, now, n))
        return self._start_each(tg, "poll", jobs, free, lambda job: True)[0]

    def _start_submits(self, tg: TaskGroup, free: int) -> int:
        if not self._tally.look_for_pending:
            return 0
        budget = self._record.budget
        active = self.ledger.active_count(self.batch)
        wanted = min(free, budget.room(self.options.max_active, active))
        if wanted <= 0:
            return 0
        committed = self.ledger.committed_cost(self.batch) if budget.limit is not None else 0.0

        def admit(job: JobRow) -> bool | None:
            if budget.claim(job.est_cost_usd, committed):
                return True
            total = committed + budget.claimed_usd
            self._tally.failures.append(
                f"budget ${budget.limit:,.2f} reached (${total:,.2f} committed): "
                "no more submissions"
            )
            return None

        jobs, more = self._page("submit", wanted, lambda n: self.ledger.pending_jobs(self.batch, n))
        started, cut = self._start_each(tg, "submit", jobs, wanted, admit)
        self._tally.look_for_pending = more or cut
        return started

    def _spawn(self, tg: TaskGroup, kind: Kind, job: JobRow) -> None:
        self._busy.add(job.id)
        self._busy_kind[kind] += 1
        tg.start_soon(self._guarded, kind, job, name=f"{kind}-{job.id}")

    async def _guarded(self, kind: Kind, job: JobRow) -> None:
        try:
            if kind == "submit":
                await self._submit(job)
            elif kind == "poll":
                asked_at = self._clock()
                self._record.polled(job, await self._workers.poll(job), asked_at)
            else:
                dest = safe_destination(
                    self.output_dir,
                    job_filename(job.idx, job.prompt_id, job.prompt, job.model, job.size, job.take),
                )
                self._record.downloaded(job, await self._workers.download(job, dest))
        except (AuthError, ServiceRefused) as exc:
            self._tally.stop_everything(exc)
        except Exception as exc:  # a bug, or the ledger changed under us (a `retry` meanwhile)
            # One job's surprise must not end an overnight batch, nor repeat in a
            # tight loop: the job sits out the rest of this run, with the reason.
            log.exception("%s of job %s failed", kind, job.id)
            self._tally.quarantined.add(job.id)
            self._tally.note(job, f"{kind} stopped for this run: {type(exc).__name__}: {exc}")
        finally:
            self._busy.discard(job.id)
            self._busy_kind[kind] -= 1
            self._wake.set()

    async def _submit(self, job: JobRow) -> None:
        # Decided before the request leaves: nothing may stand between a create's
        # answer and recording its task id (it reads the ledger the first time).
        first_poll = self._record.renders.first_poll_delay(combo_of(job))
        intent = self._record.intent(job)
        try:
            outcome = await self._workers.submit(job, intent)
        except BaseException:
            # Cancelled (a stop after the grace period) or a bug: the request may be out.
            with anyio.CancelScope(shield=True):
                self._record.lost_create(job, intent)
            raise
        self._record.submitted(job, intent, outcome, first_poll)

    def _nothing_left(self) -> bool:
        """True when no job can make progress in this run any more."""
        counts = self.ledger.counts(self.batch)
        workable = sum(counts[s] for s in ACTIVE_STATES)
        if self._may_submit_ever():
            workable += counts[S.PENDING]
        if self.options.download:
            spent = self._record.downloads.spent_count(excluding=self._tally.quarantined)
            workable += counts[S.COMPLETED] - spent
        # Quarantined jobs are among those counted, and wait for the next run.
        return workable - len(self._tally.quarantined) <= 0

    def _idle_for(self, now: float) -> float:
        """How long the dispatcher sleeps, unless a finishing worker wakes it first.

        Only times still ahead count.  Work already due that was not started is
        waiting for a free slot, or is in flight (a poll whose answer is not in
        yet): a worker finishing sets the wake event for both.  Counting such
        past times would make the dispatcher spin, re-querying the ledger,
        for as long as every slot stays busy.
        """
        wake = now + self.options.scaled(MAX_IDLE_S)
        next_poll = self.ledger.next_poll_time(self.batch)
        if next_poll is not None and next_poll > now:
            wake = min(wake, next_poll)
        retry = self._record.downloads.next_due(now)
        if retry is not None:
            wake = min(wake, retry)
        pause = self._record.pause.until
        if pause > now:
            wake = min(wake, pause)
        return wake - now
