"""The runner end to end against the simulator on a real socket (127.0.0.1)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from run_helpers import NO_RETRIES, OPTIONS, SCALE, ledger_jobs, matrix_manifest, run_once

from batchvid.cli.run import _progress_line
from batchvid.errors import AuthError, LedgerUnreachable
from batchvid.ledger import Ledger
from batchvid.manifest.plan import load_plan
from batchvid.run import Runner, Snapshot
from batchvid.run.batch import Endpoint, prepare, run_batch
from batchvid.sim.config import SimConfig
from batchvid.sim.server import Simulator, serve_simulator
from batchvid.states import JobState as S

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=7)) as simulator:
        yield simulator


async def test_fifty_job_batch_downloads_every_video_verified(
    tmp_path: Path, sim: Simulator
) -> None:
    plan = load_plan(matrix_manifest(tmp_path))
    assert len(plan.jobs) == 50
    report, prepared = await run_once(tmp_path, sim, plan)
    assert report.all_done, report
    assert report.counts["downloaded"] == 50
    out = (tmp_path / "out").resolve()
    assert prepared.output_dir == out
    stats = sim.stats()
    expected = {t["sha256"] for t in stats["tasks"].values()}
    jobs = ledger_jobs(tmp_path)
    for job in jobs:
        path = Path(job.file_path)
        assert path.parent == out  # never outside output_dir
        data = path.read_bytes()
        assert len(data) == job.bytes
        assert hashlib.sha256(data).hexdigest() == job.sha256
        assert stats["tasks"][job.task_id]["sha256"] == job.sha256
    assert {j.sha256 for j in jobs} == expected
    videos = sorted(p.name for p in out.iterdir() if p.is_file())
    assert videos == sorted(Path(j.file_path).name for j in jobs)
    assert not list(out.glob("*.part"))
    # Every video probed: what was rendered, each with its poster beside the videos.
    for job in jobs:
        rendered = stats["tasks"][job.task_id]["rendered"]
        assert job.facts is not None and job.facts.size == rendered
        assert job.facts.duration_s == job.seconds and job.facts.codec == "h264"
        assert job.poster_path and Path(job.poster_path).parent == out / "posters"
    assert len(list((out / "posters").glob("*.jpg"))) == 50
    assert stats["duplicate_creates"] == 0 and stats["creates"] == 50


async def test_rerunning_a_finished_batch_sends_nothing(tmp_path: Path, sim: Simulator) -> None:
    plan = load_plan(matrix_manifest(tmp_path, prompts=1))
    first, _ = await run_once(tmp_path, sim, plan)
    assert first.all_done
    before = sim.stats()["api_requests"]
    again, _ = await run_once(tmp_path, sim, plan)
    assert again.all_done and again.counts["downloaded"] == 10
    assert sim.stats()["api_requests"] == before


async def test_an_edited_manifest_submits_only_its_new_jobs(tmp_path: Path, sim: Simulator) -> None:
    await run_once(tmp_path, sim, load_plan(matrix_manifest(tmp_path, prompts=1)))
    bigger = load_plan(matrix_manifest(tmp_path, prompts=2))
    report, prepared = await run_once(tmp_path, sim, bigger)
    assert (prepared.new_jobs, prepared.known_jobs) == (10, 10)
    assert report.all_done and report.counts["downloaded"] == 20
    assert sim.stats()["creates"] == 20


async def test_401_stops_at_once_and_marks_nothing_failed(tmp_path: Path, sim: Simulator) -> None:
    plan = load_plan(matrix_manifest(tmp_path, prompts=1))
    with pytest.raises(AuthError):
        await run_once(tmp_path, sim, plan, key="wrong-key")
    states = {j.state for j in ledger_jobs(tmp_path)}
    assert states == {"pending"}
    assert sim.stats()["creates"] == 0


async def test_failed_and_error_outcomes_end_failed_with_reasons(tmp_path: Path) -> None:
    """With no retry policy, every FAILED or ERROR task ends its job failed, reason kept."""
    options = replace(OPTIONS, retry=NO_RETRIES)
    async with serve_simulator(
        SimConfig(time_scale=SCALE, seed=11, fail_rate=0.3, error_rate=0.2)
    ) as sim:
        plan = load_plan(matrix_manifest(tmp_path))
        report, _ = await run_once(tmp_path, sim, plan, options)
        outcomes = {t: v["outcome"] for t, v in sim.stats()["tasks"].items()}
    assert not report.all_done and not report.interrupted
    jobs = ledger_jobs(tmp_path)
    for job in jobs:
        outcome = outcomes[job.task_id]
        if outcome == "completed":
            assert job.state == "downloaded"
        else:
            assert job.state == "failed" and job.error_message, job
    assert report.counts["failed"] == sum(1 for o in outcomes.values() if o != "completed") > 0


async def test_faults_end_in_the_right_states_and_nothing_is_paid_twice(tmp_path: Path) -> None:
    config = SimConfig(
        time_scale=SCALE,
        seed=5,
        p_5xx=0.1,
        p_drop_after_create=0.1,
        p_truncate=0.3,
        p_cdn_error=0.1,
        url_ttl=0.5,  # real seconds; expiries are injected below, not raced for
        fail_rate=0.1,
        error_rate=0.05,
    )
    plan = load_plan(matrix_manifest(tmp_path))
    async with serve_simulator(config) as sim:
        sim.inject(expire=6)  # six downloads meet an expired URL and must refresh it
        sim.inject(drop_after_create=2)  # two creates for sure, whatever the coin flips
        # No retry policy: every repeated create below is one the user asked for.
        report, _ = await run_once(tmp_path, sim, plan, replace(OPTIONS, retry=NO_RETRIES))
        stats = sim.stats()
        assert not stats["pending_faults"].get("expire"), stats["pending_faults"]  # all met
        jobs = ledger_jobs(tmp_path)
        states = {j.state for j in jobs}
        assert states <= {"downloaded", "failed", "in_doubt"}, states
        in_doubt = [j for j in jobs if j.state == "in_doubt"]
        assert len(in_doubt) >= 2
        # Every in-doubt job is a create the simulator made, then dropped the answer to.
        assert stats["counters"]["drops"] == len(in_doubt)
        # Nothing is created twice without the user's say-so.
        assert stats["duplicate_creates"] == 0
        assert not report.all_done and not report.interrupted
        for job in jobs:
            if job.state == "downloaded":
                assert stats["tasks"][job.task_id]["sha256"] == job.sha256
        # The user decides to resubmit the in-doubt jobs: now, and only now, duplicates appear.
        with Ledger(tmp_path / "ledger.db") as ledger:
            assert ledger.plans.retry("e2e", S.IN_DOUBT) == len(in_doubt)
        calm = replace(OPTIONS, retry=NO_RETRIES)
        sim.configure(p_drop_after_create=0.0, p_5xx=0.0, fail_rate=0.0, error_rate=0.0)
        await run_once(tmp_path, sim, plan, calm)
        assert sim.stats()["duplicate_creates"] == len(in_doubt)


async def test_rate_limit_is_never_exceeded_in_any_window(tmp_path: Path, sim: Simulator) -> None:
    limit, scale = 20, 0.02  # 20 requests per 1.2 s window
    options = replace(OPTIONS, rate_per_minute=limit, time_scale=scale, concurrency=8)
    report, _ = await run_once(
        tmp_path, sim, load_plan(matrix_manifest(tmp_path, prompts=3)), options
    )
    assert report.all_done
    times = sorted(sim.stats()["request_times"])
    window = 60 * scale
    worst = max(sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times))
    assert worst <= limit, (worst, limit)
    assert len(times) > 2 * limit  # the run really spanned several windows


async def test_budget_stops_submissions(tmp_path: Path, sim: Simulator) -> None:
    path = matrix_manifest(
        tmp_path,
        prompts=1,
        extra="pricing: {doubao-seedance-2-0: 0.1, doubao-seedance-1-0-pro: 0.1}\nbudget_usd: 6\n",
    )
    plan = load_plan(path)  # 10 jobs x 5 s x $0.10 = $5.00: within the $6 budget
    options = replace(OPTIONS, budget_usd=plan.manifest.budget_usd)
    ledger_path = tmp_path / "ledger.db"
    with Ledger(ledger_path) as ledger:
        # Three jobs were tried before and failed ($1.50 spent); the user retries them.
        prepare(ledger, plan, Endpoint(sim.base_url, sim.api_key))
        jobs = ledger.queue.take_pending("e2e", 3)
        ledger.moves.begin_submit_many([j.id for j in jobs])
        for j in jobs:
            ledger.moves.record_submitted(j.id, f"old-{j.id}", "queued", 0)
            ledger.moves.record_failed(j.id, "FAILED", "earlier attempt")
        assert ledger.plans.retry("e2e", S.FAILED) == 3
    report, _ = await run_once(tmp_path, sim, plan, options)
    # $1.50 spent + 9 x $0.50 = $6.00; the tenth would exceed the budget.
    assert report.budget_blocked and not report.all_done and not report.interrupted
    assert sim.stats()["creates"] == 9
    assert report.counts["pending"] == 1 and report.counts["downloaded"] == 9
    assert sum("budget" in f for f in report.failures) == 1, report.failures  # said once


async def test_jobs_that_left_the_manifest_are_dropped_only_if_never_sent(
    tmp_path: Path, sim: Simulator
) -> None:
    ledger_path = tmp_path / "ledger.db"
    endpoint = Endpoint(sim.base_url, sim.api_key)
    two = load_plan(matrix_manifest(tmp_path, prompts=2))
    with Ledger(ledger_path) as ledger:
        prepare(ledger, two, endpoint)
        sent = ledger.queue.take_pending("e2e", 20)[-1]  # a job of the second prompt: sent once
        ledger.moves.begin_submit(sent.id)
        ledger.moves.release_unsent(sent.id, "429 before any work")
        one = load_plan(matrix_manifest(tmp_path, prompts=1))
        prepared = prepare(ledger, one, endpoint)
        assert (prepared.new_jobs, prepared.known_jobs, prepared.dropped_jobs) == (0, 10, 9)
        kept = {j.key for j in ledger.reads.jobs("e2e")}
    assert kept == {j.key for j in one.jobs} | {sent.key}  # history is never deleted


async def test_odd_poll_answers_are_asked_again_then_stall(
    tmp_path: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway's 404/403 on a poll is not the docs' task_not_exist: keep asking, then stall."""
    from batchvid.errors import ApiError
    from batchvid.remote.client import CometClient

    real = CometClient.retrieve
    refused: dict[str, int] = {}

    async def flaky(self: CometClient, task_id: str) -> Any:
        first = min(sim.stats()["tasks"])  # one task is refused forever, the rest twice
        if task_id == first or refused.get(task_id, 0) < 2:
            refused[task_id] = refused.get(task_id, 0) + 1
            raise ApiError("<html>Not Found</html>", status=404)
        return await real(self, task_id)

    monkeypatch.setattr(CometClient, "retrieve", flaky)
    options = replace(OPTIONS, max_wait=120)  # 0.24 s on this clock
    report, _ = await run_once(
        tmp_path, sim, load_plan(matrix_manifest(tmp_path, prompts=1)), options
    )
    assert report.counts["downloaded"] == 9 and report.counts["stalled"] == 1
    assert not report.all_done and not report.interrupted
    assert any("404" in f for f in report.failures)


async def test_an_unexpected_error_sidelines_one_job_not_the_batch(
    tmp_path: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchvid.run.workers import Workers

    real = Workers.download
    calls: list[int] = []

    async def buggy(self: Workers, job: Any, dest: Path) -> Any:
        calls.append(job.id)
        if job.idx == 3:
            raise RuntimeError("surprise")
        return await real(self, job, dest)

    monkeypatch.setattr(Workers, "download", buggy)
    report, _ = await run_once(tmp_path, sim, load_plan(matrix_manifest(tmp_path, prompts=1)))
    assert report.counts["downloaded"] == 9 and report.counts["completed"] == 1
    assert not report.all_done and not report.interrupted
    assert calls.count(next(j.id for j in ledger_jobs(tmp_path) if j.idx == 3)) == 1
    assert any("RuntimeError: surprise" in f for f in report.failures)
    # The next run picks it up again.
    monkeypatch.setattr(Workers, "download", real)
    again, _ = await run_once(tmp_path, sim, load_plan(matrix_manifest(tmp_path, prompts=1)))
    assert again.all_done and again.counts["downloaded"] == 10


async def test_the_dispatcher_sleeps_while_every_slot_is_busy(
    tmp_path: Path, sim: Simulator
) -> None:
    """Due work that waits for a slot (or a poll already in flight) must not make the
    dispatcher spin: it looks for work a few times per job, not thousands."""
    options = replace(OPTIONS, concurrency=1, rate_per_minute=600, time_scale=SCALE)
    plan = load_plan(matrix_manifest(tmp_path, prompts=2))
    report, _ = await run_once(tmp_path, sim, plan, options)
    assert report.all_done
    jobs = len(plan.jobs)
    assert report.dispatch_rounds <= 12 * jobs, (report.dispatch_rounds, jobs)


async def test_a_progress_snapshot_outlives_a_ledger_that_does_not_answer(
    tmp_path: Path, sim: Simulator
) -> None:
    """A display asks for progress while the ledger is out of reach: it gets the counts
    last read, marked stale, and the run goes on (it once ended the run mid-create)."""
    plan = load_plan(matrix_manifest(tmp_path, prompts=1))
    endpoint = Endpoint(sim.base_url, sim.api_key)
    snaps: list[Snapshot] = []

    async def watch(runner: Runner) -> None:
        snaps.append(await runner.snapshot())
        real = runner.ledger.reads.counts

        def unreachable(batch: str) -> dict[S, int]:
            raise LedgerUnreachable("the ledger did not answer within 3 s")

        runner.ledger.reads.counts = unreachable  # type: ignore[method-assign]
        try:
            snaps.append(await runner.snapshot())
        finally:
            runner.ledger.reads.counts = real  # type: ignore[method-assign]

    with Ledger(tmp_path / "ledger.db") as ledger:
        prepared = prepare(ledger, plan, endpoint)
        async with anyio.create_task_group() as tg:
            report = await run_batch(
                ledger, prepared, endpoint, OPTIONS, on_runner=lambda r: tg.start_soon(watch, r)
            )
    assert report.all_done
    fresh, stale = snaps
    assert not fresh.stale and fresh.total == len(plan.jobs)
    assert stale.counts == fresh.counts and "not answering" in stale.stale
    assert "counts as last read" in _progress_line(stale)


async def test_polls_due_by_the_dozen_leave_submissions_their_share(tmp_path: Path) -> None:
    """Renders far longer than the first poll, polls due all the time: every job is still
    sent before the first render finishes (polls may not take every slot)."""
    config = SimConfig(time_scale=0.1, seed=3)  # renders of 3.5-5.6 s
    options = replace(OPTIONS, concurrency=4, poll_interval=1, time_scale=SCALE)
    plan = load_plan(matrix_manifest(tmp_path, prompts=2))
    async with serve_simulator(config) as sim:
        report, _ = await run_once(tmp_path, sim, plan, options)
    assert report.all_done
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        last_sent = conn.execute(
            "SELECT max(id) FROM events WHERE to_state = 'submitting'"
        ).fetchone()[0]
        first_done = conn.execute(
            "SELECT min(id) FROM events WHERE to_state = 'completed'"
        ).fetchone()[0]
    conn.close()
    assert last_sent < first_done, (last_sent, first_done)


async def test_a_batch_several_generations_long_keeps_its_turnaround(tmp_path: Path) -> None:
    """Eight generations of tasks (40 jobs, 5 rendering at once): the first poll tracks the
    renders instead of learning its own delay, and the last fifth of the batch is noticed
    as promptly as the first.  Judged on the simulator's timestamps and the ledger."""
    scale = 0.02  # renders of about 1.2 s; the poll floor is 0.2 s
    options = replace(OPTIONS, concurrency=5, max_active=5, time_scale=scale)
    plan = load_plan(matrix_manifest(tmp_path, prompts=4))
    async with serve_simulator(SimConfig(time_scale=scale, seed=5)) as sim:
        report, _ = await run_once(tmp_path, sim, plan, options)
        stats = sim.stats()
    assert report.all_done and report.counts["downloaded"] == 40
    with Ledger(tmp_path / "ledger.db") as ledger:
        jobs = {j.task_id: j for j in ledger.reads.jobs("e2e")}
        planned = {
            j.task_id: next(
                e.detail["first_poll_in_s"]
                for e in ledger.reads.events(j.id)
                if e.to_state == "queued"
            )
            for j in jobs.values()
        }
    tasks = sorted(stats["tasks"].items(), key=lambda item: item[1]["created_t"])
    fifth = len(tasks) // 5
    first, last = tasks[:fifth], tasks[-fifth:]

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    render = median([t["duration_s"] for _, t in tasks])
    # The first poll sits on the renders, not on a delay that grew with every generation.
    assert 0.85 * render <= median([planned[task_id] for task_id, _ in last]) <= 1.35 * render

    def seen_after(group: list[tuple[str, dict[str, Any]]]) -> float:
        return median([t["seen_done_t"] - t["created_t"] - t["duration_s"] for _, t in group])

    assert seen_after(last) <= 0.5 * render, (seen_after(first), seen_after(last), render)
    assert sum(stats["polls"][task_id] for task_id, _ in last) <= 3 * fifth
    # What the ledger learned of each render is within reach of the truth.
    learned = [jobs[task_id].render_seconds for task_id, _ in last]
    assert all(r is not None for r in learned)
    assert median([r for r in learned if r is not None]) == pytest.approx(render, rel=0.3)


async def test_downloads_that_keep_failing_end_the_run_with_their_tries_spent(
    tmp_path: Path,
) -> None:
    """Each job gets its tries in this run, then stays completed for the next; the run ends."""
    options = replace(OPTIONS, download_attempts=3, concurrency=16)
    async with serve_simulator(
        SimConfig(time_scale=SCALE, seed=2, p_cdn_error=1.0, content=False)
    ) as sim:
        report, _ = await run_once(
            tmp_path, sim, load_plan(matrix_manifest(tmp_path, prompts=1)), options
        )
        stats = sim.stats()
    assert report.counts["completed"] == 10 and not report.all_done and not report.interrupted
    jobs = ledger_jobs(tmp_path)
    assert {j.download_errors for j in jobs} == {3}
    assert any("download failed 3 times" in f for f in report.failures)
    assert stats["duplicate_creates"] == 0


async def test_a_wall_clock_stepped_back_or_ahead_moves_no_poll_and_stalls_no_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NTP steps the clock back two minutes, then a hand sets it three hours ahead (past
    max_wait), while tasks render: every job is still noticed and downloaded on time."""
    import time

    scale = 0.02  # renders of about 1.2 s
    real = time.time
    step = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + step[0])
    options = replace(OPTIONS, concurrency=8, max_active=10, time_scale=scale, max_wait=3600)
    plan = load_plan(matrix_manifest(tmp_path, prompts=2))
    async with serve_simulator(SimConfig(time_scale=scale, seed=4)) as sim:

        async def step_the_clock() -> None:
            await anyio.sleep(0.6)
            step[0] = -120.0
            await anyio.sleep(0.6)
            step[0] = 3 * 3600.0

        async with anyio.create_task_group() as tg:
            tg.start_soon(step_the_clock)
            with anyio.fail_after(60):
                report, _ = await run_once(tmp_path, sim, plan, options)
        stats = sim.stats()
    assert report.all_done and report.counts["downloaded"] == 20, report.counts
    assert report.elapsed_s < 60  # measured on the run's clock: never negative, never hours
    lags = sorted(
        t["seen_done_t"] - t["created_t"] - t["duration_s"] for t in stats["tasks"].values()
    )
    assert lags[len(lags) // 2] < 1.0, lags  # noticed within a second, not two minutes later
