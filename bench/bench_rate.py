"""Figure 2, rate fidelity: does a client hold a limit of R requests a minute exactly?

Time-scaled: with time scale S the window is 60*S seconds (batchvid's limiter
window scales with ``--time-scale``; the simulator's ``--rate-window`` is set
to the same).  Each contender runs twice against one simulator process:

- **free**: the simulator enforces nothing, so the client's own pacing shows:
  the most requests the simulator saw in any window, divided by R (goal <=
  1.00), and utilisation while work remained (goal >= 0.95): requests answered
  between the first request and the last create, over R per window elapsed;
- **enforcing**: the simulator allows exactly R per sliding window and answers
  429 beyond: the number of 429s (goal 0).

Contenders: ``batchvid run --rate-per-minute R`` on enough jobs that creates
remain for several windows, and bench/naive_client.py, which sends one request
every 60*S/R seconds whatever the answers (for as many windows).

    python bench/bench_rate.py [--rate 600] [--scale 0.1] [--windows 3] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    PYTHON,
    Simulator,
    batchvid_run,
    median,
    timed,
    write_jobs_json,
    write_manifest,
)

from batchvid.sim.state import max_in_window

RATE = 600
SCALE = 0.1
WINDOWS = 3
#: Requests batchvid spends per job here: a create and (renders end before the first poll) one poll.
REQUESTS_PER_JOB = 2

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Fidelity:
    """What the simulator saw of one contender's run."""

    max_window_ratio: float
    rejected_429: int
    utilisation: float
    requests: int
    busy_s: float


def fidelity(stats: dict[str, Any], rate: int, window: float) -> Fidelity:
    requests = stats["requests"]
    times = [r["t"] for r in requests]
    start = min(times)
    end = max(r["t"] for r in requests if r["method"] == "POST")
    answered = [r for r in requests if start <= r["t"] <= end and r["status"] != 429]
    windows = max(end - start, 1e-9) / window
    return Fidelity(
        max_window_ratio=max_in_window(times, window) / rate,
        rejected_429=int(stats["counters"].get("rate_limited", 0)),
        utilisation=len(answered) / (rate * windows),
        requests=len(requests),
        busy_s=end - start,
    )


@dataclass(slots=True)
class RateResult:
    rate: int
    window: float
    jobs: int = 0
    ours: dict[str, list[Fidelity]] = field(default_factory=lambda: {"free": [], "enforcing": []})
    naive: dict[str, list[Fidelity]] = field(default_factory=lambda: {"free": [], "enforcing": []})

    @staticmethod
    def med(rows: list[Fidelity], name: str) -> float:
        return median(getattr(f, name) for f in rows)


def rate_fidelity(
    tmp: Path,
    *,
    runs: int,
    rate: int = RATE,
    scale: float = SCALE,
    windows: int = WINDOWS,
    progress: Progress = print,
) -> RateResult:
    window = 60.0 * scale
    result = RateResult(rate, window)
    manifest = write_manifest(tmp / "rate.yaml", "rate", windows * rate // REQUESTS_PER_JOB)
    jobs_json = tmp / "rate-jobs.json"
    result.jobs = write_jobs_json(manifest, jobs_json)
    with Simulator(time_scale=scale) as sim:
        for run in range(runs):
            for variant in ("free", "enforcing"):
                limit = (
                    {"rate_limit": rate, "rate_window": window} if variant == "enforcing" else {}
                )
                sim.reset()
                sim.configure(**limit)
                ledger = tmp / f"rate-{run}-{variant}.db"
                batchvid_run(sim, manifest, ledger, time_scale=scale, rate_per_minute=rate)
                result.ours[variant].append(fidelity(sim.stats(), rate, window))
                sim.reset()
                sim.configure(**limit)
                out = timed(
                    [
                        PYTHON,
                        str(BENCH / "naive_client.py"),
                        sim.base,
                        str(jobs_json),
                        str(window / rate),
                        str(10.0 * scale),
                        str(windows * window),
                    ]
                )
                json.loads(out.stdout)  # it finished and reported
                result.naive[variant].append(fidelity(sim.stats(), rate, window))
                ours, naive = result.ours[variant][-1], result.naive[variant][-1]
                progress(
                    f"  rate {variant}: run {run + 1}/{runs}: batchvid max/R "
                    f"{ours.max_window_ratio:.3f}, 429s {ours.rejected_429}, utilisation "
                    f"{ours.utilisation:.3f}; naive max/R {naive.max_window_ratio:.3f}, 429s "
                    f"{naive.rejected_429}, utilisation {naive.utilisation:.3f}"
                )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=RATE)
    parser.add_argument("--scale", type=float, default=SCALE)
    parser.add_argument("--windows", type=int, default=WINDOWS)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = rate_fidelity(
            Path(tmp), runs=args.runs, rate=args.rate, scale=args.scale, windows=args.windows
        )
    print(f"\nR = {r.rate}/min, window {r.window:g} s (time scale {args.scale}), {r.jobs} jobs")
    print(f"{'':34}{'batchvid run':>14}{'naive fixed':>14}   goal")
    rows = (
        ("max in any window / R", "free", "max_window_ratio", ".3f", "<= 1.00"),
        ("429s (simulator enforcing R)", "enforcing", "rejected_429", ".0f", "0"),
        ("utilisation while work remained", "free", "utilisation", ".3f", ">= 0.95"),
    )
    for label, variant, name, fmt, goal in rows:
        ours = r.med(r.ours[variant], name)
        naive = r.med(r.naive[variant], name)
        print(f"{label:34}{ours:>14{fmt}}{naive:>14{fmt}}   {goal}")


if __name__ == "__main__":
    main()
