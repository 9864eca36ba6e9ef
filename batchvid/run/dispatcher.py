"""The dispatcher: drives a batch's jobs through the ledger until each one is terminal.

One loop hands out work in priority order, within a cap on API requests in
flight (``concurrency``); downloads, which go to the CDN, have as many slots of
their own, so a large video being fetched never holds back a poll or a create:

1. **downloads** of completed videos, soonest-expiring URL first (their own slots);
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

Everything is scheduled on one :class:`~batchvid.run.clock.SteadyClock` (the
ledger stamps by it too while the run lasts): a wall clock stepped by NTP or
by hand moves no poll and stalls no job.

The dispatcher never prints and never installs signal handlers: the CLI reads
:meth:`Runner.snapshot` for progress and calls :meth:`Runner.request_stop`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

import anyio
from anyio.abc import TaskGroup

from ..errors import AuthError, LedgerBusy, LedgerFull, ServiceRefused
from ..ledger.rows import JobRow
from ..ledger.store import Ledger
from ..remote.client import CometClient
from ..states import ACTIVE_STATES, JobState
from .clock import SteadyClock
from .files import job_filename, safe_destination
from .options import RunOptions, RunReport, Snapshot
from .policy import poll_share
from .poll_policy import RenderBook
from .record import Recorder, combo_of
from .recovery import import_tasks, record_kept
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
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        clock = clock or SteadyClock()
        self.ledger = ledger
        self.batch = batch
        self.output_dir = output_dir
        self.options = options
        self._clock = clock
        self._workers = Workers(client, probe=options.probe)
        renders = RenderBook(
            options.poll_policy(), history=lambda combo: ledger.render_samples(*combo)
        )
        self._record = Recorder.for_run(ledger, renders, options, clock, rng or random.Random())
        self._tally = self._record.tally
        self._faults = self._record.faults
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

    @property
    def creates_in_flight(self) -> int:
        """Create requests under way: in doubt if the process ends before they answer."""
        return self._busy_kind["submit"]

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
        # The ledger stamps by the run's clock, so what it stores and what is
        # scheduled agree, whatever the wall clock does meanwhile.
        wall, self.ledger.clock = self.ledger.clock, self._clock
        try:
            return await self._run()
        finally:
            self.ledger.clock = wall

    async def _run(self) -> RunReport:
        recovered = _take_over(self.ledger, self.batch, self._record)
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
            halted=self._tally.halt,
            retries=self.ledger.retries_made(self.batch),
            extras={str(s): n for s, n in self.ledger.counts(self.batch, extras=True).items() if n},
            normalised=self.ledger.normalised(self.batch),
        )

    # -- the loop ----------------------------------------------------------------

    async def _dispatch(self, tg: TaskGroup) -> None:
        tally = self._tally
        while not self._stopping and tally.fatal is None and tally.halt is None:
            # A fresh event before looking: a worker finishing while we wait sets it.
            self._wake = anyio.Event()
            self._rounds += 1
            now = self._clock()
            try:
                if self._faults.ledger_busy.paused(now):
                    pass  # another program holds the ledger: start nothing until it lets go
                elif self._start_round(tg, now):
                    return
                wait = _idle_for(
                    self.ledger,
                    self.batch,
                    now,
                    self.options.scaled(MAX_IDLE_S),
                    (self._record.pause.until, self._faults.disk.until, *self._retry_due()),
                )
            except LedgerBusy as exc:
                self._faults.ledger_was_busy(self._tally, self._clock(), exc)
                wait = self._faults.ledger_busy.until - now
            with anyio.move_on_after(wait):
                await self._wake.wait()

    def _start_round(self, tg: TaskGroup, now: float) -> bool:
        """Start what the free slots allow; True when nothing is left to do in this run."""
        cap = self.options.concurrency
        downloads = self._busy_kind["download"]
        room = cap - downloads  # downloads go to the CDN: slots of their own, not the API's
        if room > 0 and self.options.download and not self._faults.disk.paused(now):
            self._start_downloads(tg, room, now)
        free = cap - (len(self._busy) - self._busy_kind["download"])
        if free > 0:
            share = poll_share(self.options.concurrency, self._busy_kind["poll"])
            free -= self._start_polls(tg, min(free, share), now)
        if free > 0 and self._may_submit(now):
            free -= self._start_submits(tg, free, now)
        if free > 0:
            free -= self._start_polls(tg, free, now)
        if self._busy:
            return False
        submit, download = self._may_submit_ever(), self.options.download
        return _nothing_left(self.ledger, self.batch, submit, download, self._tally.quarantined)

    def _may_submit(self, now: float) -> bool:
        # While the disk is full, buying more videos that cannot be kept would be waste:
        # no new create until a download gets through again.
        full = self._faults.disk.since is not None
        return self._may_submit_ever() and not self._record.pause.paused(now) and not full

    def _retry_due(self) -> tuple[float, ...]:
        """When the next automatic retry's back-off ends, if submissions may go on."""
        due = self.ledger.next_retry_time(self.batch) if self._may_submit_ever() else None
        return () if due is None else (due,)

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
        """The next jobs to consider for ``kind`` (enough for ``wanted`` past those busy or
        set aside: they stay queued), and whether there may be more (the page came back full)."""
        limit = wanted + self._busy_kind[kind] + len(self._tally.quarantined)
        jobs = fetch(limit)
        return jobs, len(jobs) >= limit

    def _start_downloads(self, tg: TaskGroup, free: int, now: float) -> int:
        due = self.ledger.next_download_time(self.batch)
        if not (self._tally.look_for_downloads or (due is not None and due <= now)):
            return 0
        jobs, more = self._page(
            "download", free, lambda n: self.ledger.completed_jobs(self.batch, n, now)
        )
        started, cut = self._start_each(tg, "download", jobs, free, lambda job: True)
        # Seen them all only if the page was short and none was left for lack of room.
        self._tally.look_for_downloads = more or cut
        return started

    def _start_polls(self, tg: TaskGroup, free: int, now: float) -> int:
        next_poll = self.ledger.next_poll_time(self.batch)
        if free <= 0 or next_poll is None or next_poll > now:
            return 0
        jobs, _ = self._page("poll", free, lambda n: self.ledger.due_polls(self.batch, now, n))
        return self._start_each(tg, "poll", jobs, free, lambda job: True)[0]

    def _start_submits(self, tg: TaskGroup, free: int, now: float) -> int:
        retry = self.ledger.next_retry_time(self.batch)
        if not (self._tally.look_for_pending or (retry is not None and retry <= now)):
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

        jobs, more = self._page(
            "submit", wanted, lambda n: self.ledger.pending_jobs(self.batch, n, now)
        )
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
                dest = _destination(self.output_dir, job)
                self._record.downloaded(job, await self._workers.download(job, dest))
        except (AuthError, ServiceRefused) as exc:
            self._tally.stop_everything(exc)
        except LedgerBusy as exc:  # not the job's fault: it is tried again after a wait
            self._faults.ledger_was_busy(self._tally, self._clock(), exc)
        except LedgerFull as exc:
            self._tally.halt = self._tally.halt or f"{exc}: stopped; free some space and run again"
        except Exception as exc:  # a bug, or the ledger changed under us (a `retry` meanwhile)
            # One job's surprise must not end an overnight batch, nor repeat in a
            # tight loop: the job sits out the rest of this run, with the reason.
            log.exception("%s of job %s failed", kind, job.id)
            self._tally.quarantined.add(job.id)
            self._tally.note(job, f"{kind} stopped for this run: {type(exc).__name__}: {exc}")
        else:
            self._faults.ledger_busy.clear()  # its outcome was recorded: the lock is free
        finally:
            self._busy.discard(job.id)
            self._busy_kind[kind] -= 1
            self._wake.set()

    async def _submit(self, job: JobRow) -> None:
        # Decided before the request leaves: nothing may stand between a create's
        # answer and recording its task id (it reads the ledger the first time).
        intent = self._record.intent(job)
        try:
            first_poll = self._record.renders.first_poll_delay(combo_of(job))
            outcome = await self._workers.submit(job, intent)
        except BaseException:
            # Cancelled (a stop after the grace period), the ledger failing to read
            # the render history, or a bug: the request may be out (in doubt), or not.
            with anyio.CancelScope(shield=True):
                self._record.lost_create(job, intent)
            raise
        self._record.submitted(job, intent, outcome, first_poll)


def _take_over(ledger: Ledger, batch: str, record: Recorder) -> int:
    """Start a run of ``batch``: record what the last run left behind, before anything else.

    The task ids it could not record (its recovery file) go in first; then jobs
    left ``submitting`` are in doubt.  Returns how many of those there were.
    """
    policy = record.attempts  # a run that submits nothing makes no new attempt: not its policy
    ledger.start_run(batch, retry=policy.rules.as_dict() if policy.enabled else None)
    note = record.tally.failures.append
    found = import_tasks(ledger.path, batch, lambda entry: record_kept(ledger, entry, note))
    if found:
        record.tally.failures.append(
            f"{found} task id(s) the last run could not record were recorded now"
        )
    recovered = ledger.recover_interrupted(batch)
    if recovered:
        record.tally.failures.append(
            f"{recovered} job(s) were being submitted when the last run stopped: in doubt"
        )
    return recovered


def _idle_for(
    ledger: Ledger, batch: str, now: float, longest: float, pauses: tuple[float, ...]
) -> float:
    """How long the dispatcher sleeps (at most ``longest``), unless a finishing worker wakes it.

    Only times still ahead count: the next poll, download retry, or end of a
    pause.  Work already due that was not started is waiting for a free slot,
    or is in flight (a poll whose answer is not in yet): a worker finishing
    sets the wake event for both.  Counting such past times would make the
    dispatcher spin, re-querying the ledger, for as long as every slot stays busy.
    """
    times = (ledger.next_poll_time(batch), ledger.next_download_time(batch), *pauses)
    ahead = [t for t in times if t is not None and t > now]
    return min([now + longest, *ahead]) - now


def _destination(output_dir: Path, job: JobRow) -> Path:
    """Where a job's video goes: its own name (see :func:`batchvid.run.files.job_filename`)."""
    extra = job.attempts if job.extra_of is not None else None
    name = job_filename(
        job.idx, job.prompt_id, job.prompt, job.model, job.size, job.take, job.key,
        extra_attempt=extra,
    )  # fmt: skip
    return safe_destination(output_dir, name)


def _nothing_left(
    ledger: Ledger, batch: str, submit: bool, download: bool, set_aside: set[int]
) -> bool:
    """True when no job of ``batch`` can make progress in this run any more.

    Live tasks count, earlier attempts still watched (extra takes) too: they
    are paid for, and watched for a bounded time (see
    :class:`~batchvid.run.policy.AttemptPolicy`).  Pending jobs count when
    ``submit`` (automatic retries waiting out their back-off too), completed
    ones a download may still be tried for when ``download``.  Jobs set aside
    for the run are among those counted, and wait for the next run.
    """
    counts = ledger.counts(batch)
    extras = ledger.counts(batch, extras=True)
    workable = sum(counts[s] + extras[s] for s in ACTIVE_STATES)
    if submit:
        workable += counts[S.PENDING]
    if download:
        workable += ledger.downloadable_count(batch)
    return workable - len(set_aside) <= 0
