"""Putting a batch together: plan → ledger → runner, with its client and limiter.

``prepare`` records a plan in the ledger (upsert by job key: new keys become
``pending``, known keys keep everything the ledger learned).  ``run_batch``
opens the one shared HTTP client and rate limiter (and, for ``--simulate``,
the built-in simulator in-process) and drives a :class:`~batchvid.run.dispatcher.Runner`.

On SQLite, ``batch_lock`` (:mod:`batchvid.ledger.lock`) keeps two processes
from running the same batch at once.  On a shared ledger (PostgreSQL) any
number may: each joins the batch as a worker with a lease
(:mod:`batchvid.run.lease`), and the rate limit is one bucket in the ledger
shared by every worker with the same endpoint and key
(:class:`~batchvid.remote.shared_rate.SharedRateLimiter`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread

from ..errors import BatchvidError, LedgerError
from ..ledger.lock import batch_lock
from ..ledger.port import CALL_TIMEOUT_S, RunLedger
from ..ledger.rows import NewJob, StoredReference
from ..ledger.store import DEFAULT_LEDGER, Ledger, open_ledger
from ..ledger.target import LedgerTarget
from ..manifest.model import Limits
from ..manifest.plan import Plan, load_plan
from ..outputs import OutputTarget, S3Outputs, output_target
from ..remote.client import CometClient
from ..remote.ratelimit import RateLimiter
from ..remote.shared_rate import SharedRateLimiter
from ..states import PAID_UNFINISHED_STATES
from .clock import SteadyClock
from .dispatcher import Runner
from .lease import DEFAULT_LEASE_S, Lease
from .options import RunOptions, RunReport

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_LEDGER",
    "SIMULATOR_ENDPOINT",
    "Endpoint",
    "Prepared",
    "batch_lock",
    "ledger_jobs",
    "open_ledger",
    "options_for",
    "prepare",
    "prepare_resume_only",
    "run_batch",
    "run_manifest",
]

DEFAULT_BASE_URL: Final = "https://api.cometapi.com"
#: What the ledger records as the endpoint of a ``--simulate`` batch.
SIMULATOR_ENDPOINT: Final = "simulator"
#: The simulator's clock for ``--simulate``: a 60 s render takes 0.6 s.
SIMULATE_TIME_SCALE: Final = 0.01


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: a base URL and its key, or the in-process simulator."""

    base_url: str | None = None
    api_key: str | None = None
    simulate: bool = False

    @property
    def name(self) -> str:
        return SIMULATOR_ENDPOINT if self.simulate else (self.base_url or DEFAULT_BASE_URL)

    def __repr__(self) -> str:  # never show the key
        return f"Endpoint({self.name!r})"


@dataclass(frozen=True, slots=True)
class Prepared:
    batch: str
    #: The folder the videos are written to: the output folder, or for a store the spool.
    output_dir: Path
    new_jobs: int
    known_jobs: int
    #: Never-sent jobs that left the manifest since the last run (dropped).
    dropped_jobs: int = 0
    #: The store the videos go to (``s3://``), or ``None``: the folder is where they stay.
    store: OutputTarget | None = None


def options_for(limits: Limits, overrides: dict[str, Any]) -> RunOptions:
    """RunOptions from the manifest's ``limits``, with command-line flags winning."""
    options = RunOptions()
    from_manifest = {
        "rate_per_minute": limits.rate_per_minute,
        "concurrency": limits.concurrency,
        "max_active": limits.max_active_tasks,
        "max_wait": limits.max_wait,
        "poll_interval": limits.poll_interval,
    }
    merged: dict[str, Any] = {k: v for k, v in from_manifest.items() if v is not None}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return replace(options, **merged)


def output_dir_for(plan: Plan, ledger: LedgerTarget, output: str | None = None) -> OutputTarget:
    """``output`` (``--output-dir``), else the manifest's ``output_dir``, else
    ``videos/<batch>`` beside the ledger's file (for a PostgreSQL ledger,
    ``state/videos/<batch>`` here).  A folder comes back resolved."""
    chosen = output if output is not None else plan.manifest.output_dir
    if chosen is None:
        home = ledger.path.resolve().parent if ledger.path is not None else DEFAULT_LEDGER.parent
        chosen = home / "videos" / plan.batch
    target = output_target(chosen)
    return target if target.path is None else OutputTarget(path=target.path.resolve())


def spool_for(ledger: LedgerTarget, batch: str) -> Path:
    """Where the videos of a batch kept in a store are fetched and checked first:
    ``BATCHVID_SPOOL``, else ``spool/`` beside an SQLite ledger's file (for a
    PostgreSQL ledger, ``state/spool`` here), one folder per batch."""
    root = os.environ.get("BATCHVID_SPOOL")
    if root:
        home = Path(root).expanduser()
    elif ledger.path is not None:
        home = ledger.path.resolve().parent / "spool"
    else:
        home = DEFAULT_LEDGER.parent / "spool"
    return (home / batch).resolve()


def _prepared(
    batch: str, target: OutputTarget, ledger: LedgerTarget, new: int, known: int, dropped: int = 0
) -> Prepared:
    """Where a batch's videos go: a folder, or a store through the spool."""
    if target.path is not None:
        return Prepared(batch, target.path, new, known, dropped)
    return Prepared(batch, spool_for(ledger, batch), new, known, dropped, store=target)


def prepare(
    ledger: Ledger, plan: Plan, endpoint: Endpoint, *, output: str | None = None
) -> Prepared:
    """Record the plan's batch and jobs in the ledger; refuse to mix endpoints.

    A batch whose tasks were created on one endpoint cannot be polled on another
    (a simulator's task ids mean nothing to the real API, and vice versa).  On a
    shared ledger where other workers run the batch, never-sent jobs the
    manifest no longer lists are left alone (those workers may run a newer one).
    ``output``: where the videos go (``--output-dir``: a folder or ``s3://``),
    over the manifest's ``output_dir``.
    """
    reads, plans = ledger.reads, ledger.plans
    if ledger.shared:  # workers gone from the ledger leave no row locks behind
        ledger.leases.end_gone()
    existing = reads.get_batch(plan.batch)
    known_endpoint = existing.endpoint if existing else None
    if existing is not None and known_endpoint and known_endpoint != endpoint.name:
        has_tasks = any(j.task_id for j in reads.jobs(plan.batch))
        if has_tasks:
            raise BatchvidError(
                f"batch {plan.batch!r} in this ledger ran against {known_endpoint}, not "
                f"{endpoint.name}; its task ids mean nothing there. Use another --ledger "
                "or another batch name."
            )
    target = output_dir_for(plan, ledger.target, output)
    manifest = plan.manifest
    limits = {k: v for k, v in vars_of(manifest.limits).items() if v is not None}
    plans.upsert_batch(
        plan.batch,
        manifest_path=manifest.path.resolve(),
        manifest_sha256=manifest.sha256,
        output_dir=target.uri,
        limits=limits,
        pricing=manifest.pricing,
        budget_usd=manifest.budget_usd,
        endpoint=endpoint.name,
    )
    new = plans.upsert_jobs(plan.batch, ledger_jobs(plan))
    dropped = 0
    if not (ledger.shared and ledger.leases.live(plan.batch)):
        dropped = plans.drop_unsent(plan.batch, (job.key for job in plan.jobs))
    return _prepared(plan.batch, target, ledger.target, new, len(plan.jobs) - new, dropped)


def ledger_jobs(plan: Plan) -> Iterator[NewJob]:
    """The plan's jobs as the ledger records them, each with its estimated cost."""
    for job in plan.jobs:
        references = tuple(
            StoredReference(str(r.path), r.sha256, r.content_type) for r in job.references
        )
        yield NewJob(
            job.key, job.index, job.prompt, job.model, job.seconds, job.size, job.resolution,
            job.take, job.prompt_id, references, job.axes, plan.cost_of(job),
        )  # fmt: skip


def prepare_resume_only(ledger: Ledger, batch: str, endpoint: Endpoint) -> Prepared | None:
    """For a manifest that no longer validates: the batch as the ledger knows it.

    Resuming never re-validates work that is already paid for, so its tasks
    are still polled and downloaded (nothing new is submitted).  ``None`` when
    the ledger has no such batch or nothing in it is waiting on the API.
    """
    row = ledger.reads.get_batch(batch)
    if row is None:
        return None
    counts, extras = ledger.reads.counts(batch), ledger.reads.counts(batch, extras=True)
    waiting = sum(counts[s] + extras[s] for s in PAID_UNFINISHED_STATES)
    if not waiting:
        return None
    if row.endpoint and row.endpoint != endpoint.name:
        raise BatchvidError(
            f"batch {batch!r} in this ledger ran against {row.endpoint}, not {endpoint.name}"
        )
    target = output_target(row.output_dir)
    return _prepared(batch, target, ledger.target, 0, sum(counts.values()))


def vars_of(limits: Limits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in limits.__slots__}


def _client(base_url: str, api_key: str, limiter: Limiter, time_scale: float) -> CometClient:
    # A simulator on a fast clock gets its retry waits on the same clock.
    return CometClient(
        base_url, api_key, limiter=limiter, wait_initial=0.5 * time_scale,
        wait_max=30.0 * time_scale, wait_jitter=1.0 * time_scale,
    )  # fmt: skip


Limiter = RateLimiter | SharedRateLimiter


@contextlib.asynccontextmanager
async def _endpoint_client(
    endpoint: Endpoint, limiter: Limiter, time_scale: float
) -> AsyncIterator[CometClient]:
    if endpoint.simulate:
        # Imported here: the web server stack is only needed for --simulate.
        from ..sim.config import SimConfig
        from ..sim.server import serve_simulator

        async with (
            serve_simulator(SimConfig(time_scale=time_scale)) as sim,
            _client(sim.base_url, sim.api_key, limiter, time_scale) as client,
        ):
            yield client
        return
    if not endpoint.api_key:
        raise BatchvidError("no API key: set COMETAPI_KEY (or use --simulate)")
    base_url = endpoint.base_url or DEFAULT_BASE_URL
    async with _client(base_url, endpoint.api_key, limiter, time_scale) as client:
        yield client


def _limiter(ledger: RunLedger, endpoint: Endpoint, options: RunOptions) -> Limiter:
    """One rate for every request: this process's own, or on a shared ledger the bucket
    every worker using this endpoint and key shares."""
    window = 60.0 * options.time_scale
    if not ledger.shared or options.rate_per_minute is None or endpoint.simulate:
        return RateLimiter(options.rate_per_minute, window=window)
    # Keyed by a hash: the key itself is never written to the ledger.
    secret = f"{endpoint.name}\n{endpoint.api_key or ''}".encode()
    key = hashlib.sha256(b"batchvid rate bucket\n" + secret).hexdigest()[:32]
    return SharedRateLimiter(
        lambda change: ledger.call(ledger.buckets.update, key, change),
        options.rate_per_minute,
        window=window,
    )


async def run_batch(
    ledger: Ledger,
    prepared: Prepared,
    endpoint: Endpoint,
    options: RunOptions,
    *,
    on_runner: Callable[[Runner], None] | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> RunReport:
    """Run a prepared batch to the end (or a stop); the runner is handed to ``on_runner``.

    On a shared ledger this process joins the batch as a worker whose lease
    lasts ``lease_s`` seconds (scaled by ``options.time_scale``) past its last
    heartbeat, and leaves it at the end, handing back what it held.
    """
    if endpoint.simulate and options.time_scale == 1.0:
        options = replace(options, time_scale=SIMULATE_TIME_SCALE)
    length = lease_s * options.time_scale
    # A ledger call that has not answered in half a lease is one the lease cannot wait for.
    port = RunLedger(ledger, timeout=min(CALL_TIMEOUT_S, max(2.0, length / 2)))
    clock = SteadyClock()
    lease = None
    reports: list[RunReport] = []
    errors: list[BatchvidError] = []
    try:
        store = None
        if prepared.store is not None:  # a store that cannot be used: before anything is paid
            store = S3Outputs(prepared.store)
            await anyio.to_thread.run_sync(store.check)
        if port.shared:
            joined = clock()
            worker = await port.call(
                port.leases.join, prepared.batch, length, alone=endpoint.simulate
            )
            lease = Lease(worker, length, confirmed_at=joined)
        limiter = _limiter(port, endpoint, options)
        async with (
            _endpoint_client(endpoint, limiter, options.time_scale) as client,
            anyio.create_task_group() as tg,  # the shared limiter's 429s: closed first
        ):
            if isinstance(limiter, SharedRateLimiter):
                tg.start_soon(limiter.share_penalties)
            runner = Runner(
                port,
                client,
                prepared.batch,
                prepared.output_dir,
                options,
                clock=clock,
                lease=lease,
                store=store,
            )
            if on_runner is not None:
                on_runner(runner)
            try:
                reports.append(await runner.run())
            except BatchvidError as exc:  # raised after the group, not in an ExceptionGroup
                errors.append(exc)
            finally:
                tg.cancel_scope.cancel()
        if errors:
            raise errors[0]
        return reports[0]
    finally:
        if lease is not None:
            with anyio.CancelScope(shield=True):
                await _leave(port, lease, prepared.batch)
        port.close()


async def _leave(port: RunLedger, lease: Lease, batch: str) -> None:
    """Hand back what this worker holds; a create it left in flight is in doubt now."""
    with contextlib.suppress(LedgerError):  # else its lease ends by itself, and others do it
        await port.call(port.leases.leave, lease.worker)
        await port.call(port.plans.recover_interrupted, batch)


async def run_manifest(
    manifest: str | Path,
    *,
    ledger_path: str | Path | LedgerTarget = DEFAULT_LEDGER,
    endpoint: Endpoint | None = None,
    options: RunOptions | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> RunReport:
    """Plan MANIFEST, record it in the ledger and run it to the end: ``batchvid run`` as a call.

    ``ledger_path``: a file (SQLite) or a ``postgresql://`` URL.  ``endpoint``
    defaults to the built-in simulator; pass ``Endpoint(base_url, api_key)`` for
    CometAPI.  ``options`` default to the manifest's ``limits``, ``budget_usd``
    and ``retry``.  Raises ManifestError for an invalid manifest (nothing is
    sent), LedgerError when another process runs the batch on SQLite, AuthError
    on a 401.
    """
    plan = load_plan(manifest)
    endpoint = endpoint or Endpoint(simulate=True)
    if options is None:
        options = replace(
            options_for(plan.manifest.limits, {}),
            budget_usd=plan.manifest.budget_usd,
            retry=plan.manifest.retry,
        )
    with open_ledger(ledger_path, check=True) as ledger, batch_lock(ledger, plan.batch):
        prepared = prepare(ledger, plan, endpoint)
        return await run_batch(ledger, prepared, endpoint, options, lease_s=lease_s)
