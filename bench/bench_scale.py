"""Figure 4, scale: a 100,000-job manifest and a 100,000-job ledger.

- plan: ``load_plan`` of a manifest that expands to 100,000 jobs, in a fresh
  process each run (bench/bench_plan.py): wall time (goal < 2 s) and that
  process's peak RSS (goal < 300 MB);
- resume decision: open a ledger of 100,000 jobs in mid-run (60% downloaded,
  16 tasks live, the rest pending; bench/ledger_bench.py) and ask it everything
  ``batchvid run`` asks before its first request (goal < 0.5 s);
- ``batchvid status`` and ``batchvid report --format csv`` on that ledger: the
  real CLI in a subprocess, wall time (goal < 0.5 s); beside them, the CLI's
  start-up alone (``batchvid --version``), the floor every command pays.

    python bench/bench_scale.py [--jobs 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bench_plan
import ledger_bench
from harness import PYTHON, median, spread, timed

Progress = Callable[[str], None]
BATCH = "b"


@dataclass(slots=True)
class ScaleResult:
    jobs: int = 0
    plan_s: list[float] = field(default_factory=list)
    plan_rss_mb: float = 0.0
    csv_plan_s: list[float] = field(default_factory=list)
    csv_plan_rss_mb: float = 0.0
    resume_s: list[float] = field(default_factory=list)
    status_s: list[float] = field(default_factory=list)
    report_csv_s: list[float] = field(default_factory=list)
    cli_floor_s: list[float] = field(default_factory=list)


def scale(tmp: Path, *, jobs: int, runs: int, progress: Progress = print) -> ScaleResult:
    result = ScaleResult()
    plan = bench_plan.measure(jobs, runs)
    result.jobs, result.plan_s, result.plan_rss_mb = plan["jobs"], plan["seconds"], plan["rss_mb"]
    progress(
        f"  scale: plan of {result.jobs:,} jobs {spread(result.plan_s)} s, "
        f"{result.plan_rss_mb:.0f} MB"
    )
    rows = bench_plan.measure(jobs, runs, csv=True)
    result.csv_plan_s, result.csv_plan_rss_mb = rows["seconds"], rows["rss_mb"]
    progress(
        f"  scale: plan of a {jobs:,}-row CSV of prompts {spread(result.csv_plan_s)} s, "
        f"{result.csv_plan_rss_mb:.0f} MB"
    )
    ledger = tmp / "scale.db"
    ledger_bench.build(ledger, jobs, BATCH)
    cli = [PYTHON, "-m", "batchvid"]
    csv = tmp / "scale.csv"
    for _ in range(runs):
        start = time.perf_counter()
        ledger_bench.resume(ledger, BATCH)
        result.resume_s.append(time.perf_counter() - start)
        result.status_s.append(timed([*cli, "status", BATCH, "--ledger", str(ledger)]).wall)
        report = [*cli, "report", BATCH, "--ledger", str(ledger), "--format", "csv", "-o", str(csv)]
        result.report_csv_s.append(timed(report).wall)
        result.cli_floor_s.append(timed([*cli, "--version"]).wall)
    rows = csv.read_text().count("\n") - 1
    if rows != jobs:
        raise RuntimeError(f"the CSV report has {rows} rows, not {jobs}")
    progress(
        f"  scale: ledger of {jobs:,} jobs: resume decision {spread(result.resume_s, '.3f')} s, "
        f"status {spread(result.status_s)} s, report csv {spread(result.report_csv_s)} s, "
        f"CLI start-up {spread(result.cli_floor_s)} s"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = scale(Path(tmp), jobs=args.jobs, runs=args.runs)
    print(f"\n{r.jobs:,} jobs, median of {args.runs} runs")
    print(f"  plan: {median(r.plan_s):.2f} s   goal < 2 s")
    print(f"  peak RSS of the planning process: {r.plan_rss_mb:.0f} MB   goal < 300 MB")
    print(f"  resume decision: {median(r.resume_s):.3f} s   goal < 0.5 s")
    print(f"  batchvid status: {median(r.status_s):.2f} s   goal < 0.5 s")
    print(f"  batchvid report --format csv: {median(r.report_csv_s):.2f} s   goal < 0.5 s")
    print(f"  (CLI start-up alone: {median(r.cli_floor_s):.2f} s)")


if __name__ == "__main__":
    main()
