"""kill -9 at random instants: the ledger always reopens consistent and resumable."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchvid.ledger import Ledger
from batchvid.states import JobState

ROOT = Path(__file__).resolve().parents[2]
KILLS = 6

# Drives random legal transitions (and bulk upserts and retries) as fast as it can.
WORKER = """
import random, sys
from batchvid.ledger import Ledger
from batchvid.ledger.rows import NewJob
from batchvid.states import JobState as S

path, seed = sys.argv[1], int(sys.argv[2])
rnd = random.Random(seed)
with Ledger(path) as lg:
    lg.plans.upsert_batch("crash", manifest_path="m.yaml", manifest_sha256="0", output_dir="out")
    lg.plans.upsert_jobs("crash", [NewJob(f"{seed}-{i}", i, "p", "m") for i in range(40)])
    lg.plans.recover_interrupted("crash")
    print("ready", flush=True)
    step = 0
    while True:
        step += 1
        if step % 499 == 0:
            more = [NewJob(f"{seed}-{step}-{i}", i, "p", "m") for i in range(200)]
            lg.plans.upsert_jobs("crash", more)
        total = lg.reads.status("crash")["total"]
        job = lg.reads.get_job(rnd.randint(1, total))
        j, state, pick = job.id, job.state, rnd.random()
        if state is S.PENDING and pick < 0.3:
            picked = lg.queue.take_pending("crash", rnd.randint(1, 4))
            lg.moves.begin_submit_many(p.id for p in picked)
        elif state is S.SUBMITTING:
            if pick < 0.6:
                seen = rnd.choice([S.QUEUED, S.IN_PROGRESS])
                lg.moves.record_submitted(j, f"task-{j}-{step}", seen.value, 0, seen=seen)
            elif pick < 0.7:
                lg.moves.record_rejected(j, "InvalidParameter", "no")
            elif pick < 0.8:
                lg.moves.record_in_doubt(j, "timeout")
            else:
                lg.moves.release_unsent(j, "429")
        elif state in (S.QUEUED, S.IN_PROGRESS):
            if pick < 0.5:
                lg.moves.record_poll(
                    j, "IN_PROGRESS", rnd.randint(0, 99), step, seen=S.IN_PROGRESS
                )
            elif pick < 0.8:
                lg.moves.record_completed(j, "https://cdn.example/v.mp4", step + 600.0)
            elif pick < 0.9:
                lg.moves.record_failed(j, "FAILED", "policy")
            else:
                lg.moves.record_stalled(j)
        elif state is S.COMPLETED:
            if pick < 0.6:
                lg.moves.record_downloaded(j, f"out/{j}.mp4", 100, "0" * 64)
            elif pick < 0.8:
                lg.moves.record_download_error(j, "403")
            else:
                lg.moves.refresh_url(j, "https://cdn.example/v2.mp4", step + 900.0)
        elif state is S.FAILED and pick < 0.3:
            lg.plans.retry("crash", S.FAILED)
        elif state is S.IN_DOUBT and pick < 0.3:
            lg.plans.retry("crash", S.IN_DOUBT)
        elif state is S.STALLED and pick < 0.3:
            lg.plans.retry("crash", S.STALLED)
"""


def events(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_sigkill_at_random_instants_leaves_a_consistent_ledger(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    rnd = random.Random(20260420)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seen = 0
    for kill in range(KILLS):
        with subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), str(kill)],
            stdout=subprocess.PIPE,
            env=env,
        ) as worker:
            assert worker.stdout is not None
            assert worker.stdout.readline() == b"ready\n", "the worker did not start"
            time.sleep(rnd.uniform(0.1, 0.6))
            worker.send_signal(signal.SIGKILL)
            assert worker.wait() == -signal.SIGKILL

        now = events(path)  # a raw connection first: the file as the kill left it
        assert now > seen, "the worker made no progress: the test proves nothing"
        seen = now
        with Ledger(path) as ledger:
            assert ledger.reads.verify() == []
            states = {job.state for job in ledger.reads.jobs("crash")}
            assert states <= set(JobState)
            ledger.plans.recover_interrupted("crash")
            assert ledger.reads.counts("crash")[JobState.SUBMITTING] == 0
            assert ledger.reads.verify() == []
