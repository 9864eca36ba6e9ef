"""Figure 3, turnaround: how soon a finished render is noticed, and whether that holds all night.

Every figure here is measured by the simulator, on its own clock: each task's
creation, its true render time, and the first poll that answered it done.
Renders last seconds, not fractions of one, so the whole-second ``created_at``
/ ``completed_at`` the simulator sends (as the docs show) still mean something.

a. **Turnaround at the active-task cap**: N jobs, at most 16 rendering, renders
   of the docs' shape (1-3 simulated minutes by model, seconds and resolution,
   log-normal spread), time scale 0.1.  batchvid from a fresh ledger beside the
   docs' own loop (poll every 10 s, same cap), each against its own simulator,
   at the same time.  Efficiency = Σ render / Σ (seen done - created), overall
   and over the last fifth of tasks; polls per job; wall time / ideal, where
   ideal = ⌈N / cap⌉ x mean render.
b. **Rate use, renders shorter than the docs' guess**: 100 jobs at 300
   requests/min (simulator enforcing it), batchvid at real time against renders
   of 7-14 s (the docs say 1-3 minutes): requests answered / allowed while work
   remained (first request to the last task seen done), and 429s.
c. **Flat over a long batch**: the same setup at 1,000 and 10,000 jobs (256
   rendering, time scale 0.01): CPU per job of each, and within the long run the
   median seen-after (seen done - finished) and the throughput of the first
   and last fifth.

    python bench/bench_turnaround.py [--jobs 600] [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    Simulator,
    Timed,
    bare_loop_args,
    batchvid_run,
    timed,
    write_jobs_json,
    write_manifest,
)

#: Renders of 7-14 s at this scale (72-135 simulated seconds).
SCALE = 0.1
CAP = 16
DOCS_POLL_S = 10.0
SHAPE: dict[str, Any] = {
    "models": ("doubao-seedance-2-0", "doubao-seedance-2-0-fast", "doubao-seedance-1-5-pro"),
    "sizes": ("16:9", "9:16"),
    "seconds": (5, 10),
    "resolution": "720p",
}
RATE = 300
LONG_SCALE = 0.01
LONG_CAP = 256

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Turnaround:
    """What the simulator saw of one contender's run."""

    jobs: int
    efficiency: float
    efficiency_last_fifth: float
    polls_per_job: float
    wall_over_ideal: float
    mean_render_s: float
    wall_s: float


def finished_tasks(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Completed tasks seen done, in creation order."""
    tasks = [t for t in stats["tasks"].values() if t["outcome"] == "completed" and t["seen_done_t"]]
    return sorted(tasks, key=lambda t: t["created_t"])


def efficiency(tasks: list[dict[str, Any]]) -> float:
    """Σ render / Σ (seen done - created): 1.0 is noticing every render as it ends."""
    render = sum(t["duration_s"] for t in tasks)
    waited = sum(t["seen_done_t"] - t["created_t"] for t in tasks)
    return render / waited if waited else math.nan


def turnaround_of(stats: dict[str, Any], run: Timed, cap: int) -> Turnaround:
    tasks = finished_tasks(stats)
    polls = sum(stats["polls"].values())
    mean_render = statistics.fmean(t["duration_s"] for t in tasks)
    ideal = math.ceil(len(tasks) / cap) * mean_render
    return Turnaround(
        jobs=len(tasks),
        efficiency=efficiency(tasks),
        efficiency_last_fifth=efficiency(tasks[-max(1, len(tasks) // 5) :]),
        polls_per_job=polls / max(1, len(tasks)),
        wall_over_ideal=run.wall / ideal,
        mean_render_s=mean_render,
        wall_s=run.wall,
    )


def side_by_side(*work: Callable[[], None]) -> None:
    """Run each piece of work in its own thread (each one waits on a child process)."""
    threads = [threading.Thread(target=w) for w in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def turnaround(
    tmp: Path, *, jobs: int, cap: int = CAP, scale: float = SCALE, progress: Progress = print
) -> tuple[Turnaround, Turnaround]:
    """Figure 3a: (batchvid, the docs' fixed-10 s loop), measured at the same time."""
    manifest = write_manifest(tmp / "turnaround.yaml", "turnaround", jobs, **SHAPE)
    jobs_json = tmp / "turnaround.json"
    n = write_jobs_json(manifest, jobs_json)
    runs: dict[str, Timed] = {}
    stats: dict[str, dict[str, Any]] = {}
    with Simulator(time_scale=scale, seed=3) as ours, Simulator(time_scale=scale, seed=3) as docs:

        def batchvid() -> None:
            runs["ours"] = batchvid_run(
                ours, manifest, tmp / "turnaround.db",
                time_scale=scale, concurrency=cap, max_active=cap, rate_per_minute=0,
            )  # fmt: skip
            stats["ours"] = ours.stats()

        def docs_loop() -> None:
            args = bare_loop_args(
                docs, jobs_json, tmp / "docs-loop", concurrency=cap,
                poll_s=DOCS_POLL_S * scale, max_active=cap,
            )  # fmt: skip
            runs["docs"] = timed(args)
            stats["docs"] = docs.stats()

        progress(f"  turnaround: {n} jobs, at most {cap} rendering, time scale {scale}")
        side_by_side(batchvid, docs_loop)
    result = (
        turnaround_of(stats["ours"], runs["ours"], cap),
        turnaround_of(stats["docs"], runs["docs"], cap),
    )
    for name, t in zip(("batchvid", "docs' loop"), result, strict=True):
        progress(
            f"  {name}: efficiency {t.efficiency:.3f} (last fifth {t.efficiency_last_fifth:.3f}),"
            f" {t.polls_per_job:.2f} polls/job, wall {t.wall_s:.0f} s = "
            f"{t.wall_over_ideal:.2f}x ideal (mean render {t.mean_render_s:.1f} s)"
        )
    return result


@dataclass(frozen=True, slots=True)
class RateUse:
    used_over_allowed: float
    rejected_429: int
    requests: int
    span_s: float
    polls_per_job: float


def rate_use(
    tmp: Path, *, jobs: int = 100, rate: int = RATE, progress: Progress = print
) -> RateUse:
    """Figure 3b: a rate-limited run whose renders are much shorter than the docs' guess."""
    manifest = write_manifest(tmp / "rate-use.yaml", "rate-use", jobs, **SHAPE)
    with Simulator(time_scale=SCALE, rate_limit=rate, rate_window=60, seed=5) as sim:
        batchvid_run(
            sim, manifest, tmp / "rate-use.db",
            time_scale=1.0, rate_per_minute=rate, max_active=jobs, concurrency=8,
        )  # fmt: skip
        stats = sim.stats()
    requests = stats["requests"]
    start = min(r["t"] for r in requests)
    end = max(t["seen_done_t"] for t in finished_tasks(stats))
    answered = [r for r in requests if start <= r["t"] <= end and r["status"] != 429]
    span = end - start
    result = RateUse(
        used_over_allowed=len(answered) / (rate * span / 60),
        rejected_429=sum(1 for r in requests if r["status"] == 429),
        requests=len(requests),
        span_s=span,
        polls_per_job=sum(stats["polls"].values()) / max(1, len(finished_tasks(stats))),
    )
    progress(
        f"  rate use: {jobs} jobs at {rate}/min, renders 7-14 s: {result.requests} requests "
        f"in {span:.0f} s = {result.used_over_allowed:.2f} of the allowed rate, "
        f"{result.rejected_429} 429s, {result.polls_per_job:.2f} polls/job"
    )
    return result


@dataclass(frozen=True, slots=True)
class LongRun:
    jobs: int
    cpu_per_job_ms: float
    seen_after_first_s: float
    seen_after_last_s: float
    throughput_first: float
    throughput_last: float


def long_run(tmp: Path, *, jobs: int, progress: Progress = print) -> LongRun:
    """Figure 3c: one long batch; CPU per job and first vs last fifth."""
    manifest = write_manifest(tmp / f"long-{jobs}.yaml", f"long{jobs}", jobs, **SHAPE)
    with Simulator(time_scale=LONG_SCALE, seed=9) as sim:
        run = batchvid_run(
            sim, manifest, tmp / f"long-{jobs}.db",
            time_scale=LONG_SCALE, concurrency=16, max_active=LONG_CAP, rate_per_minute=0,
        )  # fmt: skip
        tasks = finished_tasks(sim.stats())
    fifth = max(1, len(tasks) // 5)
    first, last = tasks[:fifth], tasks[-fifth:]

    def seen_after(group: list[dict[str, Any]]) -> float:
        return statistics.median(t["seen_done_t"] - t["created_t"] - t["duration_s"] for t in group)

    def per_minute(group: list[dict[str, Any]]) -> float:
        done = sorted(t["seen_done_t"] for t in group)
        return 60 * len(done) / max(done[-1] - done[0], 1e-9)

    result = LongRun(
        jobs=len(tasks),
        cpu_per_job_ms=1000 * run.cpu / len(tasks),
        seen_after_first_s=seen_after(first),
        seen_after_last_s=seen_after(last),
        throughput_first=per_minute(first),
        throughput_last=per_minute(last),
    )
    progress(
        f"  long run, {len(tasks)} jobs: {result.cpu_per_job_ms:.1f} ms CPU/job, seen after "
        f"{result.seen_after_first_s:.3f} s (first fifth) vs {result.seen_after_last_s:.3f} s "
        f"(last), {result.throughput_first:.0f} vs {result.throughput_last:.0f} jobs/min"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--long", type=int, nargs=2, default=(1000, 10000))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        turnaround(tmp, jobs=args.jobs)
        rate_use(tmp)
        for n in args.long:
            long_run(tmp, jobs=n)


if __name__ == "__main__":
    main()
