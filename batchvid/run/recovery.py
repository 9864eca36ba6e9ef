"""Task ids that could not be recorded: kept on this machine until the next run records them.

A create's answer carries the id of a task that is (or will be) billed.  If the
ledger cannot record it (its disk full, the file locked or damaged, its server
out of reach), the id must not be lost: it goes to the log (stderr) and to an
append-only file, one JSON object per line, fsynced: beside an SQLite ledger
(``<ledger>.tasks.jsonl``), or for a PostgreSQL ledger in ``state/`` of the
folder the run started in (``state/<host>-<port>-<database>.tasks.jsonl``).
The next run of the batch from there records every id in it before anything
else (a job left ``submitting`` or ``in_doubt`` gets its task back), then
drops the lines it recorded.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import LedgerError, LostClaim
from ..ledger.port import RunLedger
from ..ledger.rows import JobRow
from ..ledger.target import LedgerTarget
from ..remote.protocol import Task, normalise_status
from ..states import JobState

__all__ = ["import_tasks", "keep_task", "keep_unrecorded", "record_kept", "recovery_path"]

log = logging.getLogger(__name__)


def recovery_path(ledger: LedgerTarget | Path) -> Path:
    """Where the task ids a ledger could not record are kept (see the module docstring)."""
    if isinstance(ledger, Path) or ledger.path is not None:
        path = ledger if isinstance(ledger, Path) else ledger.path
        assert path is not None
        return path.with_name(path.name + ".tasks.jsonl")
    assert ledger.url is not None
    parts = urlsplit(ledger.url)
    name = f"{parts.hostname or 'local'}-{parts.port or 5432}-{parts.path.strip('/') or 'db'}"
    return Path("state") / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".tasks.jsonl")


def keep_task(ledger: LedgerTarget | Path, entry: dict[str, Any]) -> bool:
    """Append one unrecorded task to the recovery file (and the log); whether it was written."""
    path = recovery_path(ledger)
    log.error(
        "the ledger could not record task %s of job %s (batch %s); it is kept in %s",
        entry.get("task_id"),
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


def keep_unrecorded(
    ledger: LedgerTarget | Path, job: JobRow, task: Task, error: LedgerError
) -> str:
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
    path = recovery_path(ledger.ledger.target)
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
