"""Benchmark: expand and prevalidate a manifest that expands to 100,000 jobs.

Prints wall time (median of several runs) and the peak RSS of a fresh process
for ``load_plan`` (read, parse, expand, check, price).  Goal (issue 2): under
2 s and under 300 MB on a 2-core machine.  ``--csv``: the same for a manifest
whose prompts are a 100,000-row CSV file, each row with its own id, model,
seconds, size and a template column (goal, issue 15: under 2 s and 300 MB).

    python bench/bench_plan.py [--jobs 100000] [--runs 5] [--csv]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STYLES = [f"style{i}" for i in range(10)]
MODELS = ["doubao-seedance-2-0", "doubao-seedance-2-0-fast", "doubao-seedance-1-5-pro",
          "doubao-seedance-1-0-pro"]  # fmt: skip
SIZES = ["16:9", "9:16", "1:1", "4:3", "21:9"]


def write_manifest(path: Path, jobs: int) -> int:
    """A realistic matrix: prompts x models x sizes x styles x takes. Returns the job count."""
    per_prompt = len(MODELS) * len(SIZES) * len(STYLES) * 5  # 5 takes
    prompts = max(1, jobs // per_prompt)
    lines = [
        "version: 1",
        "batch: bench-100k",
        "defaults: {seconds: 5, resolution: 720p}",
        "matrix:",
        f"  model: [{', '.join(MODELS)}]",
        f"  size: [{', '.join(repr(s) for s in SIZES)}]",
        f"  style: [{', '.join(STYLES)}]",
        "repeat: 5",
        "pricing: {doubao-seedance-2-0: 0.10, doubao-seedance-1-5-pro: 0.06, "
        "doubao-seedance-1-0-pro: 0.04}",
        "prompts:",
    ]
    for i in range(prompts):
        lines.append(
            f'  - "Shot {i}: a slow dolly across a harbour at dawn, gulls overhead, {{style}}"'
        )
    path.write_text("\n".join(lines) + "\n")
    return prompts * per_prompt


def write_csv_manifest(path: Path, rows: int) -> int:
    """A manifest reading ``rows`` prompts from a CSV beside it. Returns the job count."""
    csv_path = path.with_name("prompts.csv")
    with csv_path.open("w", encoding="utf-8") as out:
        out.write("id,prompt,model,seconds,size,style\n")
        for i in range(rows):
            model = MODELS[i % len(MODELS)]
            seconds = 4 + i % 7  # 4-10: every model takes these
            out.write(
                f'shot-{i},"Shot {i}: a slow dolly across a harbour at dawn, {{style}}",'
                f"{model},{seconds},{SIZES[i % len(SIZES)]},{STYLES[i % len(STYLES)]}\n"
            )
    path.write_text(
        "version: 1\nbatch: bench-csv\ndefaults: {resolution: 720p}\nprompts: {file: prompts.csv}\n"
    )
    return rows


def child(manifest: str) -> None:
    from batchvid.manifest.plan import load_plan

    start = time.perf_counter()
    plan = load_plan(manifest)
    elapsed = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": elapsed, "rss_mb": rss_mb, "jobs": plan.totals.jobs}))


def measure(jobs: int, runs: int, *, csv: bool = False) -> dict[str, Any]:
    """``runs`` fresh processes each planning one manifest of ``jobs`` jobs (``csv``: its
    prompts in a CSV file, one job a row).

    Returns the job count, every run's ``load_plan`` seconds and the peak RSS (MB)
    of the biggest of those processes.
    """
    from harness import timed  # not at the top: the child's RSS is the figure

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "bench.yaml"
        expected = (write_csv_manifest if csv else write_manifest)(manifest, jobs)
        results = []
        for _ in range(runs):
            out = timed([sys.executable, __file__, "--child", str(manifest)])
            results.append(json.loads(out.stdout))
    assert all(r["jobs"] == expected for r in results), (results, expected)
    return {
        "jobs": expected,
        "seconds": [r["seconds"] for r in results],
        "rss_mb": max(r["rss_mb"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--csv", action="store_true", help="prompts from a CSV, a job a row")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    figures = measure(args.jobs, args.runs, csv=args.csv)
    times = figures["seconds"]
    source = "a CSV of prompts, " if args.csv else ""
    print(f"plan of {source}{figures['jobs']:,} jobs ({args.runs} runs, fresh process each)")
    print(f"  load_plan wall time: median {statistics.median(times):.3f} s "
          f"(min {min(times):.3f}, max {max(times):.3f})   goal < 2 s")  # fmt: skip
    print(f"  peak RSS (whole process): {figures['rss_mb']:.0f} MB   goal < 300 MB")


if __name__ == "__main__":
    main()
