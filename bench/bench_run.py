"""Benchmark: `batchvid run` against a bare httpx loop, side by side, same simulator.

Both contenders do create -> poll -> download for the same N jobs with the same
number of requests in flight, against one `batchvid simulator` running in its
own process (no rate limit, a tiny time scale).  The bare loop keeps no ledger
and polls each task on the docs' fixed 10 s cadence (scaled); batchvid runs as
a user runs it (a subprocess of the CLI), after a warm-up batch that gives its
ledger render-time history.

Prints, for each contender, the median wall time and CPU time of several runs,
the ratio (goal <= 1.25x) and the API polls per completed job (goal <= 1.5).

    python bench/bench_run.py [--jobs 2000] [--runs 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["doubao-seedance-2-0-fast", "doubao-seedance-1-0-pro"]
SIZES = ["16:9", "9:16", "1:1", "4:3", "3:4", "21:9"]
SCALE = 0.002  # a 60 s render takes 0.12 s
POLL_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_manifest(path: Path, batch: str, jobs: int) -> None:
    per_prompt = len(MODELS) * len(SIZES)
    prompts = "\n".join(
        f'  - "bench shot {i}: a tram crossing a bridge at night"'
        for i in range(-(-jobs // per_prompt))
    )
    path.write_text(
        f"version: 1\nbatch: {batch}\ndefaults: {{seconds: 5, resolution: 480p}}\n"
        f"matrix:\n  model: [{', '.join(MODELS)}]\n  size: [{', '.join(repr(s) for s in SIZES)}]\n"
        f"prompts:\n{prompts}\n"
    )


class Simulator:
    """`batchvid simulator` in its own process, so it never shares a core's GIL with a contender."""

    def __init__(self) -> None:
        self.port = free_port()
        self.cdn_port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "batchvid", "simulator", "--port", str(self.port),
             "--cdn-port", str(self.cdn_port), "--time-scale", str(SCALE), "--seed", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.base}/_sim/stats", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the simulator did not start")

    def reset(self) -> None:
        httpx.post(f"{self.base}/_sim/reset", timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.base}/_sim/stats", timeout=30).json()
        return data

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall and CPU seconds of one child process, which must succeed."""
    cpu, start = cpu_of_children(), time.perf_counter()
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{args[1]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return {"wall": wall, "cpu": cpu_of_children() - cpu}


def run_batchvid(sim: Simulator, manifest: Path, ledger: Path, concurrency: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "COMETAPI_BASE_URL": sim.base,
        "COMETAPI_KEY": "sim-key",
        "BATCHVID_LEDGER": str(ledger),
    }
    args = [sys.executable, "-m", "batchvid", "run", str(manifest), "--time-scale", str(SCALE),
            "--rate-per-minute", "0", "--concurrency", str(concurrency), "--max-active", "100000",
            "--poll-interval", str(POLL_S)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"batchvid run failed ({result.returncode}): {result.stderr[-2000:]}")
    return {
        "wall": wall,
        "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def run_bare(sim: Simulator, jobs_file: Path, out: Path, concurrency: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(Path(__file__).with_name("bare_loop.py")), sim.base, str(out),
            str(jobs_file), str(concurrency), str(POLL_S * SCALE)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall": wall,
        "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def polls_per_job(stats: dict[str, Any]) -> float:
    completed = sum(1 for t in stats["tasks"].values() if t["outcome"] == "completed")
    return sum(stats["polls"].values()) / max(1, completed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    sim = Simulator()
    try:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            from batchvid.plan import load_plan

            ours: list[dict[str, Any]] = []
            bare: list[dict[str, Any]] = []
            for run in range(args.runs):
                ledger = tmp / f"ledger-{run}.db"
                warm = tmp / f"warm-{run}.yaml"
                write_manifest(warm, f"warmup{run}", 120)
                run_batchvid(sim, warm, ledger, args.concurrency)  # gives the ledger history
                manifest = tmp / f"bench-{run}.yaml"
                write_manifest(manifest, f"bench{run}", args.jobs)
                plan = load_plan(manifest)
                jobs_file = tmp / "jobs.json"
                jobs_file.write_text(json.dumps([
                    {"prompt": j.prompt, "model": j.model, "seconds": j.seconds, "size": j.size,
                     "resolution": j.resolution} for j in plan.jobs
                ]))  # fmt: skip
                sim.reset()
                ours.append(run_batchvid(sim, manifest, ledger, args.concurrency))
                ours[-1]["polls"] = polls_per_job(sim.stats())
                sim.reset()
                bare.append(run_bare(sim, jobs_file, tmp / f"bare-{run}", args.concurrency))
                bare[-1]["polls"] = polls_per_job(sim.stats())
                print(f"  run {run + 1}: batchvid {ours[-1]['wall']:.2f} s, "
                      f"bare loop {bare[-1]['wall']:.2f} s", flush=True)  # fmt: skip
    finally:
        sim.stop()

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    n = len(plan.jobs)
    ratio = statistics.median(o["wall"] / b["wall"] for o, b in zip(ours, bare, strict=True))
    print(f"\n{n} jobs, concurrency {args.concurrency}, simulator time scale {SCALE}, "
          f"median of {args.runs} runs")  # fmt: skip
    print(f"{'':24}{'batchvid run':>14}{'bare httpx':>14}")
    print(f"{'wall time (s)':24}{med(ours, 'wall'):>14.2f}{med(bare, 'wall'):>14.2f}")
    print(f"{'CPU time (s)':24}{med(ours, 'cpu'):>14.2f}{med(bare, 'cpu'):>14.2f}")
    print(f"{'API polls / completed':24}{med(ours, 'polls'):>14.2f}{med(bare, 'polls'):>14.2f}")
    print(f"wall-time ratio (median of per-run ratios): {ratio:.2f}x   goal <= 1.25x")
    print(f"batchvid polls per completed job: {med(ours, 'polls'):.2f}   goal <= 1.5")


if __name__ == "__main__":
    main()
