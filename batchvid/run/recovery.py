"""Task ids that could not be recorded: kept on this machine until the next run records them.

A create's answer carries the id of a task that is (or will be) billed.  If the
ledger cannot record it (its disk full, the file locked or damaged, its server
out of reach), the id must not be lost: it goes to the log (stderr) and to an
append-only file, one JSON object per line, fsynced: beside an SQLite ledger
(``<ledger>.tasks.jsonl``), or for a PostgreSQL ledger in ``state/`` of the
folder the run started in (``state/pg-<database>-<ledger id>.tasks.jsonl``: the
same file however the server is reached, directly or through a proxy).
The next run of the batch from there records every id in it before anything
else (a job left ``submitting`` or ``in_doubt`` gets its task back), then
drops the lines it recorded.

The same file keeps create intents the ledger may or may not have recorded
(its answer never came) and whose request was therefore never sent: the
next run makes their jobs pending again, where the ledger still has them
``submitting`` or ``in_doubt`` from that intent, so a create never sent is
never taken for one that may have been billed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import LedgerError, LostClaim
from ..ledger.port import RunLedger
from ..ledger.rows import JobRow
from ..ledger.store import Ledger
from ..remote.protocol import Task, normalise_status
from ..states import JobState

__all__ = [
    "import_tasks",
    "keep_task",
    "keep_unrecorded",
    "keep_unsent",
    "record_kept",
    "recovery_path",
]

log = logging.getLogger(__name__)


def recovery_path(ledger: Ledger | Path) -> Path:
    """Where the task ids a ledger could not record are kept (see the module docstring)."""
    path = ledger if isinstance(ledger, Path) else ledger.path
    if path is not None:
        return path.with_name(path.name + ".tasks.jsonl")
    assert isinstance(ledger, Ledger)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", ledger.identity)
    return Path("state") / f"pg-{name}.tasks.jsonl"


def keep_task(ledger: Ledger | Path, entry: dict[str, Any]) -> bool:
    """Append one unrecorded task (or unsent intent) to the recovery file (and the log);
    whether it was written."""
    path = recovery_path(ledger)
    what = (
        f"task {entry.get('task_id')}"
        if "task_id" in entry
        else f"that the create (attempt {entry.get('unsent_attempt')}) was never sent"
    )
    log.error(
        "the ledger could not record %s of job %s (batch %s); it is kept in %s",
        what,
        entry.get("job_id"),
        entry.get("batch"),
        path,
    )
    line = json.dumps(entry, sort_keys=True) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error("and the recovery file could not be written either (%s): %s", exc, line)
        return False
    return True


def keep_unrecorded(ledger: Ledger | Path, job: JobRow, task: Task, error: LedgerError) -> str:
    """A paid task the ledger could not take: keep its id (stderr and the recovery file).

    Returns what happened, for the run's summary: the next run records it first.
    """
    entry = {
        "batch": job.batch,
        "job_id": job.id,
        "key": job.key,
        "task_id": task.id,
        "remote_status": task.raw_status,
        "server_created_at": task.created_at,
        "error": str(error),
    }
    kept = keep_task(ledger, entry)
    return (
        f"the ledger could not record task {task.id} of job #{job.idx} ({error}); "
        + (
            f"its id is kept in {recovery_path(ledger)}, and "
            if kept
            else "its id is in the log above; "
        )
        + "the next run records it"
    )


def keep_unsent(ledger: Ledger | Path, job: JobRow, worker: str, error: LedgerError | str) -> str:
    """A create intent the ledger may have recorded, its request never sent: kept, so that
    the next run makes the job pending again instead of in doubt (see the module
    docstring).  Returns what happened, for the run's summary."""
    entry = {
        "batch": job.batch,
        "job_id": job.id,
        "key": job.key,
        "unsent_attempt": job.attempts + 1,
        "worker": worker,
        "error": str(error),
    }
    kept = keep_task(ledger, entry)
    where = f"kept in {recovery_path(ledger)}" if kept else "in the log above"
    return (
        f"the ledger did not confirm the create intent of job #{job.idx} ({error}); "
        f"its create was not sent ({where}): the next run makes it pending again"
    )


async def record_kept(
    ledger: RunLedger, entry: dict[str, Any], note: Callable[[str], None]
) -> bool:
    """Record one task id the recovery file kept; whether the entry is done with.

    Its job waits ``submitting`` or ``in_doubt``: it takes the task, due for
    polling now.  A job that has moved on since (the user retried it) cannot:
    the task is named through ``note`` and left alone.
    """
    try:
        job = await ledger.call(ledger.reads.get_job, int(entry["job_id"]))
    except (KeyError, TypeError, ValueError, LedgerError):
        return False
    if job.key != entry.get("key"):
        return True  # not this ledger's job any more
    if "unsent_attempt" in entry:
        return await _release_unsent(ledger, job, entry)
    task_id = str(entry.get("task_id") or "")
    if job.key != entry.get("key") or not task_id or job.task_id == task_id:
        return job.task_id == task_id
    left = f"#{job.idx}: task {task_id} was recovered, but the job is {job.state} now"
    if job.state not in (JobState.SUBMITTING, JobState.IN_DOUBT):
        note(f"{left}; that task is left upstream")
        return True
    status = str(entry.get("remote_status") or "")
    try:
        await ledger.call(
            ledger.moves.record_submitted,
            job.id,
            task_id,
            status or None,
            ledger.ledger.clock(),
            seen=normalise_status(status).job_state,
            server_created_at=entry.get("server_created_at"),
            recovered=True,
        )
    except LostClaim:  # resubmitted meanwhile by another worker
        note(f"{left} (resubmitted by another worker); that task is left upstream")
    return True


async def _release_unsent(ledger: RunLedger, job: JobRow, entry: dict[str, Any]) -> bool:
    """A kept unsent intent: its job pending again if that intent left it waiting."""
    try:
        attempt = int(entry["unsent_attempt"])
        await ledger.call(
            ledger.moves.release_unsent_intent,
            job.id,
            str(entry["worker"]),
            attempt,
            "the create was never sent (its intent went unconfirmed: the ledger was out of reach)",
        )
    except (KeyError, TypeError, ValueError):
        return True  # a line no batchvid wrote: nothing to do with it
    except LostClaim:
        return False  # a live worker holds it: later
    return True


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: nothing to import
        if isinstance(entry, dict):
            yield entry


async def import_tasks(ledger: RunLedger, batch: str, note: Callable[[str], None]) -> int:
    """Record every kept task of ``batch``; returns how many (see :func:`record_kept`).

    Lines of other batches, and those that could not be recorded, stay in the file.
    """
    path = recovery_path(ledger.ledger)
    kept: list[dict[str, Any]] = []
    recorded = 0
    for entry in list(_entries(path)):
        if entry.get("batch") == batch and await record_kept(ledger, entry, note):
            recorded += 1
        else:
            kept.append(entry)
    if recorded:
        if kept:
            scratch = path.with_name(path.name + ".tmp")
            scratch.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in kept))
            os.replace(scratch, path)
        else:
            path.unlink(missing_ok=True)
    return recorded
