"""Task ids that could not be recorded: kept beside the ledger until the next run records them.

A create's answer carries the id of a task that is (or will be) billed.  If the
ledger cannot record it (its disk full, the file locked or damaged), the id
must not be lost: it goes to the log (stderr) and to an append-only file
beside the ledger, ``<ledger>.tasks.jsonl``, one JSON object per line,
fsynced.  The next run of the batch records every id in it before anything
else (a job left ``submitting`` or ``in_doubt`` gets its task back), then
drops the lines it recorded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import LedgerError
from ..ledger.rows import JobRow
from ..ledger.store import Ledger
from ..remote.protocol import Task, normalise_status
from ..states import JobState

__all__ = ["import_tasks", "keep_task", "keep_unrecorded", "record_kept", "recovery_path"]

log = logging.getLogger(__name__)


def recovery_path(ledger_path: Path) -> Path:
    """Where the task ids a ledger could not record are kept."""
    return ledger_path.with_name(ledger_path.name + ".tasks.jsonl")


def keep_task(ledger_path: Path, entry: dict[str, Any]) -> bool:
    """Append one unrecorded task to the recovery file (and the log); whether it was written."""
    log.error(
        "the ledger could not record task %s of job %s (batch %s); it is kept in %s",
        entry.get("task_id"),
        entry.get("job_id"),
        entry.get("batch"),
        recovery_path(ledger_path),
    )
    line = json.dumps(entry, sort_keys=True) + "\n"
    try:
        fd = os.open(recovery_path(ledger_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error("and the recovery file could not be written either (%s): %s", exc, line)
        return False
    return True


def keep_unrecorded(ledger_path: Path, job: JobRow, task: Task, error: LedgerError) -> str:
    """A paid task the ledger could not take: keep its id (stderr and the recovery file).

    Returns why the run must stop, for its summary: the next run records it first.
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
    kept = keep_task(ledger_path, entry)
    return (
        f"the ledger could not record task {task.id} of job #{job.idx} ({error}); "
        + (
            f"its id is kept in {recovery_path(ledger_path)}, and "
            if kept
            else "its id is in the log above; "
        )
        + "the next run records it"
    )


def record_kept(ledger: Ledger, entry: dict[str, Any], note: Callable[[str], None]) -> bool:
    """Record one task id the recovery file kept; whether the entry is done with.

    Its job waits ``submitting`` or ``in_doubt``: it takes the task, due for
    polling now.  A job that has moved on since (the user retried it) cannot:
    the task is named through ``note`` and left alone.
    """
    try:
        job = ledger.get_job(int(entry["job_id"]))
    except (KeyError, TypeError, ValueError, LedgerError):
        return False
    task_id = str(entry.get("task_id") or "")
    if job.key != entry.get("key") or not task_id or job.task_id == task_id:
        return job.task_id == task_id
    if job.state not in (JobState.SUBMITTING, JobState.IN_DOUBT):
        note(
            f"#{job.idx}: task {task_id} was recovered, but the job is {job.state} now; "
            "that task is left upstream"
        )
        return True
    status = str(entry.get("remote_status") or "")
    ledger.record_submitted(
        job.id,
        task_id,
        status or None,
        ledger.clock(),
        seen=normalise_status(status).job_state,
        server_created_at=entry.get("server_created_at"),
        recovered=True,
    )
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


def import_tasks(ledger_path: Path, batch: str, record: Callable[[dict[str, Any]], bool]) -> int:
    """Record every kept task of ``batch`` (``record`` says whether it took); returns how many.

    Lines of other batches, and those ``record`` could not take, stay in the file.
    """
    path = recovery_path(ledger_path)
    kept: list[dict[str, Any]] = []
    recorded = 0
    for entry in _entries(path):
        if entry.get("batch") == batch and record(entry):
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
