"""Running a batch: from a plan in the ledger to every job finished, resumable at any time.

Owns: the steady clock a run schedules by (``clock``), what render times are
and how they are learned (``render_times``),
when to poll and when to give up (``poll_policy``), the other pure policies of
a run (``policy``), file names (``files``), the workers and the dispatcher
that drive jobs through the ledger (``workers``, ``record``, ``dispatcher``),
the task ids a ledger could not take (``recovery``), videos kept in a store
(``keep``), progress for a display (``progress``), and putting plan, ledger,
client and limiter together (``batch``).

May import: the shared vocabulary, ``batchvid.manifest`` (plans, limits),
``batchvid.ledger``, ``batchvid.remote``, ``batchvid.media`` (probing each
download, its poster), ``batchvid.outputs`` (a store), and ``batchvid.sim`` (only for
``--simulate``, imported when used).  Never the CLI: nothing here prints or exits.
"""

from __future__ import annotations

from .batch import Endpoint, Prepared, batch_lock, options_for, prepare, run_batch, run_manifest
from .dispatcher import Runner
from .options import RunOptions, RunReport, Snapshot

__all__ = [
    "Endpoint",
    "Prepared",
    "RunOptions",
    "RunReport",
    "Runner",
    "Snapshot",
    "batch_lock",
    "options_for",
    "prepare",
    "run_batch",
    "run_manifest",
]
