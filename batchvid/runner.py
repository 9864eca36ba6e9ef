"""The runner: drives a batch's jobs through the ledger until each one is terminal.

One dispatcher loop hands out work in priority order, within one shared cap on
requests in flight (``concurrency``):

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

Every API request also passes the one shared rate limiter (inside the client).
A job's ``submitting`` intent is committed only once the limiter has granted
its request, immediately before the bytes leave, so a crash while waiting for
the limiter leaves the job ``pending``, not in doubt.  Every answer is a
committed ledger transition before anything that depends on it happens.

The runner never prints and never installs signal handlers: the CLI reads
:meth:`Runner.snapshot` for progress and calls :meth:`Runner.request_stop`.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
from anyio.abc import TaskGroup

from .api import Task, TaskStatus, failure_reason
from .client import CometClient
from .errors import (
    ApiError,
    AuthError,
    DownloadError,
    InDoubtError,
    RejectedError,
    RetryableError,
    ServiceRefused,
    TaskNotFound,
)
from .ledger import Ledger
from .ledger_rows import JobRow
from .poll_policy import Combo, PollPolicy, RenderBook
from .render_times import observe
from .scheduling import job_filename, safe_destination, url_expiry
from .states import JobState

__all__ = ["DEFAULT_MAX_WAIT", "RunOptions", "RunReport", "Runner", "Snapshot"]

log = logging.getLogger(__name__)

S = JobState
#: States a job can end a run in.
TERMINAL: Final = frozenset({S.DOWNLOADED, S.FAILED, S.REJECTED, S.STALLED, S.IN_DOUBT})
#: Longest the dispatcher sleeps before looking at the ledger again (scaled).
MAX_IDLE_S: Final = 5.0
#: DESIGN's default ``max_wait``: the stall ceiling before render times are learned.
DEFAULT_MAX_WAIT: Final = 2 * 3600.0
#: Longest a server's Retry-After holds back submissions (a longer one is more likely a
#: skewed clock than a real request; the next 429 says so again if it is real).
MAX_SUBMIT_PAUSE_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How hard to push. Every duration is in real seconds, multiplied by ``time_scale``."""

    rate_per_minute: float | None = 60.0
    concurrency: int = 8
    max_active: int = 32
    #: The least time between two polls of one task (the docs suggest 10-20 s).
    poll_interval: float = 10.0
    #: Give up on a task still running after this long.  ``None``: learn a ceiling
    #: from render times (see ``poll_policy``), with DEFAULT_MAX_WAIT until there is history.
    max_wait: float | None = None
    download: bool = True
    #: False: only poll and download what is already paid for; submit nothing new.
    submit: bool = True
    #: < 1 for a simulator whose renders run faster than real time.
    time_scale: float = 1.0
    #: Download tries per job per run before it is left ``completed`` for the next run.
    download_attempts: int = 5
    budget_usd: float | None = None

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def poll_policy(self) -> PollPolicy:
        """The poll schedule and stall rule these options ask for."""
        return PollPolicy(
            floor_s=self.poll_interval,
            max_wait_s=DEFAULT_MAX_WAIT if self.max_wait is None else self.max_wait,
            fixed_max_wait=self.max_wait is not None,
            scale=self.time_scale,
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Progress at one instant, for a live display."""

    batch: str
    counts: dict[str, int]
    in_flight: int
    finished_this_run: int
    elapsed_s: float
    recent_failures: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(slots=True)
class RunReport:
    """How a run ended. ``exit_code`` follows DESIGN.md."""

    batch: str
    counts: dict[str, int]
    output_dir: Path
    elapsed_s: float
    interrupted: bool = False
    recovered_in_doubt: int = 0
    budget_blocked: bool = False
    download: bool = True
    submitted: bool = True
    finished_this_run: int = 0
    failures: list[str] = field(default_factory=list)
    #: How often the dispatcher looked for work: about a few per job, never a spin.
    dispatch_rounds: int = 0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        total = sum(self.counts.values())
        done = self.counts.get(S.DOWNLOADED, 0)
        if not self.download:
            done += self.counts.get(S.COMPLETED, 0)
        return 0 if total and done == total else 1


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
        self.client = client
        self.batch = batch
        self.output_dir = output_dir
        self.options = options
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = anyio.Event()
        self._busy: set[int] = set()
        #: Jobs whose worker failed unexpectedly: left alone until the next run.
        self._quarantined: set[int] = set()
        #: Busy jobs per kind of work: a look for work of one kind skips only those.
        self._busy_kind: dict[str, int] = {"download": 0, "poll": 0, "submit": 0}
        self._unsent_claims = 0
        self._unsent_cost = 0.0
        self._stopping = False
        #: Why the run must stop for every job (401, or the service refusing creates).
        self._fatal: AuthError | ServiceRefused | None = None
        self._budget_blocked = False
        self._download_tries: dict[int, int] = {}
        self._download_after: dict[int, float] = {}
        # Hints that spare the dispatcher queries that cannot find anything new:
        # set when a worker may have made work of that kind, cleared when a look
        # found less than it asked for (it saw everything there was).
        self._look_for_downloads = True
        self._look_for_pending = True
        self._submit_pause_until = 0.0
        self._submit_setbacks = 0
        #: Render times learned (this ledger's history first), and the poll policy over them.
        self._renders = RenderBook(
            options.poll_policy(), history=lambda combo: ledger.render_samples(*combo)
        )
        self._started = clock()
        self._finished_this_run = 0
        self._failures: deque[str] = deque(maxlen=8)
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
            self._finished_this_run,
            self._clock() - self._started,
            tuple(self._failures),
        )

    async def run(self) -> RunReport:
        """Drive the batch until every job is terminal for this run, or a stop.

        Raises AuthError at once on a 401, ServiceRefused when the API refuses
        creates for reasons not the job's (403, 404...); nothing is marked failed
        or rejected for either, and the jobs concerned stay pending.
        """
        recovered = self.ledger.recover_interrupted(self.batch)
        if recovered:
            self._failures.append(
                f"{recovered} job(s) were being submitted when the last run stopped: in doubt"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        async with anyio.create_task_group() as tg:
            await self._dispatch(tg)
            # Stopping or done: let requests in flight finish and be recorded.
            with anyio.move_on_after(self.options.scaled(30.0) + 5.0):
                while self._busy:
                    self._wake = anyio.Event()
                    await self._wake.wait()
            tg.cancel_scope.cancel()
        if self._fatal is not None:
            raise self._fatal
        return RunReport(
            batch=self.batch,
            counts={str(s): n for s, n in self.ledger.counts(self.batch).items()},
            output_dir=self.output_dir,
            elapsed_s=self._clock() - self._started,
            interrupted=self._stopping,
            recovered_in_doubt=recovered,
            budget_blocked=self._budget_blocked,
            download=self.options.download,
            submitted=self.options.submit,
            finished_this_run=self._finished_this_run,
            failures=list(self._failures),
            dispatch_rounds=self._rounds,
        )

    # -- the dispatcher --------------------------------------------------------

    async def _dispatch(self, tg: TaskGroup) -> None:
        while not self._stopping:
            # A fresh event before looking: a worker finishing while we wait sets it.
            self._wake = anyio.Event()
            self._rounds += 1
            now = self._clock()
            free = self.options.concurrency - len(self._busy)
            if free > 0 and self.options.download:
                free -= self._start_downloads(tg, free, now)
            if free > 0:
                free -= self._start_polls(tg, min(free, self._poll_share()), now)
            if free > 0 and self._may_submit(now):
                free -= self._start_submits(tg, free)
            if free > 0:
                free -= self._start_polls(tg, free, now)
            if not self._busy and self._nothing_left(now):
                return
            with anyio.move_on_after(self._idle_for(now)):
                await self._wake.wait()

    def _poll_share(self) -> int:
        """Free slots offered to polls before submissions: a quarter of ``concurrency``.

        At least one; none at concurrency 1, where submissions simply come first
        (up to ``max_active``).  Slots already polling count towards the share.
        """
        if self.options.concurrency < 2:
            return 0
        share = max(1, self.options.concurrency // 4)
        return max(0, share - self._busy_kind["poll"])

    def _may_submit(self, now: float) -> bool:
        return (
            self.options.submit
            and not self._budget_blocked
            and self._fatal is None
            and now >= self._submit_pause_until
        )

    def _start_downloads(self, tg: TaskGroup, free: int, now: float) -> int:
        retry_due = any(at <= now for at in self._download_after.values())
        if not (self._look_for_downloads or retry_due):
            return 0
        limit = free + self._busy_kind["download"]
        jobs = self.ledger.completed_jobs(self.batch, limit=limit)
        # Seen them all only if the page was short and none was left for lack of room.
        self._look_for_downloads = len(jobs) >= limit
        started = 0
        for job in jobs:
            if started >= free:
                self._look_for_downloads = True
                break
            if job.id in self._busy or job.id in self._quarantined:
                continue
            if self._download_after.get(job.id, 0.0) > now:
                continue
            if self._download_tries.get(job.id, 0) >= self.options.download_attempts:
                continue
            self._spawn(tg, "download", self._download, job)
            started += 1
        return started

    def _start_polls(self, tg: TaskGroup, free: int, now: float) -> int:
        next_poll = self.ledger.next_poll_time(self.batch)
        if next_poll is None or next_poll > now:
            return 0
        started = 0
        for job in self.ledger.due_polls(self.batch, now, limit=free + self._busy_kind["poll"]):
            if started >= free:
                break
            if job.id in self._busy or job.id in self._quarantined:
                continue
            self._spawn(tg, "poll", self._poll, job)
            started += 1
        return started

    def _start_submits(self, tg: TaskGroup, free: int) -> int:
        if not self._look_for_pending:
            return 0
        room = self.options.max_active - self.ledger.active_count(self.batch) - self._unsent_claims
        wanted = min(free, room)
        if wanted <= 0:
            return 0
        budget = self.options.budget_usd
        committed = self.ledger.committed_cost(self.batch) + self._unsent_cost if budget else 0.0
        started = 0
        limit = wanted + self._busy_kind["submit"]
        jobs = self.ledger.pending_jobs(self.batch, limit=limit)
        self._look_for_pending = len(jobs) >= limit
        for job in jobs:
            if started >= wanted:
                self._look_for_pending = True
                break
            if job.id in self._busy or job.id in self._quarantined:
                continue
            cost = job.est_cost_usd or 0.0
            if budget is not None and committed + cost > budget + 1e-9:
                self._budget_blocked = True
                self._failures.append(
                    f"budget ${budget:,.2f} reached (${committed:,.2f} committed): "
                    "no more submissions"
                )
                break
            committed += cost
            self._unsent_claims += 1
            self._unsent_cost += cost
            self._spawn(tg, "submit", self._submit, job)
            started += 1
        return started

    def _spawn(
        self, tg: TaskGroup, kind: str, work: Callable[[JobRow], Awaitable[None]], job: JobRow
    ) -> None:
        self._busy.add(job.id)
        self._busy_kind[kind] += 1
        tg.start_soon(self._guarded, kind, work, job, name=f"{kind}-{job.id}")

    async def _guarded(
        self, kind: str, work: Callable[[JobRow], Awaitable[None]], job: JobRow
    ) -> None:
        try:
            await work(job)
        except (AuthError, ServiceRefused) as exc:
            self._fatal = self._fatal or exc
            self._stopping = True
        except Exception as exc:  # a bug, or the ledger changed under us (a `retry` meanwhile)
            # One job's surprise must not end an overnight batch, nor repeat in a
            # tight loop: the job sits out the rest of this run, with the reason.
            log.exception("%s of job %s failed", kind, job.id)
            self._quarantined.add(job.id)
            self._note_failure(job, f"{kind} stopped for this run: {type(exc).__name__}: {exc}")
        finally:
            self._busy.discard(job.id)
            self._busy_kind[kind] -= 1
            self._wake.set()

    def _nothing_left(self, now: float) -> bool:
        """True when no job can make progress in this run any more."""
        counts = self.ledger.counts(self.batch)
        workable = counts[S.SUBMITTING] + counts[S.QUEUED] + counts[S.IN_PROGRESS]
        if self._may_submit_ever():
            workable += counts[S.PENDING]
        if self.options.download:
            exhausted = sum(
                1
                for job_id, n in self._download_tries.items()
                if n >= self.options.download_attempts and job_id not in self._quarantined
            )
            workable += counts[S.COMPLETED] - exhausted
        # Quarantined jobs are among those counted, and wait for the next run.
        return workable - len(self._quarantined) <= 0

    def _may_submit_ever(self) -> bool:
        return self.options.submit and not self._budget_blocked and self._fatal is None

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
        retries = [at for at in self._download_after.values() if at > now]
        if retries:
            wake = min(wake, min(retries))
        if self._submit_pause_until > now:
            wake = min(wake, self._submit_pause_until)
        return wake - now

    # -- workers ---------------------------------------------------------------

    async def _submit(self, job: JobRow) -> None:
        sent = False
        # Decided before the request leaves: nothing may stand between a create's
        # answer and recording its task id (it reads the ledger the first time).
        first_poll = self._renders.first_poll_delay(_combo(job))

        def committing_intent() -> None:
            # Called after the rate limiter's grant, right before the request leaves.
            nonlocal sent
            if not sent:
                self.ledger.begin_submit(job.id)
                sent = True
                self._release_claim(job, still_pending=False)

        try:
            task = await self.client.create(job.to_request(), before_send=committing_intent)
        except (AuthError, ServiceRefused) as exc:
            # Answered, so no task was made: the job goes back to pending, unblamed.
            if sent:
                self.ledger.release_unsent(job.id, f"the API refused the create ({exc})")
                self._look_for_pending = True
            else:
                self._release_claim(job)
            raise
        except RejectedError as exc:
            self.ledger.record_rejected(job.id, exc.code, exc.message)
            self._note_failure(job, f"rejected: {exc.message}")
        except InDoubtError as exc:
            self.ledger.record_in_doubt(job.id, str(exc))
            self._note_failure(job, f"in doubt: {exc}")
        except RetryableError as exc:
            if sent:
                self.ledger.release_unsent(job.id, str(exc))
                self._look_for_pending = True
            else:
                self._release_claim(job)
            self._submit_setback(exc.retry_after)
        except (ApiError, OSError) as exc:  # e.g. a reference image vanished before sending
            if sent:
                self.ledger.record_in_doubt(job.id, f"create failed unexpectedly: {exc}")
            else:
                self._release_claim(job)
                self._failures.append(f"#{job.idx}: not submitted: {exc}")
                self._submit_setback()
        except BaseException:
            # Cancelled (a stop after the grace period) or a bug: the request may be out.
            if sent:
                with anyio.CancelScope(shield=True):
                    self.ledger.record_in_doubt(
                        job.id, "the run stopped while the create was in flight"
                    )
            else:
                self._release_claim(job)
            raise
        else:
            self._submit_setbacks = 0
            self.ledger.record_submitted(
                job.id,
                task.id,
                task.raw_status or None,
                self._clock() + first_poll,
                server_created_at=task.created_at,
            )

    def _release_claim(self, job: JobRow, *, still_pending: bool = True) -> None:
        """The job no longer holds an unsent claim: it was sent, or it is pending again."""
        self._unsent_claims -= 1
        self._unsent_cost -= job.est_cost_usd or 0.0
        if still_pending:
            self._look_for_pending = True

    def _submit_setback(self, retry_after: float | None = None) -> None:
        """Creates keep failing before reaching the API: back off all submissions.

        The pause doubles with each setback in a row (up to 5 min), and is at
        least the server's ``Retry-After`` when it gave one (up to an hour).
        """
        self._submit_setbacks += 1
        pause = self.options.scaled(min(300.0, 2.0 ** min(self._submit_setbacks, 9)))
        if retry_after is not None:
            pause = max(pause, min(retry_after, self.options.scaled(MAX_SUBMIT_PAUSE_S)))
        until = self._clock() + pause
        self._submit_pause_until = max(self._submit_pause_until, until)

    async def _poll(self, job: JobRow) -> None:
        assert job.task_id is not None
        now = self._clock()
        try:
            task = await self.client.retrieve(job.task_id)
        except TaskNotFound as exc:
            self.ledger.record_failed(job.id, "task_not_exist", exc.message)
            self._note_failure(job, f"task {job.task_id} is unknown upstream")
            return
        except ApiError as exc:
            # 429/5xx after the client's own retries, or an answer the docs do not
            # describe (a gateway's 404 or 403): the task may well be fine. Ask again
            # later; the stall rule still applies.
            stall = self._stall_reason(job, now)
            if stall is not None:
                self.ledger.record_stalled(job.id, f"{stall}; last answer: {exc}")
                self._note_failure(job, f"stalled: no usable answer ({exc})")
                return
            retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
            later = self._renders.policy.retry_delay(retry_after, self._rng.random())
            self.ledger.record_poll(
                job.id, job.remote_status, job.progress, now + later, seen_running=False
            )
            if not isinstance(exc, RetryableError):
                self._note_failure(job, f"poll answered {exc}; will ask again")
            return
        now = self._clock()
        if task.status is TaskStatus.COMPLETED:
            self._learn_render(job, task, now)
            self._look_for_downloads = True
            if not self.options.download:
                self._finished_this_run += 1
        elif task.status in (TaskStatus.FAILED, TaskStatus.ERROR):
            code, reason = failure_reason(task)
            self.ledger.record_failed(job.id, code, reason, remote_status=task.raw_status)
            self._note_failure(job, f"{code}: {reason}")
        elif (stall := self._stall_reason(job, now)) is not None:
            self.ledger.record_stalled(job.id, stall)
            self._note_failure(job, f"stalled: {stall}")
        else:
            born = job.answered_at if job.answered_at is not None else job.watch_started_at
            elapsed = now - (born if born is not None else now)
            delay = self._renders.next_poll_delay(_combo(job), elapsed, task.progress)
            self.ledger.record_poll(job.id, task.raw_status or None, task.progress, now + delay)

    def _learn_render(self, job: JobRow, task: Task, now: float) -> None:
        """Record a task seen done, with what it proves about its render time."""
        sample, estimate = None, None
        if job.sent_at is not None and job.answered_at is not None:
            sample = observe(
                sent_at=job.sent_at,
                answered_at=job.answered_at,
                seen_done_at=now,
                last_running_at=job.last_running_at,
                server_created_at=task.created_at
                if task.created_at is not None
                else job.server_created_at,
                server_completed_at=task.completed_at,
            )
        if sample is not None:
            estimate = self._renders.estimate(_combo(job), sample)
        self.ledger.record_completed(
            job.id,
            task.video_url,
            _expiry(task),
            remote_status=task.raw_status,
            server_created_at=task.created_at,
            server_completed_at=task.completed_at,
            render=sample,
            render_s=estimate,
        )
        if sample is not None and job.answered_at is not None:
            last = job.last_running_at
            self._renders.learn(
                _combo(job),
                sample,
                created_at=job.answered_at,
                last_running=None if last is None else (last - job.answered_at, job.progress),
            )

    def _stall_reason(self, job: JobRow, now: float) -> str | None:
        """Why a live task should be given up on for this run, or ``None``."""
        if job.watch_started_at is None:
            return None
        return self._renders.stall_reason(
            _combo(job),
            watched_s=now - job.watch_started_at,
            created_at=job.answered_at if job.answered_at is not None else job.watch_started_at,
        )

    async def _download(self, job: JobRow) -> None:
        assert job.task_id is not None
        dest = safe_destination(
            self.output_dir,
            job_filename(job.idx, job.prompt_id, job.prompt, job.model, job.size, job.take),
        )
        task_id = job.task_id

        async def refresh() -> str | None:
            task = await self.client.retrieve(task_id)
            if task.status is not TaskStatus.COMPLETED:
                raise DownloadError(f"task {task_id} is now {task.raw_status}, not completed")
            self.ledger.refresh_url(job.id, task.video_url or "", _expiry(task))
            return task.video_url

        try:
            source = Task(
                task_id, TaskStatus.COMPLETED, job.remote_status or "", video_url=job.video_url
            )
            result = await self.client.download(source, dest, refresh=refresh)
        except TaskNotFound as exc:
            self.ledger.record_failed(
                job.id, "task_not_exist", f"the task vanished before its download: {exc.message}"
            )
            self._note_failure(job, "task vanished upstream before its download")
        except AuthError:
            raise
        except (DownloadError, ApiError, OSError) as exc:  # AuthError is re-raised above
            tries = self._download_tries.get(job.id, 0) + 1
            self._download_tries[job.id] = tries
            self.ledger.record_download_error(job.id, str(exc))
            backoff = min(120.0, 2.0 * 2**tries) * self._rng.uniform(0.8, 1.2)
            if tries >= self.options.download_attempts:
                # Left completed for the next run; nothing more to schedule in this one.
                self._download_after.pop(job.id, None)
                self._note_failure(job, f"download failed {tries} times: {exc}")
            else:
                self._download_after[job.id] = self._clock() + self.options.scaled(backoff)
        else:
            self._download_after.pop(job.id, None)
            self.ledger.record_downloaded(job.id, str(result.path), result.size, result.sha256)
            self._finished_this_run += 1

    def _note_failure(self, job: JobRow, message: str) -> None:
        label = job.prompt_id or _clip(job.prompt, 30)
        self._failures.append(f"#{job.idx} {label}: {_clip(message, 160)}")


def _combo(job: JobRow) -> Combo:
    return (job.model, job.seconds, job.resolution)


def _expiry(task: Task) -> float | None:
    return url_expiry(task.video_url) if task.video_url else None


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
