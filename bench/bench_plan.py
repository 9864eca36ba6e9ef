"""Benchmark: expand and prevalidate a manifest that expands to 100,000 jobs.

Prints wall time (median of several runs) and the peak RSS of a fresh process
for ``load_plan`` (read, parse, expand, check, price).  Goal (issue 2): under
2 s and under 300 MB on a 2-core machine.

    python bench/bench_plan.py [--jobs 100000] [--runs 5]
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


def child(manifest: str) -> None:
    from batchvid.manifest.plan import load_plan

    start = time.perf_counter()
    plan = load_plan(manifest)
    elapsed = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": elapsed, "rss_mb": rss_mb, "jobs": plan.totals.jobs}))


def measure(jobs: int, runs: int) -> dict[str, Any]:
    """``runs`` fresh processes each planning one manifest of ``jobs`` jobs.

    Returns the job count, every run's ``load_plan`` seconds and the peak RSS (MB)
    of the biggest of those processes.
    """
    from harness import timed  # not at the top: the child's RSS is the figure

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "bench.yaml"
        expected = write_manifest(manifest, jobs)
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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    figures = measure(args.jobs, args.runs)
    times = figures["seconds"]
    print(f"plan of {figures['jobs']:,} jobs ({args.runs} runs, fresh process each)")
    print(f"  load_plan wall time: median {statistics.median(times):.3f} s "
          f"(min {min(times):.3f}, max {max(times):.3f})   goal < 2 s")  # fmt: skip
    print(f"  peak RSS (whole process): {figures['rss_mb']:.0f} MB   goal < 300 MB")


if __name__ == "__main__":
    main()
