"""Figure 7: beyond one machine, a PostgreSQL ledger that many workers share.

    .venv/bin/python bench/bench_shared.py [--jobs 600]

a. one worker, SQLite vs PostgreSQL: CPU per job and wall time of the same batch
   (no rate limit, 256 rendering), the ledger being the only difference;
b. one vs three workers on one batch at one shared rate limit (the simulator
   enforcing it): requests used / allowed while creates were waiting, and
   answers of 429;
c. a worker killed (SIGKILL) mid-batch beside another: the time from the kill
   until every task it held (its polls in flight) is polled again, in seconds
   and in leases (about one lease: they are taken over once its lease has
   ended; a worker holds a task only while it polls or downloads it, so the
   tasks it did not hold are polled by the other when due).

The PostgreSQL server is a throwaway one on 127.0.0.1, durable (fsync on, as
the SQLite ledger is), started by ``tests/pg_server.py``; or the one
``BATCHVID_BENCH_PG`` names (a URL of a database the benchmark may fill).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    ROOT,
    SOURCE,
    Simulator,
    Timed,
    batchvid_env,
    batchvid_run,
    batchvid_run_args,
    write_manifest,
)

from batchvid.remote.ratelimit import DEFAULT_BURST

sys.path.insert(0, str(ROOT / "tests"))
from pg_server import PgServer  # the tests' own throwaway server

Progress = Callable[[str], None]
#: Renders of 35-56 simulated seconds at this scale: 0.35-0.56 s (a: CPU, not waiting).
CPU_SCALE = 0.01
#: b: renders of 7-11 s, the docs' 10 s poll floor 2 s, a minute 12 s.  Not faster: the
#: limiter's hard window keeps DEFAULT_SLACK (0.25 s, real network time, never scaled) in
#: hand, 2 % of a 12 s minute, but 8 % of a 3 s one: a smaller scale measures that.
RATE_SCALE = 0.2
#: Low enough that the rate, not the renders, bounds the batch (its requests / rate
#: take several times its renders); no cap on active tasks, so that nothing else does.
RATE = 240
#: c: renders of 1.7-2.8 s, a lease of 3 s.
SCALE = 0.05
LEASE_S = 60.0


@dataclass(frozen=True, slots=True)
class Shared:
    jobs: int
    sqlite: Timed
    postgres: Timed
    rate_jobs: int
    #: workers -> (requests used / allowed, answers of 429)
    rate: dict[int, tuple[float, int]]
    #: tasks the killed worker held (polls in flight), and seconds from the kill until
    #: every one of them was polled again
    takeover_held: int
    takeover_s: float
    lease_s: float


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh database: on ``BATCHVID_BENCH_PG``'s server, else on a throwaway durable one."""
    given = os.environ.get("BATCHVID_BENCH_PG")
    if given:
        yield given
        return
    with PgServer(durable=True) as server:
        yield server.create_database(f"bench_{uuid.uuid4().hex[:8]}")


def one_worker(tmp: Path, url: str, jobs: int, progress: Progress) -> tuple[Timed, Timed]:
    """Figure 7a: the same batch on each ledger, one worker."""
    manifest = write_manifest(tmp / "one.yaml", "one", jobs)
    results = []
    with Simulator(time_scale=CPU_SCALE, seed=3) as sim:
        for ledger in (str(tmp / "one.db"), url):
            sim.reset()
            run = batchvid_run(
                sim, manifest, ledger,
                time_scale=CPU_SCALE, max_active=256, concurrency=16,
            )  # fmt: skip
            results.append(run)
            kind = "SQLite" if ledger.endswith(".db") else "PostgreSQL"
            progress(
                f"  {kind}: {jobs} jobs in {run.wall:.1f} s, CPU {1000 * run.cpu / jobs:.2f} ms/job"
            )
    return results[0], results[1]


def workers(
    manifest: Path, url: str, sim: Simulator, n: int, *, scale: float, **limits: Any
) -> list[subprocess.Popen[bytes]]:
    """``n`` workers of one batch on the PostgreSQL ledger, started together."""
    args = [
        *batchvid_run_args(manifest, time_scale=scale, **limits),
        "--lease",
        str(LEASE_S),
    ]
    env = batchvid_env(sim, url)
    return [
        subprocess.Popen(args, env=env, cwd=SOURCE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        for _ in range(n)
    ]  # fmt: skip


def rate_use(stats: dict[str, Any]) -> tuple[float, int]:
    """Requests answered (not 429) while creates were still waiting to be sent (from the
    first request to the last create), over what the rate allowed in that time; and the
    429s.  After the last create only the renders still running bound the batch, not the
    rate: that tail says nothing about the limiter.  What the rate allowed includes the
    burst a full bucket grants at the start (without it, short runs show more than 1)."""
    requests = stats["requests"]
    creates = [r["t"] for r in requests if r["method"] == "POST" and r["status"] != 429]
    start, end = min(r["t"] for r in requests), max(creates)
    answered = sum(1 for r in requests if start <= r["t"] <= end and r["status"] != 429)
    allowed = DEFAULT_BURST + RATE * (end - start) / (60 * RATE_SCALE)
    return answered / allowed, sum(1 for r in requests if r["status"] == 429)


def shared_rate(tmp: Path, url: str, jobs: int, progress: Progress) -> dict[int, tuple[float, int]]:
    """Figure 7b: one batch at one shared rate, by one worker and by three."""
    found = {}
    for n in (1, 3):
        manifest = write_manifest(tmp / f"rate{n}.yaml", f"rate{n}", jobs)
        window = 60 * RATE_SCALE
        with Simulator(time_scale=RATE_SCALE, seed=4, rate_limit=RATE, rate_window=window) as sim:
            for process in workers(manifest, url, sim, n, scale=RATE_SCALE, rate_per_minute=RATE):
                process.wait()
            found[n] = rate_use(sim.stats())
        progress(f"  {n} worker(s): {found[n][0]:.2f} of the allowed rate, {found[n][1]} × 429")
    return found


def takeover(tmp: Path, url: str, jobs: int, progress: Progress) -> tuple[int, float]:
    """Figure 7c: kill one of two workers while it is polling; the tasks it held then (its
    polls in flight) and the time until the other had polled every one of them again.

    Polls are answered in 0.15 s (real), so that a worker always holds some; the tasks
    it did not hold are polled by the other when due, as if nothing had happened.  "Polled
    again" is read from the ledger (a task's ``polls`` goes up once a poll's answer is
    recorded): the simulator's request log cannot tell the survivor's polls from those
    the killed worker sent just before it died."""
    import psycopg

    manifest = write_manifest(tmp / "kill.yaml", "kill", jobs)
    with (
        Simulator(time_scale=SCALE, seed=6, poll_delay=0.15) as sim,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        # No rate limit: a backlog of requests would delay these polls too.
        doomed, other = workers(manifest, url, sim, 2, scale=SCALE, max_active=64)

        def holding() -> dict[str, int]:
            rows = conn.execute(
                """SELECT task_id, polls FROM jobs WHERE batch = 'kill' AND claimed_by LIKE %s
                AND state IN ('queued', 'in_progress')""",
                (f"%:{doomed.pid}:%",),
            ).fetchall()
            return dict(rows)

        # Into the batch (a third of it created), at a moment it is polling.
        while sim.stats()["creates"] < jobs // 3 or not holding():
            time.sleep(0.02)
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        held = holding()
        again: dict[str, float] = {}
        while len(again) < len(held) and other.poll() is None:
            rows = conn.execute(
                "SELECT task_id, polls FROM jobs WHERE task_id = ANY(%s)", (list(held),)
            ).fetchall()
            now = time.monotonic()
            for task, polls in rows:
                if polls > held[task]:
                    again.setdefault(task, now - killed_at)
            time.sleep(0.02)
        doomed.wait()
        other.wait()
    if len(again) < len(held):
        raise RuntimeError(f"of {len(held)} tasks held at the kill, {len(again)} polled again")
    last = max(again.values())
    progress(
        f"  {len(held)} tasks held by the killed worker, all polled again by {last:.2f} s; "
        f"lease {LEASE_S * SCALE:.2f} s"
    )
    return len(held), last


def shared(tmp: Path, *, jobs: int, progress: Progress = print) -> Shared:
    with pg_database() as url:
        progress(f"figure 7a: one worker, SQLite vs PostgreSQL, {jobs} jobs")
        sqlite, postgres = one_worker(tmp, url, jobs, progress)
        rate_jobs = max(60, jobs // 4)
        progress(f"figure 7b: 1 vs 3 workers at a shared {RATE}/min, {rate_jobs} jobs")
        rate = shared_rate(tmp, url, rate_jobs, progress)
        progress("figure 7c: a worker killed mid-batch; the tasks it held polled again after")
        held, takeover_s = takeover(tmp, url, rate_jobs, progress)
    return Shared(jobs, sqlite, postgres, rate_jobs, rate, held, takeover_s, LEASE_S * SCALE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchvid-bench-") as tmp:
        fig = shared(Path(tmp), jobs=args.jobs)
    print(fig)


if __name__ == "__main__":
    main()
