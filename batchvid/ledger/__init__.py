"""The SQLite ledger: every batch, job and state change, durable across any crash.

Owns: the file (WAL, pragmas, append-only migrations: ``schema``), the typed
rows it takes and hands out (``rows``), its reads (``queries``) and every
write, each state change a named transition checked against
:data:`batchvid.states.TRANSITIONS` (``transitions``; attempts that end
without a video and the retry policy's new ones: ``attempts``), put together
in ``store``.  The only SQL in batchvid.

May import: the shared vocabulary (``batchvid.errors``, ``states``,
``request``) and sqlite-utils (for migrations).  Nothing else in batchvid.
"""

from __future__ import annotations

from .rows import AutoRetry, BatchRow, Event, JobRow, NewJob, RenderSample, StoredReference, utc_iso
from .store import DEFAULT_LEDGER, Ledger, open_ledger

__all__ = [
    "DEFAULT_LEDGER",
    "AutoRetry",
    "BatchRow",
    "Event",
    "JobRow",
    "Ledger",
    "NewJob",
    "RenderSample",
    "StoredReference",
    "open_ledger",
    "utc_iso",
]
