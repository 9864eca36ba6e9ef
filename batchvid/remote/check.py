"""Checking a downloaded file before it gets its final name, with a deadline.

A :data:`Check` (for ``run``, :func:`batchvid.media.inspect`) looks at the
complete file and returns what it found, or raises
:class:`~batchvid.errors.Undecodable`.  :func:`run_check` runs it in a daemon
thread of its own for at most :data:`CHECK_TIMEOUT_S`: anyio's worker threads
are waited for when the process exits, so a check that never returned would
keep a finished run from exiting; such a thread is left to end by itself
(see :mod:`batchvid.threads`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import anyio.to_thread

from ..errors import Undecodable
from ..threads import DaemonThreads

__all__ = ["CHECK_TIMEOUT_S", "Check", "run_check"]

#: Looks at a complete file (blocking: it runs in a thread of its own): returns what
#: it found, or raises :class:`~batchvid.errors.Undecodable`.
Check = Callable[[Path], object]
#: How long a check may take before the file counts as bad.
CHECK_TIMEOUT_S: Final = 60.0
#: The threads checks run on (as many as downloads are likely to finish at once).
_CHECKS: Final = DaemonThreads(8, "batchvid-check")


async def run_check(check: Check, part: Path, kept: Path) -> object:
    """What ``check(part)`` returned; a file it refuses, or that takes it longer than
    :data:`CHECK_TIMEOUT_S`, is moved to ``kept`` (the bytes were paid for) and
    :class:`~batchvid.errors.Undecodable` is raised, naming where it went.

    Any other error (the machine's, not the file's: out of file handles, say)
    propagates with ``part`` left where it is, for the next try.
    """
    try:
        return await _CHECKS.run(check, part, timeout=CHECK_TIMEOUT_S)
    except TimeoutError:
        error = Undecodable(f"checking the file took over {CHECK_TIMEOUT_S:g} s")
    except Undecodable as exc:
        error = exc
    await anyio.to_thread.run_sync(os.replace, part, kept)
    raise Undecodable(f"{error}; the file as fetched is kept as {kept.name}")
