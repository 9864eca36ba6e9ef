"""Figure 1: `batchvid run` beside a bare httpx loop, against one simulator.

**Overhead** (figure 1): both contenders do create -> poll -> download for the
same N jobs with the same requests in flight, against one ``batchvid
simulator`` in its own process (no rate limit, a tiny time scale, so the run is
CPU-bound and overhead shows).  batchvid runs as a user runs it (a subprocess
of the CLI) on a ledger that already has render-time history (a warm-up
batch); the bare loop keeps no ledger and polls on the docs' fixed 10 s
(scaled).  batchvid runs with ``--no-probe``: the bare loop never opens a file,
and what probing costs is figure 6 (``bench_media.py``).  Wall and CPU time of
each child; ratios of per-run pairs.

    python bench/bench_run.py [--jobs 2000] [--runs 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    FAST_MODELS,
    Simulator,
    Timed,
    bare_loop_args,
    batchvid_run,
    polls_per_completed,
    ratio,
    spread,
    timed,
    write_jobs_json,
    write_manifest,
)

#: Figure 1's "tiny" time scale: a 45 s render takes 0.09 s.
OVERHEAD_SCALE = 0.002
#: The docs' fixed poll cadence, in API seconds (scaled by the time scale).
DOCS_POLL_S = 10.0
WARMUP_JOBS = 120

Progress = Callable[[str], None]


@dataclass(slots=True)
class Pairs:
    """Side-by-side runs: batchvid and its contender, one pair per run."""

    jobs: int = 0
    ours: list[Timed] = field(default_factory=list)
    theirs: list[Timed] = field(default_factory=list)
    our_polls: list[float] = field(default_factory=list)
    their_polls: list[float] = field(default_factory=list)

    def wall_ratio(self) -> float:
        return ratio([t.wall for t in self.ours], [t.wall for t in self.theirs])

    def cpu_ratio(self) -> float:
        return ratio([t.cpu for t in self.ours], [t.cpu for t in self.theirs])


def overhead(
    tmp: Path,
    *,
    jobs: int,
    runs: int,
    scale: float = OVERHEAD_SCALE,
    concurrency: int = 16,
    progress: Progress = print,
) -> Pairs:
    """Figure 1 at simulator time scale ``scale``."""
    result = Pairs()
    with Simulator(time_scale=scale) as sim:
        for run in range(runs):
            ledger = tmp / f"overhead-{scale}-{run}.db"
            warm = write_manifest(tmp / f"warm-{run}.yaml", f"warmup{run}", WARMUP_JOBS)
            batchvid_run(sim, warm, ledger, time_scale=scale, concurrency=concurrency, probe=False)
            manifest = write_manifest(tmp / f"bench-{run}.yaml", f"bench{run}", jobs)
            jobs_json = tmp / f"jobs-{run}.json"
            result.jobs = write_jobs_json(manifest, jobs_json)

            def ours(manifest: Path = manifest, ledger: Path = ledger) -> None:
                sim.reset()
                result.ours.append(
                    batchvid_run(
                        sim,
                        manifest,
                        ledger,
                        time_scale=scale,
                        concurrency=concurrency,
                        poll_interval=DOCS_POLL_S,
                        probe=False,  # the bare loop opens no file; figure 6 prices probing
                    )
                )
                result.our_polls.append(polls_per_completed(sim.stats()))

            def theirs(jobs_json: Path = jobs_json, run: int = run) -> None:
                sim.reset()
                args = bare_loop_args(
                    sim,
                    jobs_json,
                    tmp / f"bare-{scale}-{run}",
                    concurrency=concurrency,
                    poll_s=DOCS_POLL_S * scale,
                )
                result.theirs.append(timed(args))
                result.their_polls.append(polls_per_completed(sim.stats()))

            # Alternate who goes first, so a drift in machine speed favours neither.
            for contender in (ours, theirs) if run % 2 == 0 else (theirs, ours):
                contender()
            progress(
                f"  overhead @{scale}: run {run + 1}/{runs}: batchvid {result.ours[-1].wall:.2f} s"
                f" wall {result.ours[-1].cpu:.2f} s CPU; bare loop {result.theirs[-1].wall:.2f} s"
                f" wall {result.theirs[-1].cpu:.2f} s CPU"
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        fig1 = overhead(tmp, jobs=args.jobs, runs=args.runs, concurrency=args.concurrency)
    print(
        f"\n{fig1.jobs} jobs ({', '.join(FAST_MODELS)}), concurrency {args.concurrency}, "
        f"time scale {OVERHEAD_SCALE}, {args.runs} runs: median (min-max)"
    )
    print(f"{'':26}{'batchvid run':>22}{'bare httpx':>22}")
    for label, key in (("wall time (s)", "wall"), ("CPU time (s)", "cpu")):
        ours = [getattr(t, key) for t in fig1.ours]
        theirs = [getattr(t, key) for t in fig1.theirs]
        print(f"{label:26}{spread(ours):>22}{spread(theirs):>22}")
    print(f"wall-time ratio (median of per-run ratios): {fig1.wall_ratio():.2f}x   goal <= 1.25x")
    print(f"CPU-time ratio (median of per-run ratios):  {fig1.cpu_ratio():.2f}x")


if __name__ == "__main__":
    main()
