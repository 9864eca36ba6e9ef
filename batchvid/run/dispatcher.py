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

On a shared ledger (PostgreSQL) this run is one worker of the batch among
any: the jobs it takes are claimed, so no other worker starts the same work;
it keeps its lease alive (:mod:`batchvid.run.lease`) and looks for work other
workers left behind every :data:`MAX_IDLE_S`; a create is admitted against
the batch's limits across every worker.

The dispatcher never prints and never installs signal handlers: the CLI reads
:meth:`Runner.snapshot` for progress and calls :meth:`Runner.request_stop`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Final

import anyio
from anyio.abc import TaskGroup

from ..errors import LedgerBusy, LedgerError
from ..ledger.port import RunLedger
from ..ledger.rows import JobRow
from ..ledger.submits import Admission
from ..outputs import S3Outputs
from ..remote.client import CometClient
from ..states import ACTIVE_STATES, JobState
from .clock import SteadyClock
from .lease import Lease, keep_lease
from .options import RunOptions, RunReport, Snapshot
from .policy import poll_share
from .poll_policy import RenderBook
from .progress import StateCounts
from .record import Recorder
from .recovery import import_tasks
from .steps import Kind, Steps
from .workers import Workers

__all__ = ["Runner"]

log = logging.getLogger(__name__)

S = JobState
#: Whether to start work on a job: yes, skip it, or stop looking (None).
Admit = Callable[[JobRow], bool | None]
#: Longest the dispatcher sleeps before looking at the ledger again (scaled).
MAX_IDLE_S: Final = 5.0
#: How long requests in flight may take to finish once the run stops (scaled, plus 5 s).
GRACE_S: Final = 30.0
#: Why a worker whose lease ended stops.
LEASE_LOST: Final = (
    "this worker's lease on the ledger ended before it could be renewed (the ledger was out "
    "of reach for longer than --lease): other workers take its jobs over; run again to rejoin"
)


class Runner:
    """Runs one batch that is already in the ledger; see the module docstring.

    ``lease``: this worker's lease, on a shared ledger (the run keeps it alive);
    ``store``: where the videos go when that is a store (``output_dir`` is then the
    spool, see :mod:`batchvid.run.keep`).
    """

    def __init__(
        self,
        ledger: RunLedger,
        client: CometClient,
        batch: str,
        output_dir: Path,
        options: RunOptions,
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        lease: Lease | None = None,
        store: S3Outputs | None = None,
    ) -> None:
        clock = clock or SteadyClock()
        self.ledger = ledger
        self.batch = batch
        self.output_dir = output_dir
        self.options = options
        self._clock = clock
        self._record = Recorder.for_run(
            ledger, RenderBook(options.poll_policy()), options, clock, rng or random.Random()
        )
        self._record.lease = lease
        if ledger.shared:
            self._record.admission = Admission(batch, options.max_active, options.budget_usd)
        workers = Workers(client, probe=options.probe)
        self._steps = Steps(ledger, workers, self._record, output_dir, clock, store)
        self._lease = lease
        self._tally = self._record.tally
        self._faults = self._record.faults
        self._wake = anyio.Event()
        self._busy: dict[Kind, set[int]] = {"download": set(), "poll": set(), "submit": set()}
        self._stopping = False
        self._started = clock()
        #: When work other workers may have left was last looked for (shared ledger).
        self._looked_around = self._started
        #: Times the dispatcher looked for work (a spinning dispatcher shows here).
        self._rounds = 0
        self._counts = StateCounts(ledger, batch)

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
        return len(self._busy["submit"])

    @property
    def in_flight(self) -> int:
        return sum(len(ids) for ids in self._busy.values())

    async def snapshot(self) -> Snapshot:
        """Progress now (see :class:`~.progress.StateCounts`: it never ends the run)."""
        counts, stale = await self._counts.read()
        return Snapshot(
            self.batch,
            counts,
            self.in_flight,
            self._tally.finished,
            self._clock() - self._started,
            tuple(self._tally.failures),
            stale,
        )

    async def run(self) -> RunReport:
        """Drive the batch until every job is terminal for this run, or a stop.

        Raises AuthError at once on a 401, ServiceRefused when the API refuses
        creates for reasons not the job's (403, 404...); nothing is marked failed
        or rejected for either, and the jobs concerned stay pending.
        """
        # The ledger stamps by the run's clock, so what it stores and what is
        # scheduled agree, whatever the wall clock does meanwhile.
        ledger = self.ledger.ledger
        wall, ledger.clock = ledger.clock, self._clock
        try:
            return await self._run()
        finally:
            ledger.clock = wall

    async def _run(self) -> RunReport:
        recovered = await _take_over(self.ledger, self.batch, self._record)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        async with anyio.create_task_group() as tg:
            if self._lease is not None:
                tg.start_soon(self._keep_lease, self._lease)
            await self._dispatch(tg)
            # Stopping or done: let requests in flight finish and be recorded.
            with anyio.move_on_after(self.options.scaled(GRACE_S) + 5.0):
                while self.in_flight:
                    self._wake = anyio.Event()
                    await self._wake.wait()
            tg.cancel_scope.cancel()
        if self._tally.fatal is not None:
            raise self._tally.fatal
        report = RunReport(
            batch=self.batch,
            counts={},
            output_dir=self._steps.videos_at,
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
        )
        return await _counted(self.ledger, report)

    async def _keep_lease(self, lease: Lease) -> None:
        tally = self._tally

        def lost() -> None:
            tally.halt = tally.halt or LEASE_LOST
            self._wake.set()

        def taken_over(n: int) -> None:
            tally.failures.append(
                f"{n} create(s) left in flight by a worker that is gone: in doubt"
            )
            self._look_around()

        await keep_lease(
            self.ledger, lease, self.batch, self._clock, on_lost=lost, on_taken_over=taken_over
        )

    def _look_around(self) -> None:
        """Other workers may have left work (released, or their lease ended): look again."""
        self._tally.look_for_pending = self._tally.look_for_downloads = True
        self._looked_around = self._clock()
        self._wake.set()

    # -- the loop ----------------------------------------------------------------

    async def _dispatch(self, tg: TaskGroup) -> None:
        tally = self._tally
        longest = self.options.scaled(MAX_IDLE_S)
        while not self._stopping and tally.fatal is None and tally.halt is None:
            # A fresh event before looking: a worker finishing while we wait sets it.
            self._wake = anyio.Event()
            self._rounds += 1
            now = self._clock()
            if self.ledger.shared and now - self._looked_around >= longest:
                self._look_around()
            try:
                if self._faults.ledger_busy.paused(now):
                    pass  # the ledger is locked or out of reach: start nothing until it answers
                elif await self._start_round(tg, now):
                    return
                retries = self._may_submit_ever()
                pauses = self._pauses(now)
                wait = await _idle_for(self.ledger, self.batch, now, longest, retries, pauses)
            except LedgerBusy as exc:
                self._faults.ledger_was_busy(self._tally, self._clock(), exc)
                wait = self._faults.ledger_busy.until - now
            with anyio.move_on_after(wait):
                await self._wake.wait()

    async def _start_round(self, tg: TaskGroup, now: float) -> bool:
        """Start what the free slots allow; True when nothing is left to do in this run."""
        cap = self.options.concurrency
        busy = self._busy
        room = cap - len(busy["download"])  # downloads go to the CDN: slots of their own
        if room > 0 and self.options.download and not self._faults.downloads_paused(now):
            await self._start_downloads(tg, room, now)
        free = cap - len(busy["poll"]) - len(busy["submit"])
        if free > 0:
            share = poll_share(cap, len(busy["poll"]))
            free -= await self._start_polls(tg, min(free, share), now)
        if free > 0 and self._may_submit(now):
            free -= await self._start_submits(tg, free, now)
        if free > 0:
            free -= await self._start_polls(tg, free, now)
        if self.in_flight:
            return False
        submit, download = self._may_submit_ever(), self.options.download
        quarantined = self._tally.quarantined
        return await _nothing_left(self.ledger, self.batch, submit, download, quarantined)

    def _pauses(self, now: float) -> list[float]:
        """When the pauses of this run end: of submissions, the full disk, and (creates
        waiting for this worker's lease to be renewed) the next heartbeat."""
        times = [self._record.pause.until, self._faults.disk.until, self._faults.store.until]
        if self._lease is not None and not self._lease.may_create(now):
            times.append(now + self._lease.every)
        return times

    def _may_submit(self, now: float) -> bool:
        # While the disk is full (or the store is down), buying more videos that cannot be
        # kept would be waste: no new create until a download gets through again.
        full = self._faults.disk.since is not None or self._faults.store.since is not None
        lease = self._lease is None or self._lease.may_create(now)
        return self._may_submit_ever() and lease and not self._record.pause.paused(now) and not full

    def _may_submit_ever(self) -> bool:
        return self.options.submit and not self._record.budget.spent and self._tally.fatal is None

    async def _take(
        self, kind: Kind, take: Callable[..., list[JobRow]], wanted: int, now: float
    ) -> tuple[list[JobRow], bool]:
        """The next jobs to start ``kind`` work on (at most ``wanted``, none busy with it or
        set aside: they stay queued), and whether there may be more (the page came back full)."""
        skip = self._busy[kind] | self._tally.quarantined
        jobs = await self.ledger.call(take, self.batch, wanted, now, skip)
        return jobs, len(jobs) >= wanted

    async def _start_each(self, tg: TaskGroup, kind: Kind, jobs: list[JobRow], admit: Admit) -> int:
        """Start ``kind`` work on each job ``admit`` lets through, in order; how many started.

        ``admit`` answers True (start it), False (skip it) or None (stop looking).
        Jobs taken but not started go back (on a shared ledger, to any worker).
        """
        started = 0
        left: list[int] = []
        looking = True
        for job in jobs:
            verdict = admit(job) if looking else None
            if verdict:
                self._spawn(tg, kind, job)
                started += 1
                continue
            looking = looking and verdict is not None
            left.append(job.id)
        if left:
            await self.ledger.call(self.ledger.leases.release, left)
        return started

    async def _start_downloads(self, tg: TaskGroup, free: int, now: float) -> int:
        ledger, batch = self.ledger, self.batch
        due = await ledger.call(ledger.queue.next_download_time, batch)
        if not (self._tally.look_for_downloads or (due is not None and due <= now)):
            return 0
        jobs, more = await self._take("download", ledger.queue.take_downloads, free, now)
        # Seen them all only if the page was short.
        self._tally.look_for_downloads = more
        return await self._start_each(tg, "download", jobs, lambda job: True)

    async def _start_polls(self, tg: TaskGroup, free: int, now: float) -> int:
        ledger, batch = self.ledger, self.batch
        next_poll = await ledger.call(ledger.queue.next_poll_time, batch)
        if free <= 0 or next_poll is None or next_poll > now:
            return 0
        jobs, _ = await self._take("poll", ledger.queue.take_polls, free, now)
        return await self._start_each(tg, "poll", jobs, lambda job: True)

    async def _start_submits(self, tg: TaskGroup, free: int, now: float) -> int:
        ledger, batch = self.ledger, self.batch
        retry = await ledger.call(ledger.queue.next_retry_time, batch)
        if not (self._tally.look_for_pending or (retry is not None and retry <= now)):
            return 0
        budget = self._record.budget
        active = await ledger.call(ledger.queue.active_count, batch)
        wanted = min(free, budget.room(self.options.max_active, active))
        if wanted <= 0:
            return 0
        committed = 0.0
        if budget.limit is not None:
            committed = await ledger.call(ledger.queue.committed_cost, batch)

        def admit(job: JobRow) -> bool | None:
            if budget.claim(job.est_cost_usd, committed):
                return True
            self._tally.failures.append(budget.reached(committed))
            return None

        jobs, more = await self._take("submit", ledger.queue.take_pending, wanted, now)
        started = await self._start_each(tg, "submit", jobs, admit)
        self._tally.look_for_pending = more
        return started

    def _spawn(self, tg: TaskGroup, kind: Kind, job: JobRow) -> None:
        self._busy[kind].add(job.id)
        tg.start_soon(self._guarded, kind, job, name=f"{kind}-{job.id}")

    async def _guarded(self, kind: Kind, job: JobRow) -> None:
        try:
            await self._steps.run(kind, job)
        finally:
            self._busy[kind].discard(job.id)
            self._wake.set()


async def _counted(ledger: RunLedger, report: RunReport) -> RunReport:
    """``report`` with the batch's counts as the ledger has them at the end of the run."""
    batch = report.batch
    try:
        counts = await ledger.call(ledger.reads.counts, batch)
        extras = await ledger.call(ledger.reads.counts, batch, extras=True)
        report.retries = await ledger.call(ledger.reads.retries_made, batch)
        report.normalised = await ledger.call(ledger.reads.normalised, batch)
    except LedgerError as exc:  # the run ends all the same; the ledger has the rest
        report.halted = report.halted or f"the ledger could not be read at the end ({exc})"
        return report
    report.counts = {str(s): n for s, n in counts.items()}
    report.extras = {str(s): n for s, n in extras.items() if n}
    return report


async def _idle_for(
    ledger: RunLedger, batch: str, now: float, longest: float, retries: bool, pauses: list[float]
) -> float:
    """How long the dispatcher sleeps (at most ``longest``), unless a finishing worker
    wakes it.

    Only times still ahead count: the next poll, download retry, automatic
    retry (with ``retries``), or end of a pause.  Work already due that was not started is
    waiting for a free slot, or is in flight (a poll whose answer is not in
    yet): a worker finishing sets the wake event for both.  Counting such
    past times would make the dispatcher spin, re-querying the ledger, for as
    long as every slot stays busy.
    """
    queue = ledger.queue
    times = [
        await ledger.call(queue.next_poll_time, batch),
        await ledger.call(queue.next_download_time, batch),
        *pauses,
    ]
    if retries:  # an automatic retry's back-off ends (only if submissions may go on)
        times.append(await ledger.call(queue.next_retry_time, batch))
    ahead = [t for t in times if t is not None and t > now]
    return min([now + longest, *ahead]) - now


async def _nothing_left(
    ledger: RunLedger, batch: str, submit: bool, download: bool, set_aside: set[int]
) -> bool:
    """True when no job of ``batch`` can make progress in this run any more.

    Live tasks count, earlier attempts still watched (extra takes) too: they
    are paid for, and watched for a bounded time (see
    :class:`~batchvid.run.policy.AttemptPolicy`).  Pending jobs count when
    ``submit`` (automatic retries waiting out their back-off too), completed
    ones a download may still be tried for when ``download``.  Jobs set aside
    for the run are among those counted, and wait for the next run.  On a
    shared ledger, other workers' jobs count too: this one stays while the
    batch goes on, and takes over if they stop.
    """
    counts = await ledger.call(ledger.reads.counts, batch)
    extras = await ledger.call(ledger.reads.counts, batch, extras=True)
    workable = sum(counts[s] + extras[s] for s in ACTIVE_STATES)
    if submit:
        workable += counts[S.PENDING]
    if download:
        workable += await ledger.call(ledger.queue.downloadable_count, batch)
    return workable - len(set_aside) <= 0


async def _take_over(ledger: RunLedger, batch: str, record: Recorder) -> int:
    """Start a run of ``batch``: record what the last run left behind, before anything else.

    The task ids it could not record (its recovery file) go in first; then jobs
    left ``submitting`` by a process that is gone are in doubt.  Returns how
    many of those there were.  On a shared ledger with other workers at work,
    their back-offs are theirs: only a worker alone resets them.
    """
    policy = record.attempts  # a run that submits nothing makes no new attempt: not its policy
    rules = policy.rules.as_dict() if policy.enabled else None
    alone = not ledger.shared or len(await ledger.call(ledger.leases.live, batch)) <= 1
    if alone:
        await ledger.call(ledger.plans.start_run, batch, retry=rules)
    note = record.tally.failures.append
    found = await import_tasks(ledger, batch, note)
    if found:
        note(f"{found} task id(s) the last run could not record were recorded now")
    recovered = await ledger.call(ledger.plans.recover_interrupted, batch)
    if recovered:
        note(f"{recovered} job(s) were being submitted when the last run stopped: in doubt")
    return recovered
