"""Putting a batch together: plan → ledger → runner, with its client and limiter.

``prepare`` records a plan in the ledger (upsert by job key: new keys become
``pending``, known keys keep everything the ledger learned).  ``run_batch``
opens the one shared HTTP client and rate limiter (and, for ``--simulate``,
the built-in simulator in-process) and drives a :class:`~batchvid.run.dispatcher.Runner`.
``batch_lock`` keeps two processes from running the same batch at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from ..errors import BatchvidError, LedgerError
from ..ledger.rows import NewJob, StoredReference
from ..ledger.store import DEFAULT_LEDGER, Ledger, open_ledger
from ..manifest.model import Limits
from ..manifest.plan import Plan, load_plan
from ..remote.client import CometClient
from ..remote.ratelimit import RateLimiter
from ..states import PAID_UNFINISHED_STATES
from .dispatcher import Runner
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
    output_dir: Path
    new_jobs: int
    known_jobs: int
    #: Never-sent jobs that left the manifest since the last run (dropped).
    dropped_jobs: int = 0


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


def output_dir_for(plan: Plan, ledger_path: Path) -> Path:
    """The manifest's ``output_dir``, else ``videos/<batch>`` beside the ledger."""
    if plan.manifest.output_dir is not None:
        return plan.manifest.output_dir.resolve()
    return (ledger_path.resolve().parent / "videos" / plan.batch).resolve()


def prepare(ledger: Ledger, plan: Plan, endpoint: Endpoint, ledger_path: Path) -> Prepared:
    """Record the plan's batch and jobs in the ledger; refuse to mix endpoints.

    A batch whose tasks were created on one endpoint cannot be polled on another
    (a simulator's task ids mean nothing to the real API, and vice versa).
    """
    existing = ledger.get_batch(plan.batch)
    known_endpoint = existing.endpoint if existing else None
    if existing is not None and known_endpoint and known_endpoint != endpoint.name:
        has_tasks = any(j.task_id for j in ledger.jobs(plan.batch))
        if has_tasks:
            raise BatchvidError(
                f"batch {plan.batch!r} in this ledger ran against {known_endpoint}, not "
                f"{endpoint.name}; its task ids mean nothing there. Use another --ledger "
                "or another batch name."
            )
    output_dir = output_dir_for(plan, ledger_path)
    manifest = plan.manifest
    limits = {k: v for k, v in vars_of(manifest.limits).items() if v is not None}
    ledger.upsert_batch(
        plan.batch,
        manifest_path=manifest.path.resolve(),
        manifest_sha256=manifest.sha256,
        output_dir=output_dir,
        limits=limits,
        pricing=manifest.pricing,
        budget_usd=manifest.budget_usd,
        endpoint=endpoint.name,
    )
    new = ledger.upsert_jobs(plan.batch, ledger_jobs(plan))
    dropped = ledger.drop_unsent(plan.batch, (job.key for job in plan.jobs))
    return Prepared(plan.batch, output_dir, new, len(plan.jobs) - new, dropped)


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
    row = ledger.get_batch(batch)
    if row is None:
        return None
    counts, extras = ledger.counts(batch), ledger.counts(batch, extras=True)
    waiting = sum(counts[s] + extras[s] for s in PAID_UNFINISHED_STATES)
    if not waiting:
        return None
    if row.endpoint and row.endpoint != endpoint.name:
        raise BatchvidError(
            f"batch {batch!r} in this ledger ran against {row.endpoint}, not {endpoint.name}"
        )
    return Prepared(batch, Path(row.output_dir), 0, sum(counts.values()), 0)


def vars_of(limits: Limits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in limits.__slots__}


@contextlib.contextmanager
def batch_lock(ledger_path: Path, batch: str) -> Iterator[None]:
    """Hold an exclusive lock on one batch of one ledger for as long as it runs.

    Two runs of one batch would each think the other's in-flight creates were
    interrupted; the second one is refused instead.  The lock dies with the
    process (kill -9 included), so it never needs cleaning up.
    """
    real = ledger_path.resolve()  # one lock however the ledger's path is spelled (symlinks)
    lock_path = real.parent / f".{real.name}.{batch}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise LedgerError(
                f"batch {batch!r} is already being run by another batchvid process "
                f"(pid {holder}); wait for it or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _client(base_url: str, api_key: str, limiter: RateLimiter, time_scale: float) -> CometClient:
    # A simulator on a fast clock gets its retry waits on the same clock.
    return CometClient(
        base_url, api_key, limiter=limiter, wait_initial=0.5 * time_scale,
        wait_max=30.0 * time_scale, wait_jitter=1.0 * time_scale,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def _endpoint_client(
    endpoint: Endpoint, limiter: RateLimiter, time_scale: float
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


async def run_batch(
    ledger: Ledger,
    prepared: Prepared,
    endpoint: Endpoint,
    options: RunOptions,
    *,
    on_runner: Callable[[Runner], None] | None = None,
) -> RunReport:
    """Run a prepared batch to the end (or a stop); the runner is handed to ``on_runner``."""
    if endpoint.simulate and options.time_scale == 1.0:
        options = replace(options, time_scale=SIMULATE_TIME_SCALE)
    limiter = RateLimiter(options.rate_per_minute, window=60.0 * options.time_scale)
    async with _endpoint_client(endpoint, limiter, options.time_scale) as client:
        runner = Runner(ledger, client, prepared.batch, prepared.output_dir, options)
        if on_runner is not None:
            on_runner(runner)
        return await runner.run()


async def run_manifest(
    manifest: str | Path,
    *,
    ledger_path: str | Path = DEFAULT_LEDGER,
    endpoint: Endpoint | None = None,
    options: RunOptions | None = None,
) -> RunReport:
    """Plan MANIFEST, record it in the ledger and run it to the end: ``batchvid run`` as a call.

    ``endpoint`` defaults to the built-in simulator; pass
    ``Endpoint(base_url, api_key)`` for CometAPI.  ``options`` default to the
    manifest's ``limits``, ``budget_usd`` and ``retry``.  Raises ManifestError for
    an invalid manifest (nothing is sent), LedgerError when another process runs
    the batch, AuthError on a 401.
    """
    plan = load_plan(manifest)
    endpoint = endpoint or Endpoint(simulate=True)
    path = Path(ledger_path)
    if options is None:
        options = replace(
            options_for(plan.manifest.limits, {}),
            budget_usd=plan.manifest.budget_usd,
            retry=plan.manifest.retry,
        )
    with open_ledger(path, check=True) as ledger, batch_lock(path, plan.batch):
        prepared = prepare(ledger, plan, endpoint, path)
        return await run_batch(ledger, prepared, endpoint, options)
