"""``batchvid status``, ``retry`` and ``ledger copy``: read and edit ledgers, send nothing.

Kept apart from ``run`` so that these commands load only the ledger: no HTTP
stack, no YAML, no async runtime (``status`` on a 100,000-job ledger is mostly
Python's own start-up).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import click

from ..ledger.store import DEFAULT_LEDGER, Ledger, open_ledger
from ..ledger.target import LedgerTarget, ledger_target
from ..states import JobState
from .common import ORDER

__all__ = ["ledger", "ledger_option", "ledger_target_of", "retry", "status"]

_LEDGER_HELP = (
    "The ledger: an SQLite file, or a postgresql://USER:PASSWORD@HOST:PORT/DB URL that "
    f"many workers share [env BATCHVID_LEDGER; default {DEFAULT_LEDGER}]."
)


def ledger_target_of(value: str | None) -> LedgerTarget:
    """The ledger a command uses: --ledger, else $BATCHVID_LEDGER, else the default."""
    return ledger_target(value or os.environ.get("BATCHVID_LEDGER") or DEFAULT_LEDGER)


def ledger_option(f: Any) -> Any:
    """``--ledger PATH|URL``, resolved by :func:`ledger_target_of`."""
    return click.option("--ledger", "ledger", metavar="PATH|URL", help=_LEDGER_HELP)(f)


@click.command()
@click.argument("batch", required=False)
@ledger_option
@click.option("--json", "as_json", is_flag=True, help="Print counts as JSON (see DESIGN.md).")
def status(batch: str | None, ledger: str | None, as_json: bool) -> None:
    """Counts per state of BATCH (or of every batch), from the ledger.

    Lists in-doubt, failed and stalled jobs with their reasons (the first
    20 of each; `batchvid report` lists every one), the automatic retries
    made and the policy that made them, and the extra takes kept (earlier
    attempts that went on after a stall), and the videos the API rendered
    at another size or length than asked (probed after download: flagged,
    not failed, as the API normalises by design). Reading is safe while a run is
    going on. --json prints {"batch", "total", "states": {STATE: count},
    "retries": {KIND: count}, "extra_takes": {STATE: count}, "normalised":
    {HOW: count}} (a list when BATCH is omitted).
    """
    with open_ledger(ledger_target_of(ledger), create=False) as store:
        if as_json:
            reads = store.reads
            data: Any = reads.status(batch) if batch else reads.statuses()
            click.echo(json.dumps(data, indent=2))
            return
        names = [batch] if batch else [b.name for b in store.reads.batches()]
        if not names:
            click.echo("the ledger has no batches yet")
        for name in names:
            _print_status(store, name)


#: Jobs listed per state by `status` (in doubt, failed, stalled); the rest are counted.
STATUS_LISTED = 20
_LISTED_STATES = (JobState.IN_DOUBT, JobState.FAILED, JobState.STALLED)


def _print_status(store: Ledger, batch: str) -> None:
    reads = store.reads
    data = reads.status(batch)
    states = data["states"]
    counts = "  ".join(f"{s} {states[s]}" for s in ORDER if states.get(s))
    click.echo(f"{batch}: {data['total']} jobs  {counts}")
    if store.shared:
        workers = store.leases.live(batch)
        click.echo(f"  workers running it: {len(workers)}")
        for w in workers:
            click.echo(f"    {w.id} since {w.started_utc} (lease {w.left_s:.0f} s left)")
    if data["retries"]:
        made = ", ".join(f"{kind} {n}" for kind, n in data["retries"].items())
        row = reads.get_batch(batch)
        policy = ", ".join(f"{k}: {v}" for k, v in (row.retry if row else {}).items())
        click.echo(f"  automatic retries: {made}" + (f" (retry {{{policy}}})" if policy else ""))
    if data["extra_takes"]:
        kept = ", ".join(f"{state} {n}" for state, n in data["extra_takes"].items())
        click.echo(f"  extra takes (earlier attempts that went on after a stall): {kept}")
    if data["normalised"]:
        click.echo(f"  rendered otherwise than asked: {sum(data['normalised'].values())} videos")
        for how, n in list(data["normalised"].items())[:STATUS_LISTED]:
            click.echo(f"    {n} x {how}")
    for state in _LISTED_STATES:
        for job in reads.jobs_in_states(batch, [state], limit=STATUS_LISTED):
            label = job.prompt_id or " ".join(job.prompt.split())[:40]
            if job.extra_of is not None:
                label += f" (attempt {job.attempts}, extra take)"
            reason = " ".join((job.error_message or "").split())[:120]
            click.echo(f"  {job.state:<9} #{job.idx} {label}: {reason}")
        if states[state] > STATUS_LISTED:
            more = states[state] - STATUS_LISTED
            click.echo(f"  ... and {more} more {state} (batchvid report {batch} lists them all)")


@click.command()
@click.argument("batch")
@click.option("--failed", is_flag=True, help="Failed jobs become pending: a new, billed attempt.")
@click.option(
    "--in-doubt",
    "in_doubt",
    is_flag=True,
    help="In-doubt jobs become pending. Their first create may have been billed: "
    "resubmitting can pay twice for one video.",
)
@click.option("--stalled", is_flag=True, help="Stalled tasks are polled again (same task id).")
@ledger_option
def retry(batch: str, failed: bool, in_doubt: bool, stalled: bool, ledger: str | None) -> None:
    """Give jobs of BATCH another chance; then `batchvid run MANIFEST` again.

    Nothing is sent by this command: it only changes states in the ledger
    (each change is an event that keeps the old task id). This is the
    manual way; `run` also retries ERROR, vanished (and, if the manifest's
    `retry:` says so, FAILED and stalled) on its own, but never in_doubt.
    """
    if not (failed or in_doubt or stalled):
        raise click.UsageError("say which jobs: --failed, --in-doubt and/or --stalled")
    with open_ledger(ledger_target_of(ledger), create=False) as store:
        if store.reads.get_batch(batch) is None:
            raise click.UsageError(f"no batch {batch!r} in the ledger")
        plans = store.plans
        if failed:
            click.echo(f"{plans.retry(batch, JobState.FAILED)} failed jobs are pending again")
        if in_doubt:
            n = plans.retry(batch, JobState.IN_DOUBT)
            click.echo(f"{n} in-doubt jobs are pending again")
            if n:
                click.echo(
                    f"warning: each of those {n} creates may already have made a billed task; "
                    "resubmitting can pay twice for one video",
                    err=True,
                )
        if stalled:
            click.echo(f"{plans.retry(batch, JobState.STALLED)} stalled jobs will be polled again")


@click.group()
def ledger() -> None:
    """Work on ledgers themselves: move batches from one to another."""


@ledger.command("copy")
@click.argument("source", metavar="SRC")
@click.argument("dest", metavar="DST")
@click.option(
    "--batch",
    "batches",
    multiple=True,
    metavar="NAME",
    help="Copy this batch (repeatable) [default: every batch in SRC].",
)
def copy(source: str, dest: str, batches: tuple[str, ...]) -> None:
    """Copy batches from ledger SRC to ledger DST, every job and event included.

    SRC and DST are each an SQLite file or a postgresql:// URL, so a batch
    begun on a laptop moves to the team's database, and back:

    \b
      batchvid ledger copy state/batchvid.db postgresql://bv@db/batchvid
      batchvid run MANIFEST --ledger postgresql://bv@db/batchvid

    The batch goes on there where it stood: videos downloaded stay done,
    tasks created are polled, nothing is created again.  SRC is only read;
    DST gets all of it in one transaction, or nothing.  From then on run the
    batch at DST only: run at SRC as well, its pending jobs would be created
    twice, once by each ledger.  Refused: a batch
    that a process runs at SRC (a run's lock on SQLite, a worker's lease on
    PostgreSQL), and one DST already has (a copy never merges batches).
    """
    from ..ledger.copy import copy_batches
    from ..ledger.lock import batch_lock

    with open_ledger(ledger_target_of(source), create=False) as src:
        names = list(batches) or [b.name for b in src.reads.batches()]
        missing = [name for name in names if src.reads.get_batch(name) is None]
        if missing:
            raise click.UsageError(f"no batch {missing[0]!r} in {src.where}")
        with open_ledger(ledger_target_of(dest)) as dst, contextlib.ExitStack() as held:
            for name in names:  # a run of it on SQLite holds this lock: refused at once
                held.enter_context(batch_lock(src, name))
            for done in copy_batches(src, dst, names):
                click.echo(
                    f"{done.batch}: {_count(done.jobs, 'job')} and "
                    f"{_count(done.events, 'event')} copied to {dst.where}"
                )
            click.echo(f"go on there (and only there): batchvid run MANIFEST --ledger {dst.where}")


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"
