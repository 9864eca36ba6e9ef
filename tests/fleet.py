"""Many ``batchvid run`` processes on one PostgreSQL ledger and one simulator, for tests.

A :class:`Fleet` starts workers as real child processes (``python -m batchvid
run MANIFEST --ledger postgresql://... --base-url SIM``), kills them with
SIGKILL when the ledger shows them at a given step, and reads what happened
from the simulator's own records: creates, duplicates, 429s, how many tasks
rendered at once, requests in any window, and who (which worker's connections)
sent what.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from batchvid.sim.server import Simulator
from batchvid.sim.state import max_in_window

#: Longest any wait of a fleet test lasts (a hang guard, never a speed threshold).
PATIENCE_S = 120.0


def fleet_manifest(
    directory: Path, *, prompts: int = 2, styles: int = 2, limits: str = "", batch: str = "fleet"
) -> Path:
    """prompts x styles x 2 models x 5 sizes jobs, videos in ``directory/out``."""
    style_list = ", ".join(f"s{i}" for i in range(styles))
    lines = "\n".join(f'  - "shot {i}: waves on a pier, {{style}}"' for i in range(prompts))
    path = directory / "batch.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            batch: {batch}
            output_dir: out
            defaults: {{seconds: 5, resolution: 480p}}
            matrix:
              model: [doubao-seedance-2-0-fast, doubao-seedance-1-0-pro]
              size: ["16:9", "9:16", "1:1", "4:3", "21:9"]
              style: [{style_list}]
            """
        )
        + (f"limits: {{{limits}}}\n" if limits else "")
        + "prompts:\n"
        + lines
        + "\n"
    )
    return path


@dataclass
class Worker:
    """One ``batchvid run`` child process; its output is in ``log``."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def claim(self) -> str:
        """A LIKE pattern matching this worker's id (``host:pid:random``)."""
        return f"%:{self.pid}:%"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def wait(self, timeout: float = PATIENCE_S) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Fleet:
    """Workers of one batch: ``manifest`` run on ``ledger`` (a URL) against ``sim``."""

    manifest: Path
    ledger: str
    sim: Simulator
    time_scale: float
    lease_s: float
    extra: Sequence[str] = ()
    workers: list[Worker] = field(default_factory=list)

    def start(self, *, ledger: str | None = None, base_url: str | None = None) -> Worker:
        """One more worker (``ledger``/``base_url``: another way to the same ones, a proxy)."""
        n = len(self.workers)
        log = self.manifest.parent / f"worker-{n}.log"
        args = [
            sys.executable, "-m", "batchvid", "run", str(self.manifest),
            "--ledger", ledger or self.ledger, "--base-url", base_url or self.sim.base_url,
            "--time-scale", str(self.time_scale), "--lease", str(self.lease_s), *self.extra,
        ]  # fmt: skip
        env = {**os.environ, "COMETAPI_KEY": self.sim.api_key, "PYTHONUNBUFFERED": "1"}
        env.pop("BATCHVID_LEDGER", None)
        with log.open("wb") as out:
            process = subprocess.Popen(
                args, cwd=self.manifest.parent, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        worker = Worker(process, log)
        self.workers.append(worker)
        return worker

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.ledger, autocommit=True, connect_timeout=10) as conn:
            return conn.execute(sql.encode(), params).fetchall()  # type: ignore[arg-type]

    def wait_for(self, what: str, check: Callable[[], bool], *, every: float = 0.01) -> None:
        """Until ``check()`` holds (a hang guard of :data:`PATIENCE_S`)."""
        deadline = time.monotonic() + PATIENCE_S
        while not self._holds(check):
            if time.monotonic() > deadline:
                logs = "\n".join(w.output()[-2000:] for w in self.workers)
                raise AssertionError(f"never saw {what}\n{logs}")
            if any(w.process.poll() is not None for w in self.workers) and every > 0.05:
                break
            time.sleep(every)

    @staticmethod
    def _holds(check: Callable[[], bool]) -> bool:
        try:
            return check()
        except psycopg.errors.UndefinedTable:  # no worker has made the schema yet
            return False

    def holds(self, worker: Worker, states: Sequence[str]) -> bool:
        """Whether ``worker`` has claimed a job in one of ``states`` right now."""
        marks = ", ".join(f"'{s}'" for s in states)
        found = self.query(
            f"SELECT count(*) FROM jobs WHERE claimed_by LIKE %s AND state IN ({marks})",
            (worker.claim,),
        )
        return bool(found[0][0])

    def states(self) -> dict[str, int]:
        return dict(self.query("SELECT state, count(*) FROM jobs GROUP BY state"))

    def finish(self) -> list[int]:
        return [w.wait() for w in self.workers if w.process.returncode != -signal.SIGKILL]


@dataclass(frozen=True)
class Outcome:
    """What the simulator saw of a batch, and what is on disk."""

    creates: int
    duplicates: int
    rate_limited: int
    most_rendering: int
    most_in_window: int
    videos: int
    distinct_videos: int


def outcome(sim: Simulator, out: Path, window: float) -> Outcome:
    stats = sim.stats()
    tasks = list(stats["tasks"].values())
    # Rendering upstream: from the task's creation to the end of its render (the server's
    # own record, whether or not anyone ever asked about the task).
    changes = sorted(
        [(t["created_t"], 1) for t in tasks]
        + [(t["created_t"] + t["duration_s"], -1) for t in tasks]
    )
    rendering = most = 0
    for _, step in changes:
        rendering += step
        most = max(most, rendering)
    files = sorted(out.glob("*.mp4"))
    digests = {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    return Outcome(
        creates=stats["creates"],
        duplicates=stats["duplicate_creates"],
        rate_limited=stats["counters"].get("rate_limited", 0),
        most_rendering=most,
        most_in_window=max_in_window(stats["request_times"], window),
        videos=len(files),
        distinct_videos=len(digests),
    )


def every_video_once(fleet: Fleet, out: Path) -> None:
    """Each downloaded job's file is there, once, with the sha256 the ledger recorded."""
    rows = fleet.query("SELECT file_path, sha256 FROM jobs WHERE state = 'downloaded'")
    paths = [Path(p) for p, _ in rows]
    assert len(set(paths)) == len(rows)
    assert sorted(paths) == sorted(p.resolve() for p in out.glob("*.mp4"))
    for path, digest in rows:
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
    assert not list(out.glob("*.part"))
