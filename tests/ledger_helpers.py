"""What the ledger tests share: batches, jobs, and every single-job action on a table."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from report_ledgers import T0

from batchvid.cli import cli
from batchvid.ledger import Ledger
from batchvid.ledger.rows import NewJob
from batchvid.states import JobState

S = JobState


def run_cli(cwd: Path, *args: str) -> tuple[int, str]:
    """``batchvid ARGS`` run from ``cwd``: its exit code and everything it said."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    return result.exit_code, result.output + (result.stderr or "")


def add_batch(ledger: Ledger, name: str) -> None:
    ledger.plans.upsert_batch(
        name, manifest_path=f"{name}.yaml", manifest_sha256="0" * 64, output_dir=f"out/{name}"
    )


def specs(n: int, prefix: str = "k", start: int = 0, cost: float | None = None) -> list[NewJob]:
    return [
        NewJob(
            key=f"{prefix}{i}",
            index=i,
            prompt=f"prompt {i}",
            model="doubao-seedance-2-0",
            est_cost_usd=cost,
        )
        for i in range(start, start + n)
    ]


def add_job(ledger: Ledger, key: str = "k", batch: str = "b", index: int = 1) -> int:
    ledger.plans.upsert_jobs(batch, [NewJob(key=key, index=index, prompt="p", model="m")])
    row = ledger.reads.job_by_key(batch, key)
    assert row is not None
    return row.id


def raw(path: Path) -> sqlite3.Connection:
    """A second, independent connection to the file (close it!)."""
    return sqlite3.connect(path, isolation_level=None)


# -- every single-job action, the states it applies to, and where it leads -------

Action = Callable[[Ledger, int], object]
ACTIONS: dict[str, tuple[Action, frozenset[JobState], JobState]] = {
    "begin_submit": (lambda lg, j: lg.moves.begin_submit(j), frozenset({S.PENDING}), S.SUBMITTING),
    "record_submitted": (
        lambda lg, j: lg.moves.record_submitted(j, f"task-{j}", "SUBMITTED", T0 + 60),
        frozenset({S.SUBMITTING, S.IN_DOUBT}),
        S.QUEUED,
    ),
    "record_rejected": (
        lambda lg, j: lg.moves.record_rejected(j, "InvalidParameter", "duration out of range"),
        frozenset({S.SUBMITTING}),
        S.REJECTED,
    ),
    "record_in_doubt": (
        lambda lg, j: lg.moves.record_in_doubt(j, "read timeout after the body was sent"),
        frozenset({S.SUBMITTING}),
        S.IN_DOUBT,
    ),
    "release_unsent": (
        lambda lg, j: lg.moves.release_unsent(j, "connect refused"),
        frozenset({S.SUBMITTING}),
        S.PENDING,
    ),
    "record_poll": (
        lambda lg, j: lg.moves.record_poll(j, "IN_PROGRESS", 40, T0 + 30, seen=S.IN_PROGRESS),
        frozenset({S.QUEUED, S.IN_PROGRESS}),
        S.IN_PROGRESS,
    ),
    "record_completed": (
        lambda lg, j: lg.moves.record_completed(j, f"https://cdn.example/{j}.mp4", T0 + 3600),
        frozenset({S.QUEUED, S.IN_PROGRESS}),
        S.COMPLETED,
    ),
    "record_failed": (
        lambda lg, j: lg.moves.record_failed(j, "FAILED", "content policy"),
        frozenset({S.QUEUED, S.IN_PROGRESS, S.COMPLETED}),
        S.FAILED,
    ),
    "record_stalled": (
        lambda lg, j: lg.moves.record_stalled(j),
        frozenset({S.QUEUED, S.IN_PROGRESS}),
        S.STALLED,
    ),
    "refresh_url": (
        lambda lg, j: lg.moves.refresh_url(j, f"https://cdn.example/{j}.mp4?fresh", T0 + 7200),
        frozenset({S.COMPLETED}),
        S.COMPLETED,
    ),
    "record_downloaded": (
        lambda lg, j: lg.moves.record_downloaded(j, f"out/{j}.mp4", 1234, "ab" * 32),
        frozenset({S.COMPLETED}),
        S.DOWNLOADED,
    ),
    "record_download_error": (
        lambda lg, j: lg.moves.record_download_error(j, "HTTP 403 from the CDN"),
        frozenset({S.COMPLETED}),
        S.COMPLETED,
    ),
}

PATHS: dict[JobState, list[str]] = {
    S.PENDING: [],
    S.SUBMITTING: ["begin_submit"],
    S.QUEUED: ["begin_submit", "record_submitted"],
    S.IN_PROGRESS: ["begin_submit", "record_submitted", "record_poll"],
    S.COMPLETED: ["begin_submit", "record_submitted", "record_poll", "record_completed"],
    S.DOWNLOADED: [
        *("begin_submit", "record_submitted", "record_completed", "record_downloaded"),
    ],
    S.FAILED: ["begin_submit", "record_submitted", "record_poll", "record_failed"],
    S.REJECTED: ["begin_submit", "record_rejected"],
    S.IN_DOUBT: ["begin_submit", "record_in_doubt"],
    S.STALLED: ["begin_submit", "record_submitted", "record_stalled"],
}


def reach(ledger: Ledger, job_id: int, state: JobState) -> None:
    for name in PATHS[state]:
        ACTIONS[name][0](ledger, job_id)
    assert ledger.reads.get_job(job_id).state is state


LEGAL = [(a, s) for a, (_, sources, _) in ACTIONS.items() for s in sorted(sources)]
ILLEGAL = [(a, s) for a, (_, sources, _) in ACTIONS.items() for s in S if s not in sources]
