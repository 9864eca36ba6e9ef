"""The benchmarks' contender: the simplest correct create -> poll -> download loop.

No ledger, no rate limiter, no resume: httpx, a semaphore for requests in
flight, and the docs' fixed poll cadence ("every 10-20 s").  bench/run.py runs
it beside ``batchvid run`` against the same simulator.  MAX_ACTIVE (0: no cap)
bounds the tasks alive upstream at once, like ``batchvid run --max-active``.

    python bench/bare_loop.py BASE_URL OUT_DIR JOBS_JSON CONCURRENCY POLL_SECONDS [MAX_ACTIVE]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import httpx

HEADERS = {"Authorization": "Bearer sim-key"}
DONE = ("SUCCESS", "completed")
FAILED = ("FAILED", "ERROR", "failed", "error")


async def one(
    client: httpx.AsyncClient, gate: asyncio.Semaphore, base: str, out: Path, index: int,
    job: dict[str, Any], poll_s: float,
) -> None:  # fmt: skip
    form = {k: (None, str(v)) for k, v in job.items()}
    async with gate:
        created = await client.post(f"{base}/v1/videos", headers=HEADERS, files=form)
    created.raise_for_status()
    task_id = created.json()["id"]
    while True:
        await asyncio.sleep(poll_s)
        async with gate:
            task = (await client.get(f"{base}/v1/videos/{task_id}", headers=HEADERS)).json()
        if task["status"] in DONE:
            break
        if task["status"] in FAILED:
            return
    async with gate, client.stream("GET", task["video_url"]) as response:
        with (out / f"{index}.mp4").open("wb") as fh:
            async for chunk in response.aiter_bytes():
                fh.write(chunk)


async def main(
    base: str, out: Path, jobs: list[dict[str, Any]], concurrency: int, poll_s: float,
    max_active: int = 0,
) -> None:  # fmt: skip
    gate = asyncio.Semaphore(concurrency)
    alive = asyncio.Semaphore(max_active) if max_active else None
    limits = httpx.Limits(max_connections=concurrency * 2)

    async def capped(index: int, job: dict[str, Any]) -> None:
        async with alive or contextlib.nullcontext():
            await one(client, gate, base, out, index, job, poll_s)

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(capped(i, job) for i, job in enumerate(jobs)))


if __name__ == "__main__":
    base_url, out_dir, jobs_file, concurrency, poll = sys.argv[1:6]
    cap = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    asyncio.run(
        main(base_url, Path(out_dir), json.loads(Path(jobs_file).read_text()), int(concurrency),
             float(poll), cap)
    )  # fmt: skip
