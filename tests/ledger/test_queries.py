"""The ledger's reads: what the dispatcher, status and reports ask."""

from __future__ import annotations

import pytest
from ledger_helpers import (
    S,
    add_batch,
    add_job,
    reach,
    specs,
)
from report_ledgers import T0, Clock

from batchvid.errors import LedgerError
from batchvid.ledger import Ledger, utc_iso
from batchvid.ledger.rows import JobRow, NewJob
from batchvid.run.render_times import RenderSample

# -- queries --------------------------------------------------------------------------


def test_pending_jobs_come_in_manifest_order(ledger: Ledger) -> None:
    ledger.plans.upsert_jobs(
        "b", [NewJob(key=f"k{i}", index=9 - i, prompt="p", model="m") for i in range(10)]
    )
    assert [j.idx for j in ledger.queue.take_pending("b", 3)] == [0, 1, 2]
    assert ledger.queue.take_pending("nope", 3) == []


def test_due_polls_and_next_poll_time(ledger: Ledger, clock: Clock) -> None:
    ledger.plans.upsert_jobs("b", specs(4))
    ids = [j.id for j in ledger.queue.take_pending("b", 4)]
    ledger.moves.begin_submit_many(ids)
    for job_id, due in zip(ids, (30, 10, 20, 40), strict=True):
        ledger.moves.record_submitted(job_id, f"t{job_id}", "SUBMITTED", T0 + due)
    ledger.moves.record_poll(ids[2], "IN_PROGRESS", 5, T0 + 15, seen=S.IN_PROGRESS)
    ledger.moves.record_stalled(ids[3])
    assert ledger.queue.next_poll_time("b") == T0 + 10
    assert ledger.queue.take_polls("b", 100, T0 + 5) == []
    assert [j.id for j in ledger.queue.take_polls("b", 100, T0 + 30)] == [ids[1], ids[2], ids[0]]
    assert [j.id for j in ledger.queue.take_polls("b", 1, T0 + 30)] == [ids[1]]
    clock.advance(16)
    assert [j.id for j in ledger.queue.take_polls("b", 100, ledger.clock())] == [ids[1], ids[2]]
    assert ledger.queue.active_count("b") == 3
    assert ledger.queue.next_poll_time("other") is None


def test_completed_jobs_soonest_expiring_first(ledger: Ledger) -> None:
    ledger.plans.upsert_jobs("b", specs(3))
    ids = [j.id for j in ledger.queue.take_pending("b", 3)]
    for job_id, expires in zip(ids, (T0 + 900, None, T0 + 300), strict=True):
        reach(ledger, job_id, S.IN_PROGRESS)
        ledger.moves.record_completed(job_id, f"https://cdn.example/{job_id}", expires)
    assert [j.id for j in ledger.queue.take_downloads("b", 10)] == [ids[2], ids[0], ids[1]]


def test_counts_status_and_statuses(ledger: Ledger) -> None:
    add_batch(ledger, "a")
    ledger.plans.upsert_jobs("b", specs(3))
    reach(ledger, ledger.queue.take_pending("b", 1)[0].id, S.DOWNLOADED)
    status = ledger.reads.status("b")
    assert status == {
        "batch": "b",
        "total": 3,
        "states": {s.value: {"pending": 2, "downloaded": 1}.get(s.value, 0) for s in S},
        "retries": {},
        "extra_takes": {},
        "normalised": {},
    }
    assert list(status["states"]) == [s.value for s in S]
    assert [s["batch"] for s in ledger.reads.statuses()] == ["a", "b"]
    assert ledger.reads.statuses()[0]["total"] == 0
    with pytest.raises(LedgerError, match="no batch named 'nope'"):
        ledger.reads.status("nope")


def test_jobs_iterates_every_job_by_index_across_pages(ledger: Ledger) -> None:
    n = 2345
    ledger.plans.upsert_jobs(
        "b", [NewJob(key=f"k{i}", index=(i * 11) % n, prompt="p", model="m") for i in range(n)]
    )
    seen = [j.idx for j in ledger.reads.jobs("b")]
    assert seen == list(range(n))
    assert all(isinstance(j, JobRow) for j in ledger.reads.jobs("b"))


def test_render_evidence_is_recorded_and_read_back_newest_last(
    ledger: Ledger, clock: Clock
) -> None:
    assert ledger.reads.render_samples("m", 5, "720p") == []
    for n, (lo, hi) in enumerate(((59, 61), (89, 91), (0, 300))):
        job_id = add_job(ledger, f"k{n}")
        reach(ledger, job_id, S.QUEUED)
        clock.advance(10)
        ledger.moves.record_completed(
            job_id, "https://cdn.example/v", None, render=RenderSample(lo, hi, stamped=n < 2)
        )
    bare = add_job(ledger, "bare")  # completed with nothing proved: not a sample
    reach(ledger, bare, S.QUEUED)
    ledger.moves.record_completed(bare, "https://cdn.example/v", None)
    other = add_job(ledger, "other")
    reach(ledger, other, S.IN_PROGRESS)  # not completed: no sample
    samples = ledger.reads.render_samples("m", 5, "720p")
    assert [(s.lo, s.hi) for s in samples] == [(59, 61), (89, 91), (0, 300)]
    assert [s for s in ledger.reads.render_samples("m", 5, "720p", limit=1)] == [samples[-1]]
    assert ledger.reads.render_samples("m", 10, "720p") == []


def test_the_times_a_render_is_judged_by_are_kept(ledger: Ledger, clock: Clock) -> None:
    job_id = add_job(ledger, "k")
    ledger.moves.begin_submit(job_id)
    sent = clock()
    clock.advance(0.5)
    ledger.moves.record_submitted(
        job_id, "task_1", "SUBMITTED", clock() + 60, server_created_at=1700
    )
    answered = clock()
    clock.advance(30)
    ledger.moves.record_poll(job_id, "IN_PROGRESS", 40, clock() + 20)
    running = clock()
    clock.advance(20)
    ledger.moves.record_poll(job_id, "IN_PROGRESS", 40, clock() + 20, seen_running=False)
    row = ledger.reads.get_job(job_id)
    assert (row.sent_at, row.answered_at, row.server_created_at) == (sent, answered, 1700)
    assert row.last_running_at == running  # a poll without a usable answer proves nothing
    ledger.moves.record_completed(
        job_id, "u", None, server_completed_at=1790, render=RenderSample(89, 91, stamped=True)
    )
    row = ledger.reads.get_job(job_id)
    assert (row.server_completed_at, row.render_seconds) == (1790, 90)


def test_utc_iso_is_millisecond_utc() -> None:
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"
    assert utc_iso(T0 + 0.9996) == "2027-01-15T08:00:01.000Z"
