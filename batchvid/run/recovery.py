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

__all__ = ["import_tasks", "keep_task", "recovery_path"]

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
