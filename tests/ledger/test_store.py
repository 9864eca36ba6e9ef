"""The ledger file: opening and migrating, batches and jobs, the user's actions, crashes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from ledger_helpers import (
    S,
    add_batch,
    add_job,
    raw,
    reach,
    specs,
)
from report_ledgers import T0, Clock

from batchvid.errors import IllegalTransition, LedgerError
from batchvid.ledger import Ledger, utc_iso
from batchvid.ledger.rows import NewJob, StoredReference
from batchvid.ledger.sqlite import migrations
from batchvid.request import VideoRequest

# -- opening and migrating ------------------------------------------------------


def test_open_creates_parent_dirs_and_a_wal_ledger(path: Path) -> None:
    with Ledger(path):
        pass
    assert path.exists()
    conn = raw(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"batches", "jobs", "events", "_sqlite_migrations"} <= tables
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"jobs_batch_state", "jobs_state_next_poll"} <= indexes
    finally:
        conn.close()


def test_connection_pragmas(sqlite_ledger: Ledger) -> None:
    conn = sqlite_ledger.engine._conn  # the settings are per connection: look at the ledger's own
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL; FULL per durable commit
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_only_the_create_intent_and_the_task_id_are_fsynced(sqlite_ledger: Ledger) -> None:
    """FULL for the commits that must survive a power cut; NORMAL (WAL) for the rest."""
    job = add_job(sqlite_ledger)
    statements: list[str] = []
    sqlite_ledger.engine._conn.set_trace_callback(statements.append)
    try:

        def fsynced(action: Callable[[], object]) -> bool:
            statements.clear()
            action()
            return "PRAGMA synchronous = FULL" in statements

        assert fsynced(lambda: sqlite_ledger.moves.begin_submit(job))
        assert fsynced(lambda: sqlite_ledger.moves.record_submitted(job, "t1", "queued", 0.0))
        assert not fsynced(lambda: sqlite_ledger.moves.record_poll(job, "IN_PROGRESS", 40, 1.0))
        assert not fsynced(lambda: sqlite_ledger.moves.record_completed(job, "https://cdn/x", None))
        assert not fsynced(
            lambda: sqlite_ledger.moves.record_downloaded(job, "/v/x.mp4", 10, "ab" * 32)
        )
    finally:
        sqlite_ledger.engine._conn.set_trace_callback(None)
    assert (
        sqlite_ledger.engine._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    )  # NORMAL again


def test_the_download_queue_reads_its_own_index(sqlite_ledger: Ledger) -> None:
    statements: list[str] = []
    sqlite_ledger.engine._conn.set_trace_callback(statements.append)
    try:
        sqlite_ledger.queue.take_downloads("b", 5)
    finally:
        sqlite_ledger.engine._conn.set_trace_callback(None)
    (query,) = statements
    plan = sqlite_ledger.engine._conn.execute("EXPLAIN QUERY PLAN " + query).fetchall()
    assert any("jobs_download_queue" in row[3] for row in plan), [tuple(r) for r in plan]


def test_migrations_apply_once_and_reopening_keeps_data(path: Path, clock: Clock) -> None:
    with Ledger(path, clock=clock) as ledger:
        add_batch(ledger, "b")
        ledger.plans.upsert_jobs("b", specs(3))
    for _ in range(2):
        with Ledger(path, clock=clock) as ledger:
            assert ledger.reads.counts("b")[S.PENDING] == 3
    conn = raw(path)
    try:
        applied = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
    finally:
        conn.close()
    assert applied == [
        ("batchvid", "m001_initial"),
        ("batchvid", "m002_axes_and_endpoint"),
        ("batchvid", "m003_download_queue"),
        ("batchvid", "m004_render_evidence"),
        ("batchvid", "m005_download_schedule"),
        ("batchvid", "m006_retries"),
        ("batchvid", "m007_video_facts"),
        ("batchvid", "m008_workers"),
        ("batchvid", "m009_object_etag"),
    ]


def test_m002_upgrades_an_m001_ledger_and_keeps_its_data(path: Path, clock: Clock) -> None:
    """A ledger written before m002 gains ``axes_json`` and ``endpoint``; nothing is lost."""
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    try:
        migrations().apply(
            sqlite_utils.Database(conn, execute_plugins=False),
            stop_before="m002_axes_and_endpoint",
        )
        conn.execute(
            "INSERT INTO batches (name, manifest_path, manifest_sha256, output_dir, created_utc,"
            " updated_utc) VALUES ('old', 'old.yaml', ?, 'out', 'then', 'then')",
            ("0" * 64,),
        )
        conn.execute(
            "INSERT INTO jobs (batch, key, idx, prompt, model, seconds, size, resolution, state,"
            " task_id, attempts, billable_attempts, created_utc, updated_utc) VALUES"
            " ('old', 'k', 1, 'p', 'm', 5, '16:9', '720p', 'queued', 't1', 1, 1, 'then', 'then')"
        )
        conn.commit()
        columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
        assert "axes_json" not in columns
    finally:
        conn.close()
    with Ledger(path, clock=clock) as ledger:
        batch = ledger.reads.get_batch("old")
        assert batch is not None and batch.endpoint is None and batch.output_dir == "out"
        job = ledger.reads.job_by_key("old", "k")
        assert job is not None
        assert (job.state, job.task_id, job.axes, job.axes_json) == (S.QUEUED, "t1", (), "[]")
        ledger.plans.upsert_jobs(
            "old", [NewJob(key="k2", index=2, prompt="p", model="m", axes=AXES)]
        )
        assert ledger.reads.job_by_key("old", "k2") is not None
        assert ledger.reads.counts("old")[S.QUEUED] == 1


AXES = (("model", "doubao-seedance-2-0"), ("size", "9:16"), ("style", "film noir, «ü»"))


def test_job_axes_round_trip_in_manifest_order(ledger: Ledger) -> None:
    ledger.plans.upsert_jobs(
        "b",
        [
            NewJob(key="a", index=1, prompt="p", model="m", axes=AXES),
            NewJob(key="plain", index=2, prompt="p", model="m"),
        ],
    )
    row = ledger.reads.job_by_key("b", "a")
    assert row is not None and row.axes == AXES
    plain = ledger.reads.job_by_key("b", "plain")
    assert plain is not None and plain.axes == () and plain.axes_json == "[]"
    # A known key keeps what it was recorded with, even if the manifest's axes change.
    ledger.plans.upsert_jobs("b", [NewJob(key="a", index=1, prompt="p", model="m", axes=AXES[:1])])
    again = ledger.reads.job_by_key("b", "a")
    assert again is not None and again.axes == AXES


def test_upsert_batch_keeps_the_endpoint_unless_given_one(ledger: Ledger) -> None:
    def upsert(endpoint: str | None) -> str | None:
        row = ledger.plans.upsert_batch(
            "b", manifest_path="b.yaml", manifest_sha256="0" * 64, output_dir="out/b",
            endpoint=endpoint,
        )  # fmt: skip
        return row.endpoint

    batch = ledger.reads.get_batch("b")
    assert batch is not None and batch.endpoint is None
    assert upsert("simulator") == "simulator"
    assert upsert(None) == "simulator"
    assert upsert("https://api.cometapi.com") == "https://api.cometapi.com"
    assert [b.endpoint for b in ledger.reads.batches()] == ["https://api.cometapi.com"]


def test_a_ledger_from_a_newer_batchvid_is_refused(path: Path) -> None:
    with Ledger(path):
        pass
    conn = raw(path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES ('batchvid', 'm999_future', '2030-01-01')"
    )
    conn.close()
    with pytest.raises(LedgerError, match="newer batchvid"):
        Ledger(path)


def test_a_file_that_is_not_a_database_is_a_ledger_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.db"
    bogus.write_bytes(b"this is not sqlite, just text\n" * 100)
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger(bogus)


def test_create_false_refuses_a_missing_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_read_only_reads_beside_a_writer_and_writes_nothing(path: Path, clock: Clock) -> None:
    with Ledger(path, clock=clock) as writer:
        add_batch(writer, "b")
        writer.plans.upsert_jobs("b", specs(3))
        with Ledger(path, read_only=True) as reader:
            assert reader.reads.counts("b")[S.PENDING] == 3
            writer.moves.begin_submit(writer.queue.take_pending("b", 1)[0].id)  # the writer goes on
            assert reader.reads.counts("b")[S.SUBMITTING] == 1  # and the reader sees it
            with pytest.raises(LedgerError, match="readonly"):
                reader.plans.upsert_jobs("b", specs(1, prefix="new"))
            with pytest.raises(LedgerError, match="readonly"):
                reader.moves.begin_submit(2)
    with Ledger(path, read_only=True) as reader:  # after the writer closed (no -wal left), too
        assert reader.reads.counts("b")[S.PENDING] == 2


def test_read_only_refuses_missing_foreign_and_outdated_files(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger(tmp_path / "missing.db", read_only=True)
    assert not (tmp_path / "missing.db").exists()
    bogus = tmp_path / "notes.db"
    bogus.write_bytes(b"this is not sqlite, just text\n" * 100)
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger(bogus, read_only=True)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(LedgerError, match="not a batchvid ledger"):
        Ledger(other, read_only=True)
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    try:
        migrations().apply(
            sqlite_utils.Database(conn, execute_plugins=False),
            stop_before="m002_axes_and_endpoint",
        )
    finally:
        conn.close()
    with pytest.raises(LedgerError, match="needs m002_axes_and_endpoint"):
        Ledger(old, read_only=True)
    conn = sqlite3.connect(old)
    try:  # still m001 only: the read-only open migrated nothing
        assert conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0] == 1
    finally:
        conn.close()


def test_close_is_idempotent(path: Path) -> None:
    ledger = Ledger(path)
    ledger.close()
    ledger.close()


# -- batches and upserts ----------------------------------------------------------


def test_upsert_batch_updates_settings_and_keeps_created(ledger: Ledger, clock: Clock) -> None:
    first = ledger.reads.get_batch("b")
    assert first is not None and first.limits == {} and first.budget_usd is None
    clock.advance(60)
    again = ledger.plans.upsert_batch(
        "b",
        manifest_path="b.yaml",
        manifest_sha256="1" * 64,
        output_dir="elsewhere",
        limits={"rate_per_minute": 30},
        pricing={"doubao-seedance-2-0": 0.1},
        budget_usd=25.0,
    )
    assert again.created_utc == first.created_utc == utc_iso(T0)
    assert again.updated_utc == utc_iso(T0 + 60)
    assert again.limits == {"rate_per_minute": 30}
    assert again.pricing == {"doubao-seedance-2-0": 0.1}
    assert (again.budget_usd, again.output_dir, again.manifest_sha256) == (
        25.0,
        "elsewhere",
        "1" * 64,
    )
    assert [b.name for b in ledger.reads.batches()] == ["b"]


def test_upsert_jobs_counts_new_keys_and_keeps_known_ones(ledger: Ledger) -> None:
    assert ledger.plans.upsert_jobs("b", specs(5, cost=0.5)) == 5
    assert ledger.plans.upsert_jobs("b", specs(5)) == 0
    known = ledger.reads.job_by_key("b", "k1")
    assert known is not None
    reach(ledger, known.id, S.QUEUED)
    before = ledger.reads.get_job(known.id)

    # The edited manifest drops k0, reorders the rest and adds two new keys.
    edited = [
        NewJob(key=f"k{i}", index=10 + i, prompt="changed", model="m", est_cost_usd=1.0)
        for i in range(1, 7)
    ]
    assert ledger.plans.upsert_jobs("b", edited) == 2
    assert ledger.reads.get_job(known.id) == before  # state, task id, index, prompt, cost: all kept
    assert ledger.reads.job_by_key("b", "k0") is not None  # nothing is deleted
    new = ledger.reads.job_by_key("b", "k6")
    assert new is not None and new.state is S.PENDING and new.est_cost_usd == 1.0
    assert ledger.reads.status("b")["total"] == 7


def test_upsert_jobs_into_an_unknown_batch_is_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no batch named 'nope'"):
        ledger.plans.upsert_jobs("nope", specs(1))


def test_the_same_key_in_two_batches_is_two_jobs(ledger: Ledger) -> None:
    add_batch(ledger, "other")
    assert ledger.plans.upsert_jobs("b", specs(3)) == 3
    assert ledger.plans.upsert_jobs("other", specs(3)) == 3
    first = ledger.reads.job_by_key("b", "k0")
    assert first is not None
    reach(ledger, first.id, S.FAILED)
    assert ledger.reads.counts("other")[S.PENDING] == 3
    assert ledger.plans.retry("other", S.FAILED) == 0
    assert ledger.plans.retry("b", S.FAILED) == 1


def test_duplicate_keys_in_one_upsert_make_one_job(ledger: Ledger) -> None:
    assert ledger.plans.upsert_jobs("b", [*specs(2), *specs(2)]) == 2


def test_job_rows_carry_references_and_make_requests(ledger: Ledger) -> None:
    refs = (
        StoredReference("refs/a.jpg", "a" * 64, "image/jpeg"),
        StoredReference("refs/b.png", "b" * 64, "image/png"),
    )
    job = NewJob(key="r", index=1, prompt="[Image 1] meets [Image 2]", model="m", references=refs)
    ledger.plans.upsert_jobs("b", [job])
    row = ledger.reads.job_by_key("b", "r")
    assert row is not None
    assert row.references == refs
    assert row.to_request() == VideoRequest(
        "[Image 1] meets [Image 2]",
        "m",
        5,
        "16:9",
        "720p",
        (Path("refs/a.jpg"), Path("refs/b.png")),
    )


# -- user actions and recovery ------------------------------------------------------


def test_retry_failed_starts_a_new_attempt_and_remembers_the_old_task(ledger: Ledger) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.FAILED)
    assert ledger.plans.retry("b", S.FAILED) == 1
    row = ledger.reads.get_job(job_id)
    assert row.state is S.PENDING and row.task_id is None and row.error_message is None
    assert (row.attempts, row.polls, row.queued_utc, row.finished_utc) == (1, 0, None, None)
    event = ledger.reads.events(job_id)[-1]
    assert (event.from_state, event.to_state) == (S.FAILED, S.PENDING)
    assert event.detail == {
        "previous_task_id": f"task-{job_id}",
        "error_code": "FAILED",
        "error_message": "content policy",
        "attempt": 1,
    }
    assert ledger.plans.retry("b", S.FAILED) == 0
    reach(ledger, job_id, S.QUEUED)
    assert ledger.reads.get_job(job_id).attempts == 2


def test_retry_in_doubt_says_a_duplicate_may_be_billed(ledger: Ledger) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.IN_DOUBT)
    assert ledger.plans.retry("b", S.IN_DOUBT) == 1
    assert ledger.reads.get_job(job_id).state is S.PENDING
    detail = ledger.reads.events(job_id)[-1].detail
    assert detail is not None and detail["duplicate_may_be_billed"] is True


def test_retry_stalled_resumes_polling_the_same_task(ledger: Ledger, clock: Clock) -> None:
    waiting, running = add_job(ledger, "a"), add_job(ledger, "b")
    reach(ledger, waiting, S.STALLED)
    reach(ledger, running, S.IN_PROGRESS)
    ledger.moves.record_stalled(running)
    clock.advance(7200)
    assert ledger.queue.take_polls("b", 100, ledger.clock()) == []
    assert ledger.plans.retry("b", S.STALLED) == 2
    assert ledger.reads.get_job(waiting).state is S.QUEUED
    assert ledger.reads.get_job(running).state is S.IN_PROGRESS
    for job_id in (waiting, running):
        row = ledger.reads.get_job(job_id)
        assert (row.task_id, row.next_poll_at) == (f"task-{job_id}", clock())
        assert row.watch_started_at == clock() and row.finished_utc is None
    assert {j.id for j in ledger.queue.take_polls("b", 100, ledger.clock())} == {waiting, running}
    assert ledger.reads.verify() == []


def test_recover_interrupted_puts_in_flight_creates_in_doubt(ledger: Ledger) -> None:
    add_batch(ledger, "other")
    ledger.plans.upsert_jobs("b", specs(3))
    ledger.plans.upsert_jobs("other", specs(1))
    ledger.moves.begin_submit_many(j.id for j in ledger.queue.take_pending("b", 2))
    ledger.moves.begin_submit_many(j.id for j in ledger.queue.take_pending("other", 1))
    assert ledger.plans.recover_interrupted("b") == 2
    assert ledger.reads.counts("b")[S.IN_DOUBT] == 2
    assert ledger.reads.counts("other")[S.SUBMITTING] == 1  # another batch's run is not ours
    doubtful = ledger.reads.jobs("b").__next__()
    assert "interrupted" in (doubtful.error_message or "")
    assert ledger.plans.recover_interrupted("b") == 0
    assert ledger.reads.verify() == []


def test_committed_cost_counts_every_attempt_that_may_bill(ledger: Ledger) -> None:
    ledger.plans.upsert_jobs("b", specs(6, cost=0.5))
    a, b, c, d, e, f = (j.id for j in ledger.queue.take_pending("b", 6))
    assert ledger.queue.committed_cost("b") == 0.0
    reach(ledger, a, S.SUBMITTING)  # in flight: counts
    reach(ledger, b, S.REJECTED)  # refused: does not
    reach(ledger, c, S.IN_DOUBT)  # may exist: counts
    reach(ledger, d, S.DOWNLOADED)  # done: counts
    reach(ledger, e, S.FAILED)  # a task existed: counts
    ledger.moves.begin_submit(f)
    ledger.moves.release_unsent(f, "connect refused")  # never left: does not
    assert ledger.queue.committed_cost("b") == pytest.approx(4 * 0.5)
    ledger.plans.retry("b", S.FAILED)
    ledger.plans.retry("b", S.IN_DOUBT)
    assert ledger.queue.committed_cost("b") == pytest.approx(
        4 * 0.5
    )  # the old attempts still count
    ledger.moves.begin_submit_many([c, e])
    assert ledger.queue.committed_cost("b") == pytest.approx(6 * 0.5)
    assert ledger.reads.get_job(e).billable_attempts == 2


# -- consistency ----------------------------------------------------------------------


def test_verify_finds_tampering(sqlite_ledger: Ledger, path: Path) -> None:
    job_id = add_job(sqlite_ledger)
    reach(sqlite_ledger, job_id, S.QUEUED)
    assert sqlite_ledger.reads.verify() == []
    conn = raw(path)
    conn.execute("UPDATE jobs SET state = 'downloaded' WHERE id = ?", (job_id,))
    conn.close()
    assert sqlite_ledger.reads.verify() == [
        f"job {job_id}: events end at queued, but the job is downloaded"
    ]


def test_two_processes_never_submit_the_same_job_twice(path: Path) -> None:
    """Two ledgers (two connections) race to submit the same jobs: each goes exactly once."""
    with Ledger(path) as setup:
        add_batch(setup, "b")
        setup.plans.upsert_jobs("b", specs(60))
    won: list[list[int]] = [[], []]

    def submitter(n: int) -> None:
        with Ledger(path) as ledger:
            for job in ledger.queue.take_pending("b", 60):
                try:
                    ledger.moves.begin_submit(job.id)
                except IllegalTransition:
                    continue
                won[n].append(job.id)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won[0] + won[1]) == list(range(1, 61))
    with Ledger(path) as ledger:
        assert all(len(ledger.reads.events(i)) == 1 for i in range(1, 61))
        assert ledger.reads.verify() == []


def test_a_ledger_on_a_read_only_mount_can_still_be_read(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only mount cannot hold the WAL's shared-memory file: status and reports read
    the ledger as immutable instead (its changes all checkpointed)."""
    with Ledger(path) as writer:
        add_batch(writer, "b")
        writer.plans.upsert_jobs("b", specs(2))
    real = sqlite3.connect

    class ReadOnlyMount:
        """What SQLite gives a WAL file it may not add a -shm file to."""

        row_factory = None

        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def execute(self, *args: object) -> None:
            raise sqlite3.OperationalError("unable to open database file")

        def close(self) -> None:
            self._conn.close()

    def connect(target: Any, *args: Any, **kwargs: Any) -> Any:
        conn = real(target, *args, **kwargs)
        if "mode=ro" in str(target) and "immutable=1" not in str(target):
            return ReadOnlyMount(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    with Ledger(path, read_only=True) as reader:
        assert reader.reads.status("b")["total"] == 2
