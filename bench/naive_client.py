"""The rate-fidelity contrast: a client that paces itself by a fixed interval, nothing else.

It sends one API request every INTERVAL_S seconds (60/R for R requests a
minute), on a fixed schedule, whatever the answers say: no window, no
Retry-After, no slowing down after a 429.  Each tick takes the next piece of
work: a poll that is due (the docs' fixed cadence, POLL_S), else the next
create.  A 429 puts that work back to be retried on a later tick.  Downloads go
to the CDN (not the API, not paced).  It stops after DURATION_S seconds or
when every job is done, and prints a JSON summary.

    python bench/naive_client.py BASE_URL JOBS_JSON INTERVAL_S POLL_S DURATION_S
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import httpx

HEADERS = {"Authorization": "Bearer sim-key"}
DONE = ("SUCCESS", "completed")
FAILED = ("FAILED", "ERROR", "failed", "error")


class Naive:
    def __init__(
        self, client: httpx.AsyncClient, base: str, jobs: list[dict[str, Any]], poll_s: float
    ) -> None:
        self.client = client
        self.base = base
        self.to_create = deque(jobs)
        self.to_poll: dict[str, float] = {}  # task id -> when its next poll is due
        self.poll_s = poll_s
        self.live = 0
        self.seen: Counter[str] = Counter()
        self.background: set[asyncio.Task[None]] = set()

    def next_work(self, now: float) -> Any:
        due = [task_id for task_id, at in self.to_poll.items() if at <= now]
        if due:
            task_id = min(due, key=self.to_poll.__getitem__)
            del self.to_poll[task_id]
            return self.poll(task_id)
        if self.to_create:
            return self.create(self.to_create.popleft())
        return None

    def spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def create(self, job: dict[str, Any]) -> None:
        form = {k: (None, str(v)) for k, v in job.items()}
        response = await self.client.post(f"{self.base}/v1/videos", headers=HEADERS, files=form)
        self.seen[str(response.status_code)] += 1
        if response.status_code == 429:
            self.to_create.appendleft(job)
            return
        response.raise_for_status()
        self.live += 1
        self.to_poll[response.json()["id"]] = time.monotonic() + self.poll_s

    async def poll(self, task_id: str) -> None:
        response = await self.client.get(f"{self.base}/v1/videos/{task_id}", headers=HEADERS)
        self.seen[str(response.status_code)] += 1
        if response.status_code == 429:
            self.to_poll[task_id] = time.monotonic()
            return
        task = response.json()
        if task["status"] in DONE:
            self.spawn(self.download(task["video_url"]))
        elif task["status"] in FAILED:
            self.live -= 1
        else:
            self.to_poll[task_id] = time.monotonic() + self.poll_s

    async def download(self, url: str) -> None:
        (await self.client.get(url)).raise_for_status()
        self.seen["downloads"] += 1
        self.live -= 1

    def finished(self) -> bool:
        return not self.to_create and not self.to_poll and self.live == 0


async def main(
    base: str, jobs: list[dict[str, Any]], interval: float, poll_s: float, duration: float
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        naive = Naive(client, base, jobs, poll_s)
        start = time.monotonic()
        tick = 0
        while not naive.finished() and time.monotonic() - start < duration:
            # The schedule is fixed: tick k at start + k * interval (late ticks catch up).
            await asyncio.sleep(max(0.0, start + tick * interval - time.monotonic()))
            tick += 1
            work = naive.next_work(time.monotonic())
            if work is None:
                naive.seen["idle_ticks"] += 1
            else:
                naive.spawn(work)
        for task in list(naive.background):
            task.cancel()
        await asyncio.gather(*naive.background, return_exceptions=True)
        return {"ticks": tick, "elapsed": time.monotonic() - start, **naive.seen}


if __name__ == "__main__":
    base_url, jobs_file, interval_s, poll, seconds = sys.argv[1:6]
    jobs_list = json.loads(Path(jobs_file).read_text())
    summary = asyncio.run(main(base_url, jobs_list, float(interval_s), float(poll), float(seconds)))
    print(json.dumps(summary))
