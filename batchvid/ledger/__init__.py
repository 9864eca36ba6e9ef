"""The ledger: every batch, job and state change, durable across any crash.

Owns: where a ledger is (``target``: a file, or a ``postgresql://`` URL), the
seam to its database (``engine``) and each backend (``sqlite``: the embedded
default; ``postgres``: a ledger many workers share), the schema's append-only
migrations (``schema``), the typed rows it takes and hands out (``rows``),
and its roles, put together in ``store``'s :class:`Ledger`: plans
(``plans``), a run's state changes (``transitions``, ``attempts``), the work
queue (``queue``), workers and leases (``leases``), reads (``reads``), the
shared rate buckets (``buckets``), copying batches between ledgers (``copy``),
an SQLite batch's one-process lock (``lock``) and the async face a run uses
(``port``).  The only SQL in batchvid.

May import: the shared vocabulary (``batchvid.errors``, ``states``,
``request``, ``video``), sqlite-utils (for migrations) and psycopg (for
PostgreSQL).  Nothing else in batchvid.
"""

from __future__ import annotations

from .rows import AutoRetry, BatchRow, Event, JobRow, NewJob, RenderSample, StoredReference, utc_iso
from .store import DEFAULT_LEDGER, Ledger, open_ledger
from .target import LedgerTarget, ledger_target

__all__ = [
    "DEFAULT_LEDGER",
    "AutoRetry",
    "BatchRow",
    "Event",
    "JobRow",
    "Ledger",
    "LedgerTarget",
    "NewJob",
    "RenderSample",
    "StoredReference",
    "ledger_target",
    "open_ledger",
    "utc_iso",
]
