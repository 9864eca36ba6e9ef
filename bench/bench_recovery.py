"""Figure 5, recovery: from a restart after ``kill -9`` to the first request, 10,000 jobs in flight.

``batchvid run`` submits a manifest of a little over 10,000 jobs (no rate
limit, 32 requests in flight, room for every task) against a simulator whose
renders take minutes, so every task stays in flight.  Once the ledger holds
10,000 queued tasks the process gets SIGKILL mid-stride (creates still going
out), and the same command starts again.  The figure: seconds from the
restart's process start to the first API request the simulator sees from it
(both clocks are the machine's monotonic clock; the simulator's offset is
measured with a probe request).  Also reported: how many jobs the restart
found ``submitting`` and made ``in_doubt``, and how many creates the simulator
saw twice (goal 0: nothing re-created blindly).

Contrast: the bare loop, which has no ledger: restarted the same way, how soon
its first request goes out, and how many creates it repeated (tasks that
already existed) before it was stopped.

    python bench/bench_recovery.py [--jobs 10000] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    Simulator,
    bare_loop_args,
    batchvid_env,
    batchvid_run_args,
    median,
    write_jobs_json,
    write_manifest,
)

JOBS = 10_000
#: Renders of 20-60 minutes: nothing finishes while the benchmark watches (at 1.0 the
#: first tasks finish, and leave, before 10,000 are in flight on 2 cores).
SIM_SCALE = 20.0
#: Jobs beyond JOBS: still pending at the kill, so creates are in flight then.
EXTRA = 600

Progress = Callable[[str], None]


@dataclass(slots=True)
class RecoveryResult:
    jobs: int = 0
    in_flight_at_kill: list[int] = field(default_factory=list)
    to_first_request: list[float] = field(default_factory=list)
    in_doubt: list[int] = field(default_factory=list)
    duplicate_creates: list[int] = field(default_factory=list)
    bare_to_first_request: list[float] = field(default_factory=list)
    bare_repeated_creates: list[int] = field(default_factory=list)


def live_tasks(ledger: Path) -> int:
    """Jobs of the ledger whose task exists upstream (read-only, beside the running process)."""
    try:
        conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return 0
    try:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE state IN ('queued', 'in_progress')"
        ).fetchone()
        return int(row[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


def state_count(ledger: Path, state: str) -> int:
    with sqlite3.connect(ledger) as conn:
        return int(
            conn.execute("SELECT count(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0]
        )


def first_request_after(sim: Simulator, started: float, offset: float, timeout: float) -> float:
    """Seconds from ``started`` (monotonic) to the first API request logged after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        times = [
            r["t"] + offset
            for r in sim.stats()["requests"]
            if not r["path"].endswith("bench-probe") and r["t"] + offset >= started
        ]
        if times:
            return min(times) - started
    raise RuntimeError(f"no request within {timeout} s of the restart")


def restart_until_first_request(
    sim: Simulator, args: list[str], env: dict[str, str] | None, timeout: float = 60
) -> float:
    """Start ``args``; kill it once the simulator has seen its first request; return the delay."""
    offset = sim.clock_offset()
    started = time.monotonic()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        return first_request_after(sim, started, offset, timeout)
    finally:
        process.kill()
        process.wait()


def recovery(
    tmp: Path, *, runs: int, jobs: int = JOBS, progress: Progress = print
) -> RecoveryResult:
    result = RecoveryResult()
    manifest = write_manifest(tmp / "recovery.yaml", "recovery", jobs + EXTRA, resolution="720p")
    jobs_json = tmp / "recovery-jobs.json"
    result.jobs = write_jobs_json(manifest, jobs_json)
    with Simulator(time_scale=SIM_SCALE) as sim:
        for run in range(runs):
            sim.reset()
            ledger = tmp / f"recovery-{run}.db"
            env = batchvid_env(sim, ledger)
            args = batchvid_run_args(
                manifest, time_scale=1.0, concurrency=48, max_active=jobs + EXTRA
            )
            first = subprocess.Popen(
                args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                deadline = time.monotonic() + 400
                while (live := live_tasks(ledger)) < jobs:
                    if first.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"batchvid run stopped or stalled at {live} tasks")
                    time.sleep(0.05)
            finally:
                os.kill(first.pid, signal.SIGKILL)
                first.wait()
            result.in_flight_at_kill.append(live_tasks(ledger))
            submitting = state_count(ledger, "submitting")
            time.sleep(0.5)  # the simulator finishes what the dead process had sent
            result.to_first_request.append(restart_until_first_request(sim, args, env))
            result.in_doubt.append(state_count(ledger, "in_doubt"))
            result.duplicate_creates.append(int(sim.stats()["duplicate_creates"]))
            bare = bare_loop_args(
                sim, jobs_json, tmp / "recovery-bare", concurrency=32, poll_s=10.0
            )
            result.bare_to_first_request.append(restart_until_first_request(sim, bare, None))
            repeated = int(sim.stats()["duplicate_creates"]) - result.duplicate_creates[-1]
            result.bare_repeated_creates.append(repeated)
            progress(
                f"  recovery: run {run + 1}/{runs}: killed with {result.in_flight_at_kill[-1]} "
                f"tasks in flight, {submitting} submitting; restart to first request "
                f"{result.to_first_request[-1]:.2f} s, {result.in_doubt[-1]} in doubt, "
                f"{result.duplicate_creates[-1]} duplicate creates; bare loop "
                f"{result.bare_to_first_request[-1]:.2f} s, {repeated} creates repeated by then"
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = recovery(Path(tmp), runs=args.runs, jobs=args.jobs)
    print(f"\nkill -9 with {median(r.in_flight_at_kill):.0f} tasks in flight, then restart")
    print(
        f"  restart to first request: {median(r.to_first_request):.2f} s "
        f"(bare loop, no ledger: {median(r.bare_to_first_request):.2f} s, re-creating)"
    )
    print(
        f"  in doubt after the restart: {median(r.in_doubt):.0f}; "
        f"duplicate creates: {median(r.duplicate_creates):.0f}"
    )


if __name__ == "__main__":
    main()
