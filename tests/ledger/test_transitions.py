"""Every named transition, against the state machine: legal moves, illegal ones, their effects."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledger_helpers import (
    ACTIONS,
    ILLEGAL,
    LEGAL,
    S,
    add_job,
    raw,
    reach,
    specs,
)
from report_ledgers import T0, Clock

from batchvid.errors import IllegalTransition, LedgerError
from batchvid.ledger import AutoRetry, Ledger, utc_iso
from batchvid.states import TRANSITIONS, JobState

# -- transitions ------------------------------------------------------------------


def test_the_action_table_covers_every_edge_of_the_state_machine() -> None:
    edges = {(s, dst) for _, sources, dst in ACTIONS.values() for s in sources if s != dst}
    edges |= {
        (S.SUBMITTING, S.IN_PROGRESS),  # record_submitted with a running task
        (S.FAILED, S.PENDING),  # retry(FAILED)
        (S.IN_DOUBT, S.PENDING),  # retry(IN_DOUBT)
        (S.IN_DOUBT, S.QUEUED),  # record_submitted(recovered=True)
        (S.IN_DOUBT, S.IN_PROGRESS),  # the same, with a running task
        (S.STALLED, S.QUEUED),  # retry(STALLED)
        (S.STALLED, S.IN_PROGRESS),  # retry(STALLED)
        (S.STALLED, S.PENDING),  # record_stalled(retry=...): a new attempt, the old split off
    }
    assert edges == {(s, d) for s, targets in TRANSITIONS.items() for d in targets}


@pytest.mark.parametrize(("action", "source"), LEGAL)
def test_legal_transition(ledger: Ledger, clock: Clock, action: str, source: JobState) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, source)
    before = ledger.reads.events(job_id)
    clock.advance(5)
    ACTIONS[action][0](ledger, job_id)
    after = ledger.reads.get_job(job_id)
    target = ACTIONS[action][2]
    assert after.state is target
    assert after.updated_utc == utc_iso(clock())
    new_events = ledger.reads.events(job_id)[len(before) :]
    if target is source:
        assert new_events == []  # events are for transitions only
    else:
        assert [(e.from_state, e.to_state, e.at_utc) for e in new_events] == [
            (source, target, utc_iso(clock()))
        ]
    assert ledger.reads.verify() == []


@pytest.mark.parametrize(("action", "source"), ILLEGAL)
def test_illegal_transition_raises_and_changes_nothing(
    ledger: Ledger, action: str, source: JobState
) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, source)
    before, events = ledger.reads.get_job(job_id), ledger.reads.events(job_id)
    with pytest.raises(IllegalTransition):
        ACTIONS[action][0](ledger, job_id)
    assert ledger.reads.get_job(job_id) == before
    assert ledger.reads.events(job_id) == events


def test_an_unknown_job_is_a_ledger_error_not_an_illegal_transition(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no job with id 99") as raised:
        ledger.moves.record_stalled(99)
    assert not isinstance(raised.value, IllegalTransition)
    with pytest.raises(LedgerError, match="no job with id 99"):
        ledger.moves.begin_submit_many([99])
    with pytest.raises(LedgerError, match="no job with id 99"):
        ledger.reads.get_job(99)


def test_the_event_is_written_in_the_same_transaction(sqlite_ledger: Ledger, path: Path) -> None:
    job_id = add_job(sqlite_ledger)
    conn = raw(path)  # make every event insert fail, from outside
    conn.execute(
        "CREATE TRIGGER no_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    try:
        with pytest.raises(LedgerError, match="no"):
            sqlite_ledger.moves.begin_submit(job_id)
        assert sqlite_ledger.reads.get_job(job_id).state is S.PENDING
        assert sqlite_ledger.reads.get_job(job_id).attempts == 0
    finally:
        conn.execute("DROP TRIGGER no_events")
        conn.close()
    sqlite_ledger.moves.begin_submit(job_id)
    assert sqlite_ledger.reads.get_job(job_id).state is S.SUBMITTING


def test_begin_submit_many_is_all_or_nothing(ledger: Ledger) -> None:
    ledger.plans.upsert_jobs("b", specs(4))
    ids = [j.id for j in ledger.queue.take_pending("b", 4)]
    reach(ledger, ids[2], S.SUBMITTING)
    with pytest.raises(IllegalTransition, match=f"{ids[2]} \\(submitting\\)"):
        ledger.moves.begin_submit_many(ids)
    assert ledger.reads.counts("b")[S.PENDING] == 3
    ledger.moves.begin_submit_many([ids[0], ids[1], ids[0], ids[3]])  # duplicates count once
    rows = [ledger.reads.get_job(i) for i in ids]
    assert all(r.state is S.SUBMITTING and r.attempts == 1 for r in rows)
    assert [e.detail for e in ledger.reads.events(ids[0])] == [{"attempt": 1}]
    ledger.moves.begin_submit_many([])


def test_submission_records_the_task(ledger: Ledger, clock: Clock) -> None:
    job_id = add_job(ledger)
    ledger.moves.begin_submit(job_id)
    clock.advance(2)
    assert ledger.moves.record_submitted(job_id, "task_1", "queued", T0 + 62) is S.QUEUED
    row = ledger.reads.get_job(job_id)
    assert (row.task_id, row.remote_status, row.next_poll_at) == ("task_1", "queued", T0 + 62)
    assert (row.submitted_utc, row.queued_utc) == (utc_iso(T0), utc_iso(T0 + 2))
    assert row.started_utc is None and row.watch_started_at == T0 + 2
    assert ledger.reads.events(job_id)[-1].detail == {
        "remote_status": "queued",
        "task_id": "task_1",
        "first_poll_in_s": 60.0,
    }

    running = add_job(ledger, "k2")
    ledger.moves.begin_submit(running)
    assert (
        ledger.moves.record_submitted(running, "task_2", "IN_PROGRESS", T0, seen=S.IN_PROGRESS)
        is S.IN_PROGRESS
    )
    assert ledger.reads.get_job(running).started_utc == utc_iso(clock())
    with pytest.raises(ValueError):
        ledger.moves.record_submitted(add_job(ledger, "k3"), "", None, T0)


def test_polls_update_in_place_and_never_go_backwards(ledger: Ledger, clock: Clock) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.QUEUED)
    events = len(ledger.reads.events(job_id))
    assert ledger.moves.record_poll(job_id, "SUBMITTED", 0, T0 + 10, seen=S.QUEUED) is S.QUEUED
    assert len(ledger.reads.events(job_id)) == events
    clock.advance(10)
    assert (
        ledger.moves.record_poll(job_id, "in_progress", 30, T0 + 20, seen=S.IN_PROGRESS)
        is S.IN_PROGRESS
    )
    stale = ledger.moves.record_poll(job_id, "queued", None, T0 + 40, seen=S.QUEUED)
    assert stale is S.IN_PROGRESS  # a stale answer never moves a job back
    row = ledger.reads.get_job(job_id)
    assert (row.polls, row.progress, row.next_poll_at) == (3, 30, T0 + 40)
    assert row.started_utc == utc_iso(T0 + 10)
    assert len(ledger.reads.events(job_id)) == events + 1
    with pytest.raises(ValueError, match="terminal"):
        ledger.moves.record_poll(job_id, "SUCCESS", 100, T0 + 50, seen=S.COMPLETED)
    assert ledger.reads.get_job(job_id) == row


def test_release_unsent_frees_the_job_for_another_attempt(ledger: Ledger) -> None:
    job_id = add_job(ledger)
    ledger.moves.begin_submit(job_id)
    ledger.moves.release_unsent(job_id, "429 before any work")
    row = ledger.reads.get_job(job_id)
    assert (row.state, row.attempts, row.billable_attempts) == (S.PENDING, 1, 0)
    assert row.error_message == "429 before any work" and row.submitted_utc is None
    ledger.moves.begin_submit(job_id)
    row = ledger.reads.get_job(job_id)
    assert (row.attempts, row.billable_attempts, row.error_message) == (2, 1, None)


def test_download_errors_are_kept_until_the_download_succeeds(ledger: Ledger) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.COMPLETED)
    ledger.moves.record_download_error(job_id, "HTTP 403")
    ledger.moves.record_download_error(job_id, "truncated")
    ledger.moves.refresh_url(job_id, "https://cdn.example/fresh.mp4", T0 + 900)
    row = ledger.reads.get_job(job_id)
    assert (row.download_errors, row.error_message) == (2, "truncated")
    assert (row.video_url, row.video_url_expires_at) == ("https://cdn.example/fresh.mp4", T0 + 900)
    ledger.moves.record_downloaded(job_id, Path("out/a.mp4"), 10, "cd" * 32)
    row = ledger.reads.get_job(job_id)
    assert (row.file_path, row.bytes, row.sha256) == ("out/a.mp4", 10, "cd" * 32)
    assert row.error_message is None and row.downloaded_utc == row.finished_utc


def test_a_stall_counts_the_poll_that_found_it_and_keeps_why(ledger: Ledger) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.QUEUED)
    ledger.moves.record_stalled(job_id, "still rendering after 12 min")
    row = ledger.reads.get_job(job_id)
    assert (row.state, row.polls, row.error_message) == (
        S.STALLED,
        1,
        "still rendering after 12 min",
    )


def test_a_recovered_task_id_reaches_a_job_left_submitting_or_in_doubt(ledger: Ledger) -> None:
    """A task id settles an in-doubt job: from the recovery file, or an answer that came
    after another worker found the create left in flight (a shared ledger)."""
    waiting, doubted = add_job(ledger, "a"), add_job(ledger, "b", index=2)
    late = add_job(ledger, "c", index=3)
    reach(ledger, waiting, S.SUBMITTING)
    reach(ledger, doubted, S.IN_DOUBT)
    reach(ledger, late, S.IN_DOUBT)
    assert ledger.moves.record_submitted(late, "task_late", "queued", T0) is S.QUEUED
    assert ledger.reads.events(late)[-1].detail == {
        "task_id": "task_late",
        "remote_status": "queued",
        "first_poll_in_s": 0.0,
    }
    for job_id in (waiting, doubted):
        state = ledger.moves.record_submitted(
            job_id, f"task_{job_id}", "IN_PROGRESS", T0, seen=S.IN_PROGRESS, recovered=True
        )
        row = ledger.reads.get_job(job_id)
        assert state is S.IN_PROGRESS and row.task_id == f"task_{job_id}"
        assert row.error_message is None and row.finished_utc is None
        assert (ledger.reads.events(job_id)[-1].detail or {})["recovered"] is True


# -- the retry policy's new attempts ----------------------------------------------------


def test_a_failed_attempt_retried_by_the_policy_is_pending_with_its_story(
    ledger: Ledger, clock: Clock
) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.IN_PROGRESS)
    retry = AutoRetry("error", T0 + 90, "retry.error = 2")
    ledger.moves.record_failed(job_id, "internal_error", "an internal error", retry=retry)
    job = ledger.reads.get_job(job_id)
    assert (job.state, job.task_id, job.retry_at, job.retries) == (
        S.PENDING,
        None,
        T0 + 90,
        {"error": 1},
    )
    assert job.billable_attempts == 1 and "an internal error" in (job.error_message or "")
    *_, failed, again = ledger.reads.events(job_id)
    assert (failed.from_state, failed.to_state) == (S.IN_PROGRESS, S.FAILED)
    assert (again.from_state, again.to_state) == (S.FAILED, S.PENDING)
    assert again.detail == {
        "retry": "error",
        "rule": "retry.error = 2",
        "previous_task_id": f"task-{job_id}",
        "attempt": 2,
        "after_s": 90.0,
    }
    # Not due before its back-off ends; then it is, and the next failure counts on.
    assert ledger.queue.take_pending("b", 10, now=T0 + 89) == []
    assert ledger.queue.next_retry_time("b") == T0 + 90
    assert [j.id for j in ledger.queue.take_pending("b", 10, now=T0 + 90)] == [job_id]
    reach(ledger, job_id, S.IN_PROGRESS)
    assert (
        ledger.reads.get_job(job_id).retry_at is None and ledger.queue.next_retry_time("b") is None
    )
    ledger.moves.record_failed(job_id, "internal_error", "again", retry=retry)
    assert ledger.reads.get_job(job_id).retries == {"error": 2}
    assert ledger.reads.retries_made("b") == {"error": (2, 0.0)}
    assert ledger.reads.verify() == []


def test_a_stalled_attempt_retried_is_split_off_and_still_watched(
    ledger: Ledger, clock: Clock
) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.IN_PROGRESS)
    job = ledger.reads.get_job(job_id)
    retry = AutoRetry("stalled", T0 + 30, "retry.stalled = 1")
    kept = ledger.moves.record_stalled(job_id, "ran 4x p99", retry=retry, watch_at=T0 + 300)
    assert kept is not None
    extra, again = ledger.reads.get_job(kept), ledger.reads.get_job(job_id)
    # The earlier attempt keeps the task, is polled again, and bills nothing more.
    assert (extra.state, extra.task_id, extra.extra_of, extra.key) == (
        S.IN_PROGRESS,
        job.task_id,
        job_id,
        f"{job.key}~a1",
    )
    assert (extra.next_poll_at, extra.billable_attempts, extra.idx) == (T0 + 300, 0, job.idx)
    assert (again.state, again.task_id, again.retries) == (S.PENDING, None, {"stalled": 1})
    assert again.billable_attempts == 1  # the stalled attempt's cost stays on the job
    # Extra takes are not the batch's jobs: counts, the active cap and status keep them apart.
    assert ledger.reads.counts("b")[S.IN_PROGRESS] == 0 and ledger.reads.counts("b")[S.PENDING] == 1
    assert ledger.reads.counts("b", extras=True)[S.IN_PROGRESS] == 1
    assert ledger.queue.active_count("b") == 0
    assert ledger.reads.status("b")["extra_takes"] == {"in_progress": 1}
    assert ledger.reads.status("b")["total"] == 1
    # Its history is the job's up to the split (it was never stalled itself).
    steps = [(e.from_state, e.to_state) for e in ledger.reads.events(kept)]
    assert steps == [(e.from_state, e.to_state) for e in ledger.reads.events(job_id)][: len(steps)]
    assert steps[-1] == (S.QUEUED, S.IN_PROGRESS)
    assert ledger.reads.events(job_id)[-1].detail["kept_as_job"] == kept  # type: ignore[index]
    assert ledger.reads.verify() == []
    # It ends like any task: its video downloaded under its own row ...
    ledger.moves.record_completed(kept, "https://cdn.example/x.mp4", None)
    ledger.moves.record_downloaded(kept, "out/x-a1.mp4", 10, "cd" * 32)
    assert ledger.reads.status("b")["extra_takes"] == {"downloaded": 1}


def test_an_extra_take_that_fails_stays_failed_whatever_the_user_retries(
    ledger: Ledger,
) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.IN_PROGRESS)
    retry = AutoRetry("stalled", T0, "retry.stalled = 1")
    kept = ledger.moves.record_stalled(job_id, "ran 4x p99", retry=retry, watch_at=T0)
    assert kept is not None
    ledger.moves.record_stalled(kept, "watched for 2 h more")  # no retry: an earlier attempt
    assert ledger.plans.retry("b", S.STALLED) == 1  # watched again: the same task, no cost
    assert ledger.reads.get_job(kept).state is S.IN_PROGRESS
    ledger.moves.record_failed(kept, "task_not_exist", "task_not_exist")
    assert ledger.plans.retry("b", S.FAILED) == 0  # its job has had its new attempt
    assert ledger.reads.get_job(kept).state is S.FAILED and ledger.reads.verify() == []
