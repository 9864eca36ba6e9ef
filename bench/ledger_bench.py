"""Ledger figures: 100k-job upsert, the resume decision on 100k jobs, commit cost.

Run: ``.venv/bin/python bench/ledger_bench.py [N]``.  Prints measured figures only.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from batchvid.ledger import Ledger
from batchvid.ledger.rows import NewJob


def jobs(n: int, salt: str = "") -> list[NewJob]:
    return [
        NewJob(
            key=f"{salt}{i:064x}", index=i, prompt=f"prompt {i} " * 8, model="doubao-seedance-2-0"
        )
        for i in range(n)
    ]


def shape(path: Path, n: int) -> None:
    """Give the ledger a realistic mix (bulk SQL: a bench shortcut, not how the runner works)."""
    conn = sqlite3.connect(path)
    now = time.time()
    with conn:
        conn.execute(
            "UPDATE jobs SET state = 'downloaded', task_id = 't' || id, queued_utc = created_utc,"
            " completed_utc = created_utc WHERE id <= ?",
            (n * 6 // 10,),
        )
        conn.execute(
            "UPDATE jobs SET state = 'queued', task_id = 't' || id, next_poll_at = ? + id % 60"
            " WHERE id > ? AND id <= ?",
            (now, n * 6 // 10, n * 6 // 10 + 16),
        )
    conn.close()


def resume(path: Path, batch: str = "b") -> None:
    """What ``batchvid run`` asks the ledger on a restart before its first request."""
    with Ledger(path) as ledger:
        ledger.plans.recover_interrupted(batch)
        ledger.queue.active_count(batch)
        ledger.queue.committed_cost(batch)
        ledger.queue.take_pending(batch, 16)
        ledger.queue.take_polls(batch, 16, ledger.clock())
        ledger.queue.next_poll_time(batch)
        ledger.queue.take_downloads(batch, 16)


def build(path: Path, n: int, batch: str = "b") -> None:
    """A ledger of ``n`` jobs in mid-run: 60% downloaded, 16 live and due, the rest pending."""
    with Ledger(path) as ledger:
        ledger.plans.upsert_batch(
            batch, manifest_path="m.yaml", manifest_sha256="0", output_dir="out"
        )
        ledger.plans.upsert_jobs(batch, jobs(n))
    shape(path, n)


def timed(label: str, fn: object, repeat: int = 1) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    took = (time.perf_counter() - start) / repeat
    print(f"{label:<48} {took * 1000:9.2f} ms")
    return took


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    # On the disk the real ledger uses (state/), not a tmpfs: fsync cost is the point.
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent / "state") as tmp:
        path = Path(tmp) / "bench.db"
        specs = jobs(n)
        with Ledger(path) as ledger:
            ledger.plans.upsert_batch(
                "b", manifest_path="m.yaml", manifest_sha256="0", output_dir="out"
            )
            timed(
                f"upsert {n} new jobs (one transaction)",
                lambda: ledger.plans.upsert_jobs("b", specs),
            )
            timed(f"upsert {n} known jobs (re-run)", lambda: ledger.plans.upsert_jobs("b", specs))
        shape(path, n)

        timed(f"resume decision on {n} jobs (open..due work)", lambda: resume(path), repeat=5)
        with Ledger(path) as ledger:
            timed("status (counts by state)", lambda: ledger.reads.status("b"), repeat=5)
            timed("committed_cost", lambda: ledger.queue.committed_cost("b"), repeat=5)
            timed(
                "render_samples",
                lambda: ledger.reads.render_samples("doubao-seedance-2-0", 5, "720p"),
                repeat=5,
            )
            timed(f"iterate jobs() over {n}", lambda: sum(1 for _ in ledger.reads.jobs("b")))
            timed("verify() (integrity + every event chain)", ledger.verify)
            for mode in ("FULL", "NORMAL"):
                ledger._conn.execute(f"PRAGMA synchronous = {mode}")  # bench-only poke
                ids = iter([j.id for j in ledger.queue.take_pending("b", 200)])
                timed(
                    f"one transition commit, synchronous={mode}",
                    lambda ids=ids: ledger.moves.begin_submit(next(ids)),
                    repeat=200,
                )
                pending = [j.id for j in ledger.queue.take_pending("b", 8 * 50)]
                groups = iter([pending[i::50] for i in range(50)])
                timed(
                    f"begin_submit_many(8 jobs), synchronous={mode}",
                    lambda groups=groups: ledger.moves.begin_submit_many(next(groups)),
                    repeat=50,
                )


if __name__ == "__main__":
    main()
