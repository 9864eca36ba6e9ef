"""The retry policy at work: new attempts after ERROR, a vanished task or a stall; never
after FAILED by default, never for in_doubt; every attempt in the ledger; the budget holds.

Real sockets against the simulator.  A seeded simulator gives each job's n-th attempt
the same fate whatever order the creates arrive in, so these runs are repeatable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from run_helpers import OPTIONS, SCALE, ledger_jobs, matrix_manifest, run_once

from batchvid.ledger import Ledger
from batchvid.manifest import Retries
from batchvid.manifest.plan import load_plan
from batchvid.report import load_report, render
from batchvid.sim.config import SimConfig
from batchvid.sim.server import serve_simulator
from batchvid.states import JobState as S

pytestmark = pytest.mark.anyio


def retries_of(jobs: list[Any]) -> int:
    return sum(sum(job.retries.values()) for job in jobs)


def events_of(tmp_path: Path, job_id: int) -> list[Any]:
    with Ledger(tmp_path / "ledger.db") as ledger:
        return ledger.reads.events(job_id)


async def test_error_is_retried_until_every_job_is_downloaded(tmp_path: Path) -> None:
    """10 % ERROR and the default ``error: 2``: every job ends downloaded, and the
    simulator made exactly as many tasks as the ledger recorded attempts."""
    plan = load_plan(matrix_manifest(tmp_path, prompts=3))  # 30 jobs
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=31, error_rate=0.1)) as sim:
        with anyio.fail_after(60):
            report, _ = await run_once(tmp_path, sim, plan)
        stats = sim.stats()
    jobs = ledger_jobs(tmp_path)
    made = retries_of(jobs)
    assert report.all_done and report.counts["downloaded"] == 30
    assert made >= 2 and {kind for job in jobs for kind in job.retries} == {"error"}
    assert stats["creates"] == 30 + made == sum(job.attempts for job in jobs)
    assert report.retries == {"error": (made, 0.0)}
    # The ledger tells the story: the ERROR, then the new attempt and what allowed it.
    retried = next(job for job in jobs if job.retries)
    events = events_of(tmp_path, retried.id)
    failed = next(e for e in events if e.to_state is S.FAILED)
    again = next(e for e in events if e.from_state is S.FAILED)
    assert again.to_state is S.PENDING and again.detail is not None
    assert again.detail["rule"] == "retry.error = 2" and again.detail["retry"] == "error"
    assert again.detail["previous_task_id"] in stats["tasks"]
    assert stats["tasks"][again.detail["previous_task_id"]]["outcome"] == "error"
    assert failed.detail is not None and failed.detail["code"]
    assert retried.task_id != again.detail["previous_task_id"]


async def test_failed_is_not_retried_by_default_and_its_reason_is_shown(tmp_path: Path) -> None:
    plan = load_plan(matrix_manifest(tmp_path, prompts=2))  # 20 jobs
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=32, fail_rate=0.3)) as sim:
        report, _ = await run_once(tmp_path, sim, plan)
        stats = sim.stats()
    jobs = ledger_jobs(tmp_path)
    failed = [job for job in jobs if job.state is S.FAILED]
    assert failed and not report.all_done and report.retries == {}
    assert stats["creates"] == 20 and retries_of(jobs) == 0
    assert all(job.error_message for job in failed)
    assert any(job.error_message in f for f in report.failures for job in failed)


async def test_a_vanished_task_gets_a_new_attempt_and_is_looked_for_once_more(
    tmp_path: Path,
) -> None:
    """Upstream forgets 10 % of tasks once they end: each such job gets its one new
    attempt, and the lost task is kept and asked for again (it might be found): still
    gone, that extra take ends failed, and counts in no exit code."""
    plan = load_plan(matrix_manifest(tmp_path, prompts=2))
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=41, vanish_rate=0.1)) as sim:
        report, _ = await run_once(tmp_path, sim, plan)
        stats = sim.stats()
    rows = ledger_jobs(tmp_path)
    jobs = [row for row in rows if row.extra_of is None]
    extras = [row for row in rows if row.extra_of is not None]
    assert report.all_done and {k for job in jobs for k in job.retries} == {"vanished"}
    assert stats["creates"] == 20 + retries_of(jobs) == 20 + len(extras)
    assert report.extras == {"failed": len(extras)}
    assert all(stats["tasks"][extra.task_id]["vanishes"] for extra in extras)
    assert all(stats["polls"][extra.task_id] >= 2 for extra in extras)  # asked for again


async def test_a_stalled_task_that_finishes_after_the_retry_is_kept_as_an_extra_take(
    tmp_path: Path,
) -> None:
    """20 % of tasks hang (20x their render); max_wait gives up on them, ``stalled: 1``
    makes a new attempt, and the stalled task, still watched, finishes later: both
    videos are downloaded, each to its own file, none lost."""
    options = replace(OPTIONS, max_wait=300.0, retry=Retries(stalled=1))
    config = SimConfig(time_scale=SCALE, seed=34, hang_rate=0.2, hang_factor=20.0)
    plan = load_plan(matrix_manifest(tmp_path, prompts=2))
    async with serve_simulator(config) as sim:
        with anyio.fail_after(60):
            report, _ = await run_once(tmp_path, sim, plan, options)
        stats = sim.stats()
    rows = ledger_jobs(tmp_path)
    extras = [row for row in rows if row.extra_of is not None]
    jobs = {row.id: row for row in rows if row.extra_of is None}
    assert report.all_done and len(jobs) == 20
    assert extras and report.extras == {"downloaded": len(extras)}
    assert stats["creates"] == 20 + len(extras)
    for extra in extras:
        job = jobs[extra.extra_of]
        assert job.retries == {"stalled": 1} and extra.state is S.DOWNLOADED
        assert stats["tasks"][extra.task_id]["hangs"]  # the hung task, finished late
        assert extra.key == f"{job.key}~a1" and extra.task_id != job.task_id
        assert extra.file_path != job.file_path
        for row in (job, extra):
            digest = hashlib.sha256(Path(row.file_path).read_bytes()).hexdigest()
            assert digest == row.sha256 == stats["tasks"][row.task_id]["sha256"]
    with Ledger(tmp_path / "ledger.db") as ledger:
        assert ledger.reads.verify() == []  # every row's events replay, the split-off ones too
        report_data = load_report(ledger, "e2e")
    # The report says which video came from which attempt, in every format.
    assert len(report_data.jobs) == 20 and len(report_data.extras) == len(extras)
    table = list(csv.DictReader(io.StringIO(render(report_data, "csv"))))
    assert len(table) == 20 + len(extras)
    for extra in extras:
        job = jobs[extra.extra_of]
        by_key = {row["key"]: row for row in table}
        assert by_key[job.key]["auto_retries"] == "stalled=1"
        assert by_key[extra.key]["extra_take_of"] == job.key
        assert by_key[extra.key]["attempts"] == "1" and by_key[job.key]["attempts"] == "2"
        assert Path(extra.file_path).name.endswith("-a1.mp4")
    records = json.loads(render(report_data, "json"))
    assert sum(1 for r in records if r["extra_take_of"]) == len(extras)
    text = render(report_data, "text")
    assert f"retries: {len(extras)} automatic new attempt" in text
    assert "attempt 1 (extra take)" in text
    html = render(report_data, "html", html_path=tmp_path / "report.html")
    assert html.count("attempt 1, extra take") == len(extras)


async def test_the_budget_stops_retries_as_it_stops_first_attempts(tmp_path: Path) -> None:
    """$1 a job, a $12 budget, half the tasks ERROR: retries stop at the budget."""
    pricing = (
        "pricing: {doubao-seedance-2-0-fast: 0.2, doubao-seedance-1-0-pro: 0.2}\nbudget_usd: 12\n"
    )
    plan = load_plan(matrix_manifest(tmp_path, prompts=1, extra=pricing))  # 10 jobs, $10
    options = replace(OPTIONS, budget_usd=12.0)
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=35, error_rate=0.5)) as sim:
        report, _ = await run_once(tmp_path, sim, plan, options)
        stats = sim.stats()
    jobs = ledger_jobs(tmp_path)
    assert report.budget_blocked and not report.all_done
    assert stats["creates"] == sum(job.billable_attempts for job in jobs) <= 12
    assert any(job.state is S.PENDING and job.retries for job in jobs)  # held back
    with Ledger(tmp_path / "ledger.db") as ledger:
        assert ledger.queue.committed_cost("e2e") <= 12.0


async def test_in_doubt_is_never_retried_by_any_policy(tmp_path: Path) -> None:
    generous = Retries(error=10, failed=10, vanished=10, stalled=10)
    options = replace(OPTIONS, retry=generous)
    config = SimConfig(time_scale=SCALE, seed=36, p_drop_after_create=0.3)
    async with serve_simulator(config) as sim:
        plan = load_plan(matrix_manifest(tmp_path, prompts=2))
        report, _ = await run_once(tmp_path, sim, plan, options)
        stats = sim.stats()
    doubted = [job for job in ledger_jobs(tmp_path) if job.state is S.IN_DOUBT]
    assert doubted and report.counts["in_doubt"] == len(doubted)
    assert all(job.attempts == 1 and job.retries == {} for job in doubted)
    assert stats["creates"] == 20  # one each: none of the in-doubt creates was repeated
