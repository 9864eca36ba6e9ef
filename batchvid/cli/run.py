"""``batchvid run``: the command that drives a batch through the API to the end.

Printing, signals and the live display live here; the work is in
:mod:`batchvid.run.batch` and :mod:`batchvid.run.dispatcher`.  ``status`` and ``retry``,
which only read and edit the ledger, are in :mod:`batchvid.cli.ledger`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio
import click

from ..errors import BatchvidError, ManifestError
from ..ledger.store import Ledger
from ..ledger.target import LedgerTarget
from ..manifest.model import MAX_RETRIES, RETRY_KEYS, Limits, Retries
from ..manifest.plan import batch_name_of, load_plan
from ..outputs import S3Outputs
from ..report.advice import next_steps
from ..run.batch import (
    DEFAULT_BASE_URL,
    Endpoint,
    Prepared,
    batch_lock,
    open_ledger,
    options_for,
    output_dir_for,
    prepare,
    prepare_resume_only,
    run_batch,
)
from ..run.dispatcher import Runner
from ..run.lease import DEFAULT_LEASE_S
from ..run.options import RunOptions, RunReport, Snapshot
from ..states import TERMINAL_STATES, JobState
from ..text import span
from .common import ORDER as _ORDER
from .common import Exit, print_issues
from .common import count as _count
from .ledger import ledger_option, ledger_target_of

__all__ = ["exit_code_of", "run"]


def exit_code_of(report: RunReport) -> int:
    """DESIGN.md's exit code for a run that ended (a 401 or a refusal never gets here)."""
    if report.interrupted:
        return Exit.INTERRUPTED
    return Exit.OK if report.all_done else Exit.UNFINISHED


#: ``batchvid run --help``: what a run does, how it ends, and its exit codes.
RUN_HELP = """Submit, poll and download every job of MANIFEST; resumable at any time.

Jobs are recorded in the ledger before anything is sent. Run the same
command again after an interruption (Ctrl-C, a crash, a sleeping laptop):
finished jobs are skipped, tasks already created are polled and
downloaded, and nothing is created twice. An edited manifest adds only
its new jobs.

A create whose answer was lost is marked in_doubt and never retried on
its own, by any policy: it may have been billed. `batchvid retry BATCH
--in-doubt` resubmits such jobs when you decide to.

Automatic retries (the manifest's `retry:`, or --retry): ERROR gets 2 new
attempts, a vanished task 1, FAILED and stalled none unless you ask; each
is a new, billed task within budget_usd, 30 s ... 10 min apart. A stalled
or vanished task is watched on (every 5 min, up to 2 h; the run waits),
and its video, if it comes, kept as an extra take.

\b
A run always ends. Downloads get 5 tries per run (4, 8, 16, 32 s apart;
the signed URL, one refresh, then /v1/videos/{id}/content); jobs whose
tries are spent stay completed for the next run. A full disk pauses
downloads and new creates (stopping after 10 minutes), a ledger locked
by another program pauses everything (5 minutes); nothing is marked
failed for either.

\b
Exit codes: 0 every job downloaded; 1 finished, but some jobs failed,
were rejected, stalled, are in doubt or still to download, or a fault
stopped the run; 2 invalid manifest, usage, a damaged ledger, or a store
(--output-dir s3://...) that cannot be used: checked before anything is paid;
3 the API refused the key; 130 interrupted (the ledger is consistent).

\b
Videos in an S3-compatible store (output_dir or --output-dir s3://BUCKET/PREFIX):
each is fetched to a local spool, checked, and put with a conditional put that
never replaces an object; posters go to PREFIX/posters/. A store that stops
answering pauses downloads and new creates (stopping after 10 minutes).

\b
Many workers, one batch: with --ledger postgresql://... (or BATCHVID_LEDGER)
start this same command on as many machines as you like, at any time;
they share the jobs, the rate limit, max_active_tasks and budget_usd.
A worker that dies is taken over after --lease seconds.

The API key comes from COMETAPI_KEY and is sent only to the API host.
"""


@click.command(help=RUN_HELP)
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--simulate",
    is_flag=True,
    help="Run against the built-in simulator (in-process, 127.0.0.1, renders 100x faster). "
    "No key, no cost; the videos are real, tiny MP4s.",
)
@click.option(
    "--base-url",
    metavar="URL",
    help=f"API base URL [env COMETAPI_BASE_URL; default {DEFAULT_BASE_URL}].",
)
@ledger_option
@click.option(
    "--output-dir",
    metavar="DIR|s3://BUCKET/PREFIX",
    help="Where the videos go: a folder, or an S3-compatible store (AWS, MinIO, R2, B2; "
    "credentials and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, "
    "AWS_ENDPOINT_URL, AWS_ALLOW_HTTP=true for http://) [manifest output_dir; default "
    "videos/BATCH beside the ledger].",
)
@click.option(
    "--rate-per-minute",
    type=click.FloatRange(min=0),
    help="API requests per minute, all kinds together; 0 for no limit "
    "[manifest limits; default 60].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="API requests in flight at once; downloads (from the CDN) get as many slots of "
    "their own [manifest limits; default 8].",
)
@click.option(
    "--max-active",
    type=click.IntRange(min=1),
    help="Tasks rendering upstream at once [manifest limits.max_active_tasks; default 32].",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=10),
    metavar="SECONDS",
    help="The least time between two polls of one task; at least 10, as the docs "
    "suggest [manifest limits; default 10]. When to poll is learned from render times.",
)
@click.option(
    "--no-download", is_flag=True, help="Stop at 'completed': do not download the videos."
)
@click.option(
    "--no-probe",
    is_flag=True,
    help="Do not open downloaded videos: no check that they decode, no size comparison, "
    "no posters (saves 7-12 ms of CPU a 720p video). By default a file that does not "
    "decode is fetched once more, then its job fails 'undecodable' (never re-created) "
    "and the bytes are kept as NAME.mp4.undecodable.",
)
@click.option(
    "--retry",
    "retry_flags",
    multiple=True,
    metavar="KIND=N",
    callback=lambda _ctx, _param, value: _retry_flags(value),
    help="New attempts a job gets automatically after an outcome of KIND: error, failed, "
    "vanished or stalled (repeat it: --retry error=3 --retry stalled=1) [manifest retry; "
    "default error=2 failed=0 vanished=1 stalled=0]. in_doubt is never retried automatically.",
)
@click.option(
    "--lease",
    "lease_s",
    type=click.FloatRange(min=1),
    default=DEFAULT_LEASE_S,
    show_default=True,
    metavar="SECONDS",
    help="On a postgresql:// ledger: how long this worker's jobs stay its own after its last "
    "heartbeat (one every third of it). A worker killed or cut off is taken over by the "
    "others about this long after; it stops creating once a third of it has gone by "
    "unrenewed. Scaled by --time-scale.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True, max=1),
    metavar="FACTOR",
    help="For a simulator started with the same --time-scale: shrink every wait the "
    "runner itself chooses (poll spacing, the first poll, max_wait, the rate window). "
    "Leave at 1 for CometAPI.",
)
def run(
    manifest: str,
    simulate: bool,
    base_url: str | None,
    ledger: str | None,
    output_dir: str | None,
    rate_per_minute: float | None,
    concurrency: int | None,
    max_active: int | None,
    poll_interval: float | None,
    no_download: bool,
    no_probe: bool,
    retry_flags: dict[str, int],
    lease_s: float,
    time_scale: float | None,
) -> None:
    """``batchvid run`` (its help is :data:`RUN_HELP`)."""
    ledger_path = ledger_target_of(ledger)
    endpoint = _endpoint(simulate, base_url)
    flags = _Flags(
        {
            "rate_per_minute": rate_per_minute,
            "concurrency": concurrency,
            "max_active": max_active,
            "poll_interval": poll_interval,
        },
        retry_flags,
        download=not no_download,
        probe=not no_probe,
        time_scale=time_scale,
    )
    try:
        plan = load_plan(manifest)
    except ManifestError as exc:
        _finish_paid_work(exc, manifest, ledger_path, endpoint, flags.options, lease_s)
        raise  # nothing waits on the API: the CLI group prints every issue, exit 2
    print_issues(plan.warnings)
    options = flags.options(plan.manifest.limits, plan.manifest.budget_usd, plan.manifest.retry)
    videos = output_dir_for(plan, ledger_path, output_dir)
    if videos.is_store:  # before the ledger records it as the batch's: a store that works
        S3Outputs(videos).check()
    with open_ledger(ledger_path, check=True) as store, batch_lock(store, plan.batch):
        prepared = prepare(store, plan, endpoint, output=output_dir)
        _announce(plan.batch, len(plan.jobs), prepared, endpoint, store)
        report = anyio.run(_run_with_display, store, prepared, endpoint, options, lease_s)
    _print_summary(report, ledger_path, manifest)
    click.get_current_context().exit(exit_code_of(report))


@dataclass(frozen=True, slots=True)
class _Flags:
    """The run's flags, applied over a manifest's (or a ledger's) settings."""

    overrides: dict[str, Any]
    retry: dict[str, int]
    download: bool
    probe: bool
    time_scale: float | None

    def options(self, limits: Limits, budget: float | None, retry: Retries) -> RunOptions:
        options = options_for(limits, self.overrides)
        if self.overrides["rate_per_minute"] == 0:
            options = replace(options, rate_per_minute=None)
        options = replace(
            options,
            download=self.download,
            budget_usd=budget,
            retry=replace(retry, **self.retry),
            probe=self.probe,
        )
        return options if self.time_scale is None else replace(options, time_scale=self.time_scale)


def _retry_flags(values: tuple[str, ...]) -> dict[str, int]:
    """``--retry error=3 --retry stalled=1`` as ``{"error": 3, "stalled": 1}``."""
    flags: dict[str, int] = {}
    for value in values:
        kind, _, count = value.partition("=")
        kind = kind.strip().replace("-", "_")
        if kind not in RETRY_KEYS:
            never = " (in_doubt jobs are never retried automatically)" if kind == "in_doubt" else ""
            raise click.BadParameter(
                f"{value!r}: KIND is one of {', '.join(RETRY_KEYS)}{never}", param_hint="--retry"
            )
        if not count.strip().isdigit() or int(count) > MAX_RETRIES:
            raise click.BadParameter(
                f"{value!r}: N is a whole number from 0 to {MAX_RETRIES}", param_hint="--retry"
            )
        flags[kind] = int(count)
    return flags


def _endpoint(simulate: bool, base_url: str | None) -> Endpoint:
    """Where the requests go: the simulator, or the API with the key from the environment."""
    if simulate and base_url:
        raise click.UsageError("--simulate runs its own simulator: leave out --base-url")
    key = os.environ.get("COMETAPI_KEY")
    if not simulate and not key:
        raise click.UsageError("set COMETAPI_KEY to your CometAPI key, or use --simulate")
    return Endpoint(
        base_url=base_url or os.environ.get("COMETAPI_BASE_URL") or DEFAULT_BASE_URL,
        api_key=key,
        simulate=simulate,
    )


def _announce(batch: str, jobs: int, prepared: Prepared, endpoint: Endpoint, store: Ledger) -> None:
    where = "the built-in simulator" if endpoint.simulate else endpoint.name
    dropped = (
        f"; {prepared.dropped_jobs} never-sent jobs no longer in the manifest dropped"
        if prepared.dropped_jobs
        else ""
    )
    click.echo(
        f"batch {batch}: {_count(jobs, 'job')} "
        f"({prepared.new_jobs} new{dropped}) against {where}; ledger {store.where}",
        err=True,
    )
    if prepared.store is not None:
        click.echo(
            f"videos to {prepared.store.uri} (checked and spooled in {prepared.output_dir})",
            err=True,
        )


def _finish_paid_work(
    error: ManifestError,
    manifest: str,
    ledger_path: LedgerTarget,
    endpoint: Endpoint,
    options_from: Callable[[Limits, float | None, Retries], RunOptions],
    lease_s: float,
) -> None:
    """An invalid manifest submits nothing, but tasks already paid for are still finished.

    Returns (so the caller reports the errors) when the ledger has nothing of
    this batch waiting on the API; otherwise finishes it and exits 2 (or 130).
    """
    batch = batch_name_of(manifest)
    if batch is None or (ledger_path.path is not None and not ledger_path.path.exists()):
        return
    with open_ledger(ledger_path, check=True) as store, batch_lock(store, batch):
        prepared = prepare_resume_only(store, batch, endpoint)
        if prepared is None:
            return
        row = store.reads.get_batch(batch)
        assert row is not None
        limits = Limits(**{k: v for k, v in row.limits.items() if k in Limits.__slots__})
        # Nothing is submitted, so the retry policy makes no new attempt either.
        options = replace(options_from(limits, row.budget_usd, Retries()), submit=False)
        print_issues(error.issues)
        click.echo(
            "the manifest has errors (above), so nothing new is submitted; finishing the "
            f"jobs of batch {batch} that were already sent",
            err=True,
        )
        report = anyio.run(_run_with_display, store, prepared, endpoint, options, lease_s)
    _print_summary(report, ledger_path, manifest)
    click.echo("fix the manifest and run again to submit the rest", err=True)
    click.get_current_context().exit(Exit.INTERRUPTED if report.interrupted else Exit.USAGE)


async def _run_with_display(
    store: Ledger, prepared: Prepared, endpoint: Endpoint, options: RunOptions, lease_s: float
) -> RunReport:
    reports: list[RunReport] = []
    errors: list[BatchvidError] = []
    async with anyio.create_task_group() as tg:

        def attach(runner: Runner) -> None:
            tg.start_soon(_watch_signals, runner)
            tg.start_soon(_show_progress, runner)

        try:
            reports.append(
                await run_batch(
                    store, prepared, endpoint, options, on_runner=attach, lease_s=lease_s
                )
            )
        except BatchvidError as exc:  # raised after the group, not wrapped in an ExceptionGroup
            errors.append(exc)
        tg.cancel_scope.cancel()
    if errors:
        raise errors[0]
    return reports[0]


async def _watch_signals(runner: Runner) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if runner.stop_requested:
                creates = runner.creates_in_flight
                click.echo(
                    "\nsecond interrupt: exiting now (the ledger is consistent)"
                    + (
                        f"; {_count(creates, 'create')} in flight will be in_doubt on the next "
                        f"run: their tasks may exist and be billed (`batchvid retry "
                        f"{runner.batch} --in-doubt` resubmits them, if you decide so)"
                        if creates
                        else ""
                    ),
                    err=True,
                )
                os._exit(Exit.INTERRUPTED)
            name = signal.Signals(signum).name
            click.echo(
                f"\n{name}: finishing the requests in flight, then stopping "
                "(interrupt again to quit at once)",
                err=True,
            )
            runner.request_stop()


async def _show_progress(runner: Runner) -> None:
    if sys.stderr.isatty():
        await _live_display(runner)
        return
    last = ""
    while True:
        await anyio.sleep(10.0)
        line = _progress_line(await runner.snapshot())
        if line != last:
            click.echo(line, err=True)
            last = line


async def _live_display(runner: Runner) -> None:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    console = Console(stderr=True)

    def render(snap: Snapshot) -> Group:
        table = Table.grid(padding=(0, 2))
        table.add_row(*(Text(s, style="bold") for s in _shown_states(snap)))
        table.add_row(*(str(snap.counts.get(s, 0)) for s in _shown_states(snap)))
        parts: list[Any] = [Text(f"batch {snap.batch}"), table, Text(_rate_eta(snap))]
        for failure in snap.recent_failures[-4:]:
            parts.append(Text(f"  ! {failure}", style="red"))
        if snap.stale:
            parts.append(Text(f"  ! {snap.stale}: counts as last read", style="yellow"))
        return Group(*parts)

    with Live(
        render(await runner.snapshot()), console=console, refresh_per_second=4, transient=False
    ) as live:
        while True:
            await anyio.sleep(0.25)
            live.update(render(await runner.snapshot()))


def _shown_states(snap: Snapshot) -> list[str]:
    return [s for s in _ORDER if snap.counts.get(s, 0)] or ["pending"]


def _rate_eta(snap: Snapshot) -> str:
    done = snap.finished_this_run
    remaining = sum(n for s, n in snap.counts.items() if s not in TERMINAL_STATES)
    text = f"{snap.in_flight} in flight, {done} finished this run in {snap.elapsed_s:.0f} s"
    if done and snap.elapsed_s > 0 and remaining:
        per_min = done / snap.elapsed_s * 60
        eta = remaining / (done / snap.elapsed_s)
        text += f" ({per_min:.1f}/min, about {span(eta)} left)"
    return text


def _progress_line(snap: Snapshot) -> str:
    counts = " ".join(f"{s}={snap.counts[s]}" for s in _ORDER if snap.counts.get(s))
    line = f"[{time.strftime('%H:%M:%S')}] {snap.batch}: {counts}; {_rate_eta(snap)}"
    return f"{line} ({snap.stale}: counts as last read)" if snap.stale else line


def _print_summary(report: RunReport, ledger_path: LedgerTarget, manifest: str) -> None:
    counts = " ".join(f"{s}={report.counts[s]}" for s in _ORDER if report.counts.get(s))
    total = sum(report.counts.values())
    head = "interrupted" if report.interrupted else "stopped" if report.halted else "finished"
    took = span(report.elapsed_s)
    jobs = f"{_count(total, 'job')}: {counts}" if report.counts else "jobs: the ledger did not say"
    click.echo(f"\n{report.batch}: {head} in {took}: {jobs}")
    if report.halted:
        click.echo(f"stopped early: {report.halted}")
    downloaded = report.counts.get("downloaded", 0)
    if downloaded:
        click.echo(f"videos: {report.output_dir} ({_count(downloaded, 'file')})")
    if report.normalised:
        ways = "; ".join(f"{n} x {how}" for how, n in list(report.normalised.items())[:3])
        more = " ..." if len(report.normalised) > 3 else ""
        n = sum(report.normalised.values())
        click.echo(f"rendered otherwise than asked: {_count(n, 'video')}: {ways}{more}")
    for failure in report.failures[-8:]:
        click.echo(f"  ! {failure}")
    by_state = {JobState(s): n for s, n in report.counts.items()}
    if not report.download:  # completed is where this run meant to stop
        by_state.pop(JobState.COMPLETED, None)
    for step in next_steps(report.batch, manifest, by_state):
        n = sum(by_state.get(s, 0) for s in step.states)
        click.echo(f"- {step.title} ({n}): {step.why}; {step.command.replace('`', '')}")
    if report.budget_blocked:
        click.echo("- the budget stopped further submissions (raise budget_usd to go on)")
    for line in _retry_lines(report):
        click.echo(line)
    if ledger_path != ledger_target_of(None):
        click.echo(f"ledger: {ledger_path}")


def _retry_lines(report: RunReport) -> list[str]:
    """What the retry policy did for the batch: new attempts, their cost, extra takes."""
    lines = []
    if report.retries:
        made = sum(n for n, _ in report.retries.values())
        kinds = ", ".join(f"{kind} {n}" for kind, (n, _) in report.retries.items())
        cost = sum(usd for _, usd in report.retries.values())
        priced = f", est. ${cost:,.2f}" if cost else ""
        lines.append(f"automatic retries: {_count(made, 'new attempt')} ({kinds}){priced}")
    if report.extras:
        states = ", ".join(f"{n} {state}" for state, n in report.extras.items())
        watched = sum(report.extras.get(s, 0) for s in ("queued", "in_progress"))
        later = (
            "; `batchvid run` again picks up what the ones still rendering make" if watched else ""
        )
        lines.append(f"earlier attempts kept as extra takes: {states}{later}")
    return lines
