"""What every benchmark here shares: one way to do each thing, so figures compare.

- :class:`Simulator`: ``batchvid simulator`` in its **own process** (it never
  shares a core's GIL with a contender), with its admin routes;
- :func:`timed`: run one child process to the end and return its wall time and
  its CPU time (``RUSAGE_CHILDREN`` deltas: only that child's user + system);
- :func:`write_manifest` / :func:`write_jobs_json`: the same jobs for batchvid
  (a manifest) and for the contenders (the expanded requests as JSON);
- :func:`batchvid_run`: ``batchvid run`` as a user runs it, against a simulator;
- :func:`summary`: medians of several runs and medians of per-run ratios.

Machines are noisy: every figure is a median over runs, and every comparison a
ratio measured in the same run.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
#: The batchvid whose ``run`` is measured: this checkout, or another one (an older
#: commit's worktree, for a before/after figure) named by BATCHVID_BENCH_SOURCE.
#: Simulators and contenders always come from this checkout.
SOURCE = Path(os.environ.get("BATCHVID_BENCH_SOURCE") or ROOT).resolve()
PYTHON = sys.executable
API_KEY = "sim-key"

#: A matrix whose renders take 35-56 simulated seconds (5 s of 480p on fast models).
FAST_MODELS = ("doubao-seedance-2-0-fast", "doubao-seedance-1-0-pro")
SIZES = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Simulator:
    """``batchvid simulator`` in its own process; a context manager.

    ``knobs`` are simulator flags (``time_scale=0.01``, ``rate_limit=600``...).
    :meth:`reset` forgets every task and counter and restores these knobs;
    :meth:`configure` changes knobs while it runs.
    """

    def __init__(self, **knobs: Any) -> None:
        self.knobs = {"seed": 1, **knobs}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Simulator:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in self.knobs.items()]
        self.process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "batchvid",
                "simulator",
                "--port",
                str(self.port),
                "--cdn-port",
                str(free_port()),
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.base}/_sim/config", timeout=1).raise_for_status()
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the simulator did not start")

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def reset(self) -> None:
        httpx.post(f"{self.base}/_sim/reset", timeout=30).raise_for_status()

    def configure(self, **knobs: Any) -> None:
        httpx.post(f"{self.base}/_sim/config", json=knobs, timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.base}/_sim/stats", timeout=120).json()
        return data

    def clock_offset(self) -> float:
        """``time.monotonic()`` minus the simulator's clock (that of ``request_times``).

        Measured with one probe request (``GET /v1/videos/bench-probe``, answered
        400 and logged like any other): its logged time against the middle of
        the round trip.  Good to about half a round trip (well under 1 ms).
        """
        before = time.monotonic()
        httpx.get(f"{self.base}/v1/videos/{PROBE_ID}", headers=HEADERS, timeout=10)
        after = time.monotonic()
        probes = [r["t"] for r in self.stats()["requests"] if r["path"].endswith(PROBE_ID)]
        return (before + after) / 2 - probes[-1]


PROBE_ID = "bench-probe"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


# -- timing child processes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timed:
    """One child process, run to the end."""

    wall: float
    cpu: float
    stdout: str = ""


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    ok: Iterable[int] = (0,),
    cwd: Path = ROOT,
) -> Timed:
    """Run ``args`` to the end; its wall and CPU seconds. Raises unless its exit code is ``ok``.

    The CPU time is the ``RUSAGE_CHILDREN`` delta across the wait, so it is this
    child's alone (provided no other child is reaped meanwhile: benchmarks run
    their contenders one after another).
    """
    cpu, start = cpu_of_children(), time.perf_counter()
    result = subprocess.run(
        list(args), env=env, capture_output=True, text=True, check=False, cwd=cwd
    )
    wall = time.perf_counter() - start
    if result.returncode not in tuple(ok):
        raise RuntimeError(
            f"{' '.join(args[:4])} ... exited {result.returncode}: {result.stderr[-3000:]}"
        )
    return Timed(wall, cpu_of_children() - cpu, result.stdout)


# -- the same jobs for every contender ------------------------------------------------


def write_manifest(
    path: Path,
    batch: str,
    jobs: int,
    *,
    models: Sequence[str] = FAST_MODELS,
    sizes: Sequence[str] = SIZES,
    seconds: Sequence[int] = (5,),
    resolution: str = "480p",
) -> Path:
    """A manifest of at least ``jobs`` jobs: prompts x models x sizes x seconds."""
    per_prompt = len(models) * len(sizes) * len(seconds)
    prompts = "\n".join(
        f'  - "bench shot {i}: a tram crossing a bridge at night"'
        for i in range(-(-jobs // per_prompt))
    )
    path.write_text(
        f"version: 1\nbatch: {batch}\ndefaults: {{resolution: {resolution}}}\n"
        f"matrix:\n  model: [{', '.join(models)}]\n"
        f"  size: [{', '.join(repr(s) for s in sizes)}]\n"
        f"  seconds: [{', '.join(str(s) for s in seconds)}]\n"
        f"prompts:\n{prompts}\n"
    )
    return path


def write_jobs_json(manifest: Path, path: Path) -> int:
    """The manifest's expanded requests as JSON, for the contenders; returns how many."""
    from batchvid.manifest.plan import load_plan

    plan = load_plan(manifest)
    path.write_text(
        json.dumps(
            [
                {
                    "prompt": j.prompt,
                    "model": j.model,
                    "seconds": j.seconds,
                    "size": j.size,
                    "resolution": j.resolution,
                }
                for j in plan.jobs
            ]
        )
    )
    return len(plan.jobs)


# -- batchvid as a user runs it -------------------------------------------------------


def batchvid_env(sim: Simulator, ledger: Path | str) -> dict[str, str]:
    return {
        **os.environ,
        "COMETAPI_BASE_URL": sim.base,
        "COMETAPI_KEY": API_KEY,
        "BATCHVID_LEDGER": str(ledger),
    }


def batchvid_run_args(
    manifest: Path,
    *,
    time_scale: float,
    rate_per_minute: float = 0,
    concurrency: int = 16,
    max_active: int = 100_000,
    poll_interval: float = 10.0,
    probe: bool = True,
) -> list[str]:
    return [
        PYTHON,
        "-m",
        "batchvid",
        "run",
        str(manifest),
        "--time-scale",
        str(time_scale),
        "--rate-per-minute",
        str(rate_per_minute),
        "--concurrency",
        str(concurrency),
        "--max-active",
        str(max_active),
        "--poll-interval",
        str(poll_interval),
        *(() if probe else ("--no-probe",)),
    ]


def batchvid_run(sim: Simulator, manifest: Path, ledger: Path | str, **options: Any) -> Timed:
    """``batchvid run MANIFEST`` (from :data:`SOURCE`) against ``sim`` to the end (exit 0);
    ``ledger`` a file or a ``postgresql://`` URL."""
    args = batchvid_run_args(manifest, **options)
    return timed(args, env=batchvid_env(sim, ledger), cwd=SOURCE)


def bare_loop_args(
    sim: Simulator,
    jobs_json: Path,
    out: Path,
    *,
    concurrency: int,
    poll_s: float,
    max_active: int = 0,
) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return [
        PYTHON,
        str(BENCH / "bare_loop.py"),
        sim.base,
        str(out),
        str(jobs_json),
        str(concurrency),
        str(poll_s),
        str(max_active),
    ]


# -- what the simulator saw -----------------------------------------------------------


def polls_per_completed(stats: dict[str, Any]) -> float:
    """API polls (``GET /v1/videos/{id}``) per task that completed."""
    completed = sum(1 for t in stats["tasks"].values() if t["outcome"] == "completed")
    return sum(stats["polls"].values()) / max(1, completed)


# -- summaries ------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ratio(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """The median of per-run ratios (each pair measured side by side in one run)."""
    return median(o / t for o, t in zip(ours, theirs, strict=True))


def spread(values: Sequence[float], fmt: str = ".2f") -> str:
    """``median (min-max)`` of several runs, or the one value."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
