"""The ``batchvid`` command line: the only place that prints, exits or imports click.

Owns: the commands (``main`` holds the group, ``validate`` and ``plan``;
``run``, ``ledger`` (status, retry), ``report`` and ``simulator`` are loaded
only when they run), turning library errors into messages and exit codes, in
one place.

May import: anything in batchvid.
"""

from __future__ import annotations

from .main import cli, main

__all__ = ["cli", "main"]
