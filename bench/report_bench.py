"""Report figures on a 100k-job batch: reading it, and rendering every format.

Run: ``.venv/bin/python bench/report_bench.py [N]``.  Prints measured figures only.
The ledger is shaped with bulk SQL (a bench shortcut, not how the runner works):
most jobs downloaded with render times, some failed, a few in doubt and stalled.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from batchvid.ledger import Ledger
from batchvid.ledger.rows import NewJob
from batchvid.report import load_report
from batchvid.report.formats import render

MODELS = ("doubao-seedance-2-0-fast", "doubao-seedance-1-5-pro")
STYLES = ("film noir", "pastel watercolour", "documentary")
T = TypeVar("T")


def jobs(n: int) -> list[NewJob]:
    return [
        NewJob(
            key=f"{i:024x}",
            index=i,
            prompt=f"A lighthouse at dusk, waves breaking, take {i}, {STYLES[i % 3]}",
            model=MODELS[i % 2],
            prompt_id=f"p{i // 12}",
            take=1 + i % 2,
            axes=(("model", MODELS[i % 2]), ("size", "16:9"), ("style", STYLES[i % 3])),
            est_cost_usd=0.5,
        )
        for i in range(n)
    ]


def shape(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            """UPDATE jobs SET state = 'downloaded', task_id = 't' || id, attempts = 1,
            billable_attempts = 1, submitted_utc = created_utc, queued_utc = created_utc,
            completed_utc = strftime('%Y-%m-%dT%H:%M:%fZ', created_utc, '+' || (30 + id % 300)
                || ' seconds'),
            downloaded_utc = created_utc, finished_utc = created_utc,
            file_path = '/videos/' || key || '.mp4', bytes = 123456, sha256 = printf('%064d', id)
            WHERE id % 20 != 0"""
        )
        conn.execute(
            """UPDATE jobs SET state = 'failed', task_id = 't' || id, attempts = 1,
            billable_attempts = 1, error_code = 'OutputModeration',
            error_message = 'flagged ' || (id % 7) WHERE id % 20 = 0 AND id % 100 != 0"""
        )
        conn.execute(
            """UPDATE jobs SET state = 'in_doubt', attempts = 1, billable_attempts = 1,
            error_message = 'read timeout' WHERE id % 100 = 0"""
        )
    conn.close()


def timed(label: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = fn()
    print(f"{label:<34} {time.perf_counter() - start:7.2f} s")
    return result


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        with Ledger(path) as ledger:
            ledger.plans.upsert_batch(
                "bench",
                manifest_path="bench.yaml",
                manifest_sha256="0" * 64,
                output_dir=tmp,
                pricing={"doubao-seedance": 0.1},
            )
            ledger.plans.upsert_jobs("bench", jobs(n))
        shape(path)
        print(f"{n} jobs")
        with Ledger(path, read_only=True) as ledger:
            data = timed("read + figures (load_report)", lambda: load_report(ledger, "bench"))
        for fmt in ("text", "csv", "json", "md", "html"):
            out = timed(f"render {fmt}", partial(render, data, fmt, html_path=Path(tmp) / "r.html"))
            print(f"{'':<34} {len(out.encode()) / 1e6:7.1f} MB")
        start = time.perf_counter()
        with Ledger(path, read_only=True) as ledger:
            render(load_report(ledger, "bench"), "csv")
        print(f"{'csv end to end':<34} {time.perf_counter() - start:7.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
