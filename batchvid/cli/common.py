"""What every command shares: exit codes, issue printing, counting words.

Light on purpose (click only): every command loads it, ``--version`` included.
The ``--ledger`` option lives with the ledger commands (:mod:`batchvid.cli.ledger`).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import Final

import click

from ..errors import Issue
from ..states import JobState

__all__ = [
    "MAX_PRINTED_ISSUES",
    "ORDER",
    "Exit",
    "count",
    "print_issues",
]


class Exit(IntEnum):
    """DESIGN.md's exit codes."""

    OK = 0  # every job downloaded (or completed, with --no-download)
    UNFINISHED = 1  # the batch finished, but some jobs did not succeed
    USAGE = 2  # usage error, invalid manifest, or the API refusing creates
    AUTH = 3  # the API refused the key (401)
    INTERRUPTED = 130  # SIGINT/SIGTERM; the ledger is consistent


#: States in the order a job moves through them (progress lines, summaries).
ORDER: Final = [str(s) for s in JobState]
#: Past this many, issues are counted rather than printed: the first ones tell the story.
MAX_PRINTED_ISSUES: Final = 200


def count(n: int, noun: str) -> str:
    """``1 job``, ``3 jobs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def print_issues(issues: Sequence[Issue]) -> None:
    """Manifest errors and warnings on stderr, one a line (the first MAX_PRINTED_ISSUES)."""
    for issue in issues[:MAX_PRINTED_ISSUES]:
        click.echo(str(issue), err=True)
    if len(issues) > MAX_PRINTED_ISSUES:
        click.echo(f"... and {len(issues) - MAX_PRINTED_ISSUES} more issues", err=True)
