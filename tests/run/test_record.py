"""What an outcome means for its job: recorded in a real ledger, no network."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from batchvid.errors import AuthError, RateLimited
from batchvid.ledger import Ledger, NewJob
from batchvid.ledger.port import RunLedger
from batchvid.remote.protocol import parse_task
from batchvid.run.creates import Creates
from batchvid.run.policy import Budget, DownloadRetries, SubmitPause
from batchvid.run.poll_policy import RenderBook
from batchvid.run.record import Recorder
from batchvid.run.workers import PollOutcome, SubmitOutcome
from batchvid.states import JobState as S

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    clock = Clock()
    ledger = Ledger(tmp_path / "l.db", clock=clock)
    ledger.plans.upsert_batch("b", manifest_path="m.yaml", manifest_sha256="0", output_dir="out")
    ledger.plans.upsert_jobs(
        "b", [NewJob(f"k{i}", i, "p", "doubao-seedance-2-0") for i in range(3)]
    )
    return ledger


def recorder(ledger: Ledger) -> Recorder:
    return Recorder(
        RunLedger(ledger),
        RenderBook(),
        Budget(),
        SubmitPause(),
        DownloadRetries(),
        ledger.clock,
        random.Random(1),
    )


async def submitted(ledger: Ledger, rec: Recorder, status: str = "SUBMITTED") -> int:
    job = ledger.queue.take_pending("b", 1)[0]
    creates = Creates(rec)
    intent = creates.intent(job)
    await intent()  # the request left
    task = parse_task({"id": f"task_{job.id}", "status": status, "created_at": 1})
    await creates.submitted(job, intent, SubmitOutcome("created", task=task), first_poll=60.0)
    return job.id


async def test_a_status_in_any_spelling_moves_the_job_the_same_way(ledger: Ledger) -> None:
    """One status map: "In Progress" (a loose spelling) means in_progress, in the ledger too."""
    rec = recorder(ledger)
    job_id = await submitted(ledger, rec)
    job = ledger.reads.get_job(job_id)
    answer = parse_task({"id": job.task_id, "status": "In Progress"})
    await rec.polled(job, PollOutcome("answered", task=answer), T0)
    assert ledger.reads.get_job(job_id).state is S.IN_PROGRESS
    started = await submitted(ledger, rec, status="in progress")
    assert ledger.reads.get_job(started).state is S.IN_PROGRESS


async def test_the_task_id_is_recorded_with_the_first_poll_already_chosen(ledger: Ledger) -> None:
    rec = recorder(ledger)
    job_id = await submitted(ledger, rec)
    row = ledger.reads.get_job(job_id)
    assert (row.state, row.task_id, row.next_poll_at) == (S.QUEUED, f"task_{job_id}", T0 + 60)


async def test_a_create_that_provably_did_nothing_is_pending_again_and_pauses_creates(
    ledger: Ledger,
) -> None:
    rec = recorder(ledger)
    job = ledger.queue.take_pending("b", 1)[0]
    creates = Creates(rec)
    intent = creates.intent(job)
    await intent()
    await creates.submitted(job, intent, SubmitOutcome("not_sent", reason="503"), first_poll=60.0)
    assert ledger.reads.get_job(job.id).state is S.PENDING
    assert rec.pause.paused(T0) and rec.pause.setbacks == 1
    assert ledger.reads.get_job(job.id).billable_attempts == 0


async def test_in_doubt_is_recorded_and_never_retried(ledger: Ledger) -> None:
    rec = recorder(ledger)
    job = ledger.queue.take_pending("b", 1)[0]
    creates = Creates(rec)
    intent = creates.intent(job)
    await intent()
    await creates.submitted(
        job, intent, SubmitOutcome("in_doubt", reason="no answer"), first_poll=60.0
    )
    row = ledger.reads.get_job(job.id)
    assert (row.state, row.error_message) == (S.IN_DOUBT, "no answer")


async def test_a_refused_key_stops_the_run_and_blames_no_job(ledger: Ledger) -> None:
    rec = recorder(ledger)
    job = ledger.queue.take_pending("b", 1)[0]
    creates = Creates(rec)
    intent = creates.intent(job)
    await intent()
    refused = SubmitOutcome("refused", refusal=AuthError("bad key", status=401))
    await creates.submitted(job, intent, refused, first_poll=60.0)
    assert ledger.reads.get_job(job.id).state is S.PENDING
    assert isinstance(rec.tally.fatal, AuthError)


async def test_a_poll_without_an_answer_asks_again_after_the_floor_and_retry_after(
    ledger: Ledger,
) -> None:
    rec = recorder(ledger)
    job_id = await submitted(ledger, rec)
    job = ledger.reads.get_job(job_id)
    limited = RateLimited("slow down", status=429, retry_after=45.0)
    await rec.polled(job, PollOutcome("no_answer", error=limited), T0)
    row = ledger.reads.get_job(job_id)
    assert row.state is S.QUEUED and row.next_poll_at == T0 + 45.0
    assert row.last_running_at is None  # no answer proves nothing about the render
