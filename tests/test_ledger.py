"""The ledger: schema and migrations, every transition legal or not, upserts, queries."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlite_utils
from report_ledgers import T0, Clock

from batchvid.errors import IllegalTransition, LedgerError
from batchvid.ledger import Ledger, utc_iso
from batchvid.ledger_rows import JobInput, JobRow, NewJob, StoredReference
from batchvid.ledger_schema import migrations
from batchvid.plan import load_plan
from batchvid.render_times import RenderSample
from batchvid.request import VideoRequest
from batchvid.states import TRANSITIONS, JobState, chain_problem, poll_state

S = JobState


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested" / "ledger.db"


@pytest.fixture
def ledger(path: Path, clock: Clock) -> Iterator[Ledger]:
    with Ledger(path, clock=clock) as opened:
        add_batch(opened, "b")
        yield opened


def add_batch(ledger: Ledger, name: str) -> None:
    ledger.upsert_batch(
        name, manifest_path=f"{name}.yaml", manifest_sha256="0" * 64, output_dir=f"out/{name}"
    )


def specs(n: int, prefix: str = "k", start: int = 0) -> list[NewJob]:
    return [
        NewJob(key=f"{prefix}{i}", index=i, prompt=f"prompt {i}", model="doubao-seedance-2-0")
        for i in range(start, start + n)
    ]


def add_job(ledger: Ledger, key: str = "k", batch: str = "b", index: int = 1) -> int:
    ledger.upsert_jobs(batch, [NewJob(key=key, index=index, prompt="p", model="m")])
    row = ledger.job_by_key(batch, key)
    assert row is not None
    return row.id


def raw(path: Path) -> sqlite3.Connection:
    """A second, independent connection to the file (close it!)."""
    return sqlite3.connect(path, isolation_level=None)


# -- every single-job action, the states it applies to, and where it leads -------

Action = Callable[[Ledger, int], object]
ACTIONS: dict[str, tuple[Action, frozenset[JobState], JobState]] = {
    "begin_submit": (lambda lg, j: lg.begin_submit(j), frozenset({S.PENDING}), S.SUBMITTING),
    "record_submitted": (
        lambda lg, j: lg.record_submitted(j, f"task-{j}", "SUBMITTED", T0 + 60),
        frozenset({S.SUBMITTING}),
        S.QUEUED,
    ),
    "record_rejected": (
        lambda lg, j: lg.record_rejected(j, "InvalidParameter", "duration out of range"),
        frozenset({S.SUBMITTING}),
        S.REJECTED,
    ),
    "record_in_doubt": (
        lambda lg, j: lg.record_in_doubt(j, "read timeout after the body was sent"),
        frozenset({S.SUBMITTING}),
        S.IN_DOUBT,
    ),
    "release_unsent": (
        lambda lg, j: lg.release_unsent(j, "connect refused"),
        frozenset({S.SUBMITTING}),
        S.PENDING,
    ),
    "record_poll": (
        lambda lg, j: lg.record_poll(j, "IN_PROGRESS", 40, T0 + 30),
        frozenset({S.QUEUED, S.IN_PROGRESS}),
        S.IN_PROGRESS,
    ),
    "record_completed": (
        lambda lg, j: lg.record_completed(j, f"https://cdn.example/{j}.mp4", T0 + 3600),
        frozenset({S.QUEUED, S.IN_PROGRESS}),
        S.COMPLETED,
    ),
    "record_failed": (
        lambda lg, j: lg.record_failed(j, "FAILED", "content policy"),
        frozenset({S.QUEUED, S.IN_PROGRESS, S.COMPLETED}),
        S.FAILED,
    ),
    "record_stalled": (
        lambda lg, j: lg.record_stalled(j),
        frozenset({S.QUEUED, S.IN_PROGRESS}),
        S.STALLED,
    ),
    "refresh_url": (
        lambda lg, j: lg.refresh_url(j, f"https://cdn.example/{j}.mp4?fresh", T0 + 7200),
        frozenset({S.COMPLETED}),
        S.COMPLETED,
    ),
    "record_downloaded": (
        lambda lg, j: lg.record_downloaded(j, f"out/{j}.mp4", 1234, "ab" * 32),
        frozenset({S.COMPLETED}),
        S.DOWNLOADED,
    ),
    "record_download_error": (
        lambda lg, j: lg.record_download_error(j, "HTTP 403 from the CDN"),
        frozenset({S.COMPLETED}),
        S.COMPLETED,
    ),
}

PATHS: dict[JobState, list[str]] = {
    S.PENDING: [],
    S.SUBMITTING: ["begin_submit"],
    S.QUEUED: ["begin_submit", "record_submitted"],
    S.IN_PROGRESS: ["begin_submit", "record_submitted", "record_poll"],
    S.COMPLETED: ["begin_submit", "record_submitted", "record_poll", "record_completed"],
    S.DOWNLOADED: [
        *("begin_submit", "record_submitted", "record_completed", "record_downloaded"),
    ],
    S.FAILED: ["begin_submit", "record_submitted", "record_poll", "record_failed"],
    S.REJECTED: ["begin_submit", "record_rejected"],
    S.IN_DOUBT: ["begin_submit", "record_in_doubt"],
    S.STALLED: ["begin_submit", "record_submitted", "record_stalled"],
}


def reach(ledger: Ledger, job_id: int, state: JobState) -> None:
    for name in PATHS[state]:
        ACTIONS[name][0](ledger, job_id)
    assert ledger.get_job(job_id).state is state


LEGAL = [(a, s) for a, (_, sources, _) in ACTIONS.items() for s in sorted(sources)]
ILLEGAL = [(a, s) for a, (_, sources, _) in ACTIONS.items() for s in S if s not in sources]


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


def test_connection_pragmas(ledger: Ledger) -> None:
    conn = ledger._conn  # the settings are per connection: look at the ledger's own
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL; FULL per durable commit
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_only_the_create_intent_and_the_task_id_are_fsynced(ledger: Ledger) -> None:
    """FULL for the commits that must survive a power cut; NORMAL (WAL) for the rest."""
    job = add_job(ledger)
    statements: list[str] = []
    ledger._conn.set_trace_callback(statements.append)
    try:

        def fsynced(action: Callable[[], object]) -> bool:
            statements.clear()
            action()
            return "PRAGMA synchronous = FULL" in statements

        assert fsynced(lambda: ledger.begin_submit(job))
        assert fsynced(lambda: ledger.record_submitted(job, "t1", "queued", 0.0))
        assert not fsynced(lambda: ledger.record_poll(job, "IN_PROGRESS", 40, 1.0))
        assert not fsynced(lambda: ledger.record_completed(job, "https://cdn/x", None))
        assert not fsynced(lambda: ledger.record_downloaded(job, "/v/x.mp4", 10, "ab" * 32))
    finally:
        ledger._conn.set_trace_callback(None)
    assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL again


def test_the_download_queue_reads_its_own_index(ledger: Ledger) -> None:
    statements: list[str] = []
    ledger._conn.set_trace_callback(statements.append)
    try:
        ledger.completed_jobs("b", 5)
    finally:
        ledger._conn.set_trace_callback(None)
    (query,) = statements
    plan = ledger._conn.execute("EXPLAIN QUERY PLAN " + query).fetchall()
    assert any("jobs_download_queue" in row[3] for row in plan), [tuple(r) for r in plan]


def test_migrations_apply_once_and_reopening_keeps_data(path: Path, clock: Clock) -> None:
    with Ledger(path, clock=clock) as ledger:
        add_batch(ledger, "b")
        ledger.upsert_jobs("b", specs(3))
    for _ in range(2):
        with Ledger(path, clock=clock) as ledger:
            assert ledger.counts("b")[S.PENDING] == 3
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
        batch = ledger.get_batch("old")
        assert batch is not None and batch.endpoint is None and batch.output_dir == "out"
        job = ledger.job_by_key("old", "k")
        assert job is not None
        assert (job.state, job.task_id, job.axes, job.axes_json) == (S.QUEUED, "t1", (), "[]")
        ledger.upsert_jobs("old", [NewJob(key="k2", index=2, prompt="p", model="m", axes=AXES)])
        assert ledger.job_by_key("old", "k2") is not None
        assert ledger.counts("old")[S.QUEUED] == 1


AXES = (("model", "doubao-seedance-2-0"), ("size", "9:16"), ("style", "film noir, «ü»"))


def test_job_axes_round_trip_in_manifest_order(ledger: Ledger) -> None:
    ledger.upsert_jobs(
        "b",
        [
            NewJob(key="a", index=1, prompt="p", model="m", axes=AXES),
            NewJob(key="plain", index=2, prompt="p", model="m"),
        ],
    )
    row = ledger.job_by_key("b", "a")
    assert row is not None and row.axes == AXES
    plain = ledger.job_by_key("b", "plain")
    assert plain is not None and plain.axes == () and plain.axes_json == "[]"
    # A known key keeps what it was recorded with, even if the manifest's axes change.
    ledger.upsert_jobs("b", [NewJob(key="a", index=1, prompt="p", model="m", axes=AXES[:1])])
    again = ledger.job_by_key("b", "a")
    assert again is not None and again.axes == AXES


def test_a_jobspec_from_the_expander_records_its_axes(ledger: Ledger, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\nbatch: b\ndefaults: {model: doubao-seedance-2-0}\n"
        "matrix:\n  size: ['16:9', '9:16']\n  style: [noir, pastel]\n"
        "prompts: ['a {style} shot']\n"
    )
    jobs = load_plan(manifest).jobs
    ledger.upsert_jobs("b", jobs)
    rows = list(ledger.jobs("b"))
    assert [r.axes for r in rows] == [j.axes for j in jobs]
    assert rows[0].axes == (("size", "16:9"), ("style", "noir"))


def test_upsert_batch_keeps_the_endpoint_unless_given_one(ledger: Ledger) -> None:
    def upsert(endpoint: str | None) -> str | None:
        row = ledger.upsert_batch(
            "b", manifest_path="b.yaml", manifest_sha256="0" * 64, output_dir="out/b",
            endpoint=endpoint,
        )  # fmt: skip
        return row.endpoint

    batch = ledger.get_batch("b")
    assert batch is not None and batch.endpoint is None
    assert upsert("simulator") == "simulator"
    assert upsert(None) == "simulator"
    assert upsert("https://api.cometapi.com") == "https://api.cometapi.com"
    assert [b.endpoint for b in ledger.batches()] == ["https://api.cometapi.com"]


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
        writer.upsert_jobs("b", specs(3))
        with Ledger(path, read_only=True) as reader:
            assert reader.counts("b")[S.PENDING] == 3
            writer.begin_submit(writer.pending_jobs("b", 1)[0].id)  # the writer goes on
            assert reader.counts("b")[S.SUBMITTING] == 1  # and the reader sees it
            with pytest.raises(LedgerError, match="readonly"):
                reader.upsert_jobs("b", specs(1, prefix="new"))
            with pytest.raises(LedgerError, match="readonly"):
                reader.begin_submit(2)
    with Ledger(path, read_only=True) as reader:  # after the writer closed (no -wal left), too
        assert reader.counts("b")[S.PENDING] == 2


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
    first = ledger.get_batch("b")
    assert first is not None and first.limits == {} and first.budget_usd is None
    clock.advance(60)
    again = ledger.upsert_batch(
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
    assert [b.name for b in ledger.batches()] == ["b"]


def test_upsert_jobs_counts_new_keys_and_keeps_known_ones(ledger: Ledger) -> None:
    assert ledger.upsert_jobs("b", specs(5), est_cost=lambda j: 0.5) == 5
    assert ledger.upsert_jobs("b", specs(5)) == 0
    known = ledger.job_by_key("b", "k1")
    assert known is not None
    reach(ledger, known.id, S.QUEUED)
    before = ledger.get_job(known.id)

    # The edited manifest drops k0, reorders the rest and adds two new keys.
    edited = [NewJob(key=f"k{i}", index=10 + i, prompt="changed", model="m") for i in range(1, 7)]
    asked: list[str] = []

    def estimate(job: JobInput) -> float:
        asked.append(job.key)
        return 1.0

    assert ledger.upsert_jobs("b", edited, est_cost=estimate) == 2
    assert asked == ["k5", "k6"]  # known keys are not re-estimated
    assert ledger.get_job(known.id) == before  # state, task id, index, prompt: all kept
    assert ledger.job_by_key("b", "k0") is not None  # nothing is deleted
    new = ledger.job_by_key("b", "k6")
    assert new is not None and new.state is S.PENDING and new.est_cost_usd == 1.0
    assert ledger.status("b")["total"] == 7


def test_upsert_jobs_into_an_unknown_batch_is_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no batch named 'nope'"):
        ledger.upsert_jobs("nope", specs(1))


def test_the_same_key_in_two_batches_is_two_jobs(ledger: Ledger) -> None:
    add_batch(ledger, "other")
    assert ledger.upsert_jobs("b", specs(3)) == 3
    assert ledger.upsert_jobs("other", specs(3)) == 3
    first = ledger.job_by_key("b", "k0")
    assert first is not None
    reach(ledger, first.id, S.FAILED)
    assert ledger.counts("other")[S.PENDING] == 3
    assert ledger.retry_failed("other") == 0
    assert ledger.retry_failed("b") == 1


def test_duplicate_keys_in_one_upsert_make_one_job(ledger: Ledger) -> None:
    assert ledger.upsert_jobs("b", [*specs(2), *specs(2)]) == 2


def test_job_rows_carry_references_and_make_requests(ledger: Ledger) -> None:
    refs = (
        StoredReference("refs/a.jpg", "a" * 64, "image/jpeg"),
        StoredReference("refs/b.png", "b" * 64, "image/png"),
    )
    job = NewJob(key="r", index=1, prompt="[Image 1] meets [Image 2]", model="m", references=refs)
    ledger.upsert_jobs("b", [job])
    row = ledger.job_by_key("b", "r")
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


# -- transitions ------------------------------------------------------------------


def test_the_action_table_covers_every_edge_of_the_state_machine() -> None:
    edges = {(s, dst) for _, sources, dst in ACTIONS.values() for s in sources if s != dst}
    edges |= {
        (S.SUBMITTING, S.IN_PROGRESS),  # record_submitted with a running task
        (S.FAILED, S.PENDING),  # retry_failed
        (S.IN_DOUBT, S.PENDING),  # retry_in_doubt
        (S.STALLED, S.QUEUED),  # retry_stalled
        (S.STALLED, S.IN_PROGRESS),  # retry_stalled
    }
    assert edges == {(s, d) for s, targets in TRANSITIONS.items() for d in targets}


@pytest.mark.parametrize(("action", "source"), LEGAL)
def test_legal_transition(ledger: Ledger, clock: Clock, action: str, source: JobState) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, source)
    before = ledger.events(job_id)
    clock.advance(5)
    ACTIONS[action][0](ledger, job_id)
    after = ledger.get_job(job_id)
    target = ACTIONS[action][2]
    assert after.state is target
    assert after.updated_utc == utc_iso(clock())
    new_events = ledger.events(job_id)[len(before) :]
    if target is source:
        assert new_events == []  # events are for transitions only
    else:
        assert [(e.from_state, e.to_state, e.at_utc) for e in new_events] == [
            (source, target, utc_iso(clock()))
        ]
    assert ledger.verify() == []


@pytest.mark.parametrize(("action", "source"), ILLEGAL)
def test_illegal_transition_raises_and_changes_nothing(
    ledger: Ledger, action: str, source: JobState
) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, source)
    before, events = ledger.get_job(job_id), ledger.events(job_id)
    with pytest.raises(IllegalTransition):
        ACTIONS[action][0](ledger, job_id)
    assert ledger.get_job(job_id) == before
    assert ledger.events(job_id) == events


def test_an_unknown_job_is_a_ledger_error_not_an_illegal_transition(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no job with id 99") as raised:
        ledger.record_stalled(99)
    assert not isinstance(raised.value, IllegalTransition)
    with pytest.raises(LedgerError, match="no job with id 99"):
        ledger.begin_submit_many([99])
    with pytest.raises(LedgerError, match="no job with id 99"):
        ledger.get_job(99)


def test_the_event_is_written_in_the_same_transaction(ledger: Ledger, path: Path) -> None:
    job_id = add_job(ledger)
    conn = raw(path)  # make every event insert fail, from outside
    conn.execute(
        "CREATE TRIGGER no_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    try:
        with pytest.raises(LedgerError, match="no"):
            ledger.begin_submit(job_id)
        assert ledger.get_job(job_id).state is S.PENDING
        assert ledger.get_job(job_id).attempts == 0
    finally:
        conn.execute("DROP TRIGGER no_events")
        conn.close()
    ledger.begin_submit(job_id)
    assert ledger.get_job(job_id).state is S.SUBMITTING


def test_begin_submit_many_is_all_or_nothing(ledger: Ledger) -> None:
    ledger.upsert_jobs("b", specs(4))
    ids = [j.id for j in ledger.pending_jobs("b", 4)]
    reach(ledger, ids[2], S.SUBMITTING)
    with pytest.raises(IllegalTransition, match=f"{ids[2]} \\(submitting\\)"):
        ledger.begin_submit_many(ids)
    assert ledger.counts("b")[S.PENDING] == 3
    ledger.begin_submit_many([ids[0], ids[1], ids[0], ids[3]])  # duplicates count once
    rows = [ledger.get_job(i) for i in ids]
    assert all(r.state is S.SUBMITTING and r.attempts == 1 for r in rows)
    assert [e.detail for e in ledger.events(ids[0])] == [{"attempt": 1}]
    ledger.begin_submit_many([])


def test_submission_records_the_task(ledger: Ledger, clock: Clock) -> None:
    job_id = add_job(ledger)
    ledger.begin_submit(job_id)
    clock.advance(2)
    assert ledger.record_submitted(job_id, "task_1", "queued", T0 + 62) is S.QUEUED
    row = ledger.get_job(job_id)
    assert (row.task_id, row.remote_status, row.next_poll_at) == ("task_1", "queued", T0 + 62)
    assert (row.submitted_utc, row.queued_utc) == (utc_iso(T0), utc_iso(T0 + 2))
    assert row.started_utc is None and row.watch_started_at == T0 + 2
    assert ledger.events(job_id)[-1].detail == {
        "remote_status": "queued",
        "task_id": "task_1",
        "first_poll_in_s": 60.0,
    }

    running = add_job(ledger, "k2")
    ledger.begin_submit(running)
    assert ledger.record_submitted(running, "task_2", "IN_PROGRESS", T0) is S.IN_PROGRESS
    assert ledger.get_job(running).started_utc == utc_iso(clock())
    with pytest.raises(ValueError):
        ledger.record_submitted(add_job(ledger, "k3"), "", None, T0)


def test_polls_update_in_place_and_never_go_backwards(ledger: Ledger, clock: Clock) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.QUEUED)
    events = len(ledger.events(job_id))
    assert ledger.record_poll(job_id, "SUBMITTED", 0, T0 + 10) is S.QUEUED
    assert len(ledger.events(job_id)) == events
    clock.advance(10)
    assert ledger.record_poll(job_id, "in_progress", 30, T0 + 20) is S.IN_PROGRESS
    assert ledger.record_poll(job_id, "queued", None, T0 + 40) is S.IN_PROGRESS  # stale answer
    row = ledger.get_job(job_id)
    assert (row.polls, row.progress, row.next_poll_at) == (3, 30, T0 + 40)
    assert row.started_utc == utc_iso(T0 + 10)
    assert len(ledger.events(job_id)) == events + 1
    with pytest.raises(ValueError, match="terminal"):
        ledger.record_poll(job_id, "SUCCESS", 100, T0 + 50)
    assert ledger.get_job(job_id) == row


def test_release_unsent_frees_the_job_for_another_attempt(ledger: Ledger) -> None:
    job_id = add_job(ledger)
    ledger.begin_submit(job_id)
    ledger.release_unsent(job_id, "429 before any work")
    row = ledger.get_job(job_id)
    assert (row.state, row.attempts, row.billable_attempts) == (S.PENDING, 1, 0)
    assert row.error_message == "429 before any work" and row.submitted_utc is None
    ledger.begin_submit(job_id)
    row = ledger.get_job(job_id)
    assert (row.attempts, row.billable_attempts, row.error_message) == (2, 1, None)


def test_download_errors_are_kept_until_the_download_succeeds(ledger: Ledger) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.COMPLETED)
    ledger.record_download_error(job_id, "HTTP 403")
    ledger.record_download_error(job_id, "truncated")
    ledger.refresh_url(job_id, "https://cdn.example/fresh.mp4", T0 + 900)
    row = ledger.get_job(job_id)
    assert (row.download_errors, row.error_message) == (2, "truncated")
    assert (row.video_url, row.video_url_expires_at) == ("https://cdn.example/fresh.mp4", T0 + 900)
    ledger.record_downloaded(job_id, Path("out/a.mp4"), 10, "cd" * 32)
    row = ledger.get_job(job_id)
    assert (row.file_path, row.bytes, row.sha256) == ("out/a.mp4", 10, "cd" * 32)
    assert row.error_message is None and row.downloaded_utc == row.finished_utc


# -- user actions and recovery ------------------------------------------------------


def test_retry_failed_starts_a_new_attempt_and_remembers_the_old_task(ledger: Ledger) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.FAILED)
    assert ledger.retry_failed("b") == 1
    row = ledger.get_job(job_id)
    assert row.state is S.PENDING and row.task_id is None and row.error_message is None
    assert (row.attempts, row.polls, row.queued_utc, row.finished_utc) == (1, 0, None, None)
    event = ledger.events(job_id)[-1]
    assert (event.from_state, event.to_state) == (S.FAILED, S.PENDING)
    assert event.detail == {
        "previous_task_id": f"task-{job_id}",
        "error_code": "FAILED",
        "error_message": "content policy",
        "attempt": 1,
    }
    assert ledger.retry_failed("b") == 0
    reach(ledger, job_id, S.QUEUED)
    assert ledger.get_job(job_id).attempts == 2


def test_retry_in_doubt_says_a_duplicate_may_be_billed(ledger: Ledger) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.IN_DOUBT)
    assert ledger.retry_in_doubt("b") == 1
    assert ledger.get_job(job_id).state is S.PENDING
    detail = ledger.events(job_id)[-1].detail
    assert detail is not None and detail["duplicate_may_be_billed"] is True


def test_retry_stalled_resumes_polling_the_same_task(ledger: Ledger, clock: Clock) -> None:
    waiting, running = add_job(ledger, "a"), add_job(ledger, "b")
    reach(ledger, waiting, S.STALLED)
    reach(ledger, running, S.IN_PROGRESS)
    ledger.record_stalled(running)
    clock.advance(7200)
    assert ledger.due_polls("b") == []
    assert ledger.retry_stalled("b") == 2
    assert ledger.get_job(waiting).state is S.QUEUED
    assert ledger.get_job(running).state is S.IN_PROGRESS
    for job_id in (waiting, running):
        row = ledger.get_job(job_id)
        assert (row.task_id, row.next_poll_at) == (f"task-{job_id}", clock())
        assert row.watch_started_at == clock() and row.finished_utc is None
    assert {j.id for j in ledger.due_polls("b")} == {waiting, running}
    assert ledger.verify() == []


def test_recover_interrupted_puts_in_flight_creates_in_doubt(ledger: Ledger) -> None:
    add_batch(ledger, "other")
    ledger.upsert_jobs("b", specs(3))
    ledger.upsert_jobs("other", specs(1))
    ledger.begin_submit_many(j.id for j in ledger.pending_jobs("b", 2))
    ledger.begin_submit_many(j.id for j in ledger.pending_jobs("other", 1))
    assert ledger.recover_interrupted("b") == 2
    assert ledger.counts("b")[S.IN_DOUBT] == 2
    assert ledger.counts("other")[S.SUBMITTING] == 1  # another batch's run is not ours
    doubtful = ledger.jobs("b").__next__()
    assert "interrupted" in (doubtful.error_message or "")
    assert ledger.recover_interrupted("b") == 0
    assert ledger.verify() == []


def test_committed_cost_counts_every_attempt_that_may_bill(ledger: Ledger) -> None:
    ledger.upsert_jobs("b", specs(6), est_cost=lambda j: 0.5)
    a, b, c, d, e, f = (j.id for j in ledger.pending_jobs("b", 6))
    assert ledger.committed_cost("b") == 0.0
    reach(ledger, a, S.SUBMITTING)  # in flight: counts
    reach(ledger, b, S.REJECTED)  # refused: does not
    reach(ledger, c, S.IN_DOUBT)  # may exist: counts
    reach(ledger, d, S.DOWNLOADED)  # done: counts
    reach(ledger, e, S.FAILED)  # a task existed: counts
    ledger.begin_submit(f)
    ledger.release_unsent(f, "connect refused")  # never left: does not
    assert ledger.committed_cost("b") == pytest.approx(4 * 0.5)
    ledger.retry_failed("b")
    ledger.retry_in_doubt("b")
    assert ledger.committed_cost("b") == pytest.approx(4 * 0.5)  # the old attempts still count
    ledger.begin_submit_many([c, e])
    assert ledger.committed_cost("b") == pytest.approx(6 * 0.5)
    assert ledger.get_job(e).billable_attempts == 2


# -- queries --------------------------------------------------------------------------


def test_pending_jobs_come_in_manifest_order(ledger: Ledger) -> None:
    ledger.upsert_jobs(
        "b", [NewJob(key=f"k{i}", index=9 - i, prompt="p", model="m") for i in range(10)]
    )
    assert [j.idx for j in ledger.pending_jobs("b", 3)] == [0, 1, 2]
    assert ledger.pending_jobs("nope", 3) == []


def test_due_polls_and_next_poll_time(ledger: Ledger, clock: Clock) -> None:
    ledger.upsert_jobs("b", specs(4))
    ids = [j.id for j in ledger.pending_jobs("b", 4)]
    ledger.begin_submit_many(ids)
    for job_id, due in zip(ids, (30, 10, 20, 40), strict=True):
        ledger.record_submitted(job_id, f"t{job_id}", "SUBMITTED", T0 + due)
    ledger.record_poll(ids[2], "IN_PROGRESS", 5, T0 + 15)
    ledger.record_stalled(ids[3])
    assert ledger.next_poll_time("b") == T0 + 10
    assert ledger.due_polls("b", T0 + 5) == []
    assert [j.id for j in ledger.due_polls("b", T0 + 30)] == [ids[1], ids[2], ids[0]]
    assert [j.id for j in ledger.due_polls("b", T0 + 30, limit=1)] == [ids[1]]
    clock.advance(16)
    assert [j.id for j in ledger.due_polls("b")] == [ids[1], ids[2]]
    assert ledger.active_count("b") == 3
    assert ledger.next_poll_time("other") is None


def test_completed_jobs_soonest_expiring_first(ledger: Ledger) -> None:
    ledger.upsert_jobs("b", specs(3))
    ids = [j.id for j in ledger.pending_jobs("b", 3)]
    for job_id, expires in zip(ids, (T0 + 900, None, T0 + 300), strict=True):
        reach(ledger, job_id, S.IN_PROGRESS)
        ledger.record_completed(job_id, f"https://cdn.example/{job_id}", expires)
    assert [j.id for j in ledger.completed_jobs("b", 10)] == [ids[2], ids[0], ids[1]]


def test_counts_status_and_statuses(ledger: Ledger) -> None:
    add_batch(ledger, "a")
    ledger.upsert_jobs("b", specs(3))
    reach(ledger, ledger.pending_jobs("b", 1)[0].id, S.DOWNLOADED)
    status = ledger.status("b")
    assert status == {
        "batch": "b",
        "total": 3,
        "states": {s.value: {"pending": 2, "downloaded": 1}.get(s.value, 0) for s in S},
    }
    assert list(status["states"]) == [s.value for s in S]
    assert [s["batch"] for s in ledger.statuses()] == ["a", "b"]
    assert ledger.statuses()[0]["total"] == 0
    with pytest.raises(LedgerError, match="no batch named 'nope'"):
        ledger.status("nope")


def test_jobs_iterates_every_job_by_index_across_pages(ledger: Ledger) -> None:
    n = 2345
    ledger.upsert_jobs(
        "b", [NewJob(key=f"k{i}", index=(i * 11) % n, prompt="p", model="m") for i in range(n)]
    )
    seen = [j.idx for j in ledger.jobs("b")]
    assert seen == list(range(n))
    assert all(isinstance(j, JobRow) for j in ledger.jobs("b"))


def test_render_evidence_is_recorded_and_read_back_newest_last(
    ledger: Ledger, clock: Clock
) -> None:
    assert ledger.render_samples("m", 5, "720p") == []
    for n, (lo, hi) in enumerate(((59, 61), (89, 91), (0, 300))):
        job_id = add_job(ledger, f"k{n}")
        reach(ledger, job_id, S.QUEUED)
        clock.advance(10)
        ledger.record_completed(
            job_id, "https://cdn.example/v", None, render=RenderSample(lo, hi, stamped=n < 2)
        )
    bare = add_job(ledger, "bare")  # completed with nothing proved: not a sample
    reach(ledger, bare, S.QUEUED)
    ledger.record_completed(bare, "https://cdn.example/v", None)
    other = add_job(ledger, "other")
    reach(ledger, other, S.IN_PROGRESS)  # not completed: no sample
    samples = ledger.render_samples("m", 5, "720p")
    assert [(s.lo, s.hi) for s in samples] == [(59, 61), (89, 91), (0, 300)]
    assert [s for s in ledger.render_samples("m", 5, "720p", limit=1)] == [samples[-1]]
    assert ledger.render_samples("m", 10, "720p") == []


def test_the_times_a_render_is_judged_by_are_kept(ledger: Ledger, clock: Clock) -> None:
    job_id = add_job(ledger, "k")
    ledger.begin_submit(job_id)
    sent = clock()
    clock.advance(0.5)
    ledger.record_submitted(job_id, "task_1", "SUBMITTED", clock() + 60, server_created_at=1700)
    answered = clock()
    clock.advance(30)
    ledger.record_poll(job_id, "IN_PROGRESS", 40, clock() + 20)
    running = clock()
    clock.advance(20)
    ledger.record_poll(job_id, "IN_PROGRESS", 40, clock() + 20, seen_running=False)
    row = ledger.get_job(job_id)
    assert (row.sent_at, row.answered_at, row.server_created_at) == (sent, answered, 1700)
    assert row.last_running_at == running  # a poll without a usable answer proves nothing
    ledger.record_completed(
        job_id, "u", None, server_completed_at=1790, render=RenderSample(89, 91, stamped=True)
    )
    row = ledger.get_job(job_id)
    assert (row.server_completed_at, row.render_seconds) == (1790, 90)


def test_utc_iso_is_millisecond_utc() -> None:
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"
    assert utc_iso(T0 + 0.9996) == "2027-01-15T08:00:01.000Z"


# -- consistency ----------------------------------------------------------------------


def test_verify_finds_tampering(ledger: Ledger, path: Path) -> None:
    job_id = add_job(ledger)
    reach(ledger, job_id, S.QUEUED)
    assert ledger.verify() == []
    conn = raw(path)
    conn.execute("UPDATE jobs SET state = 'downloaded' WHERE id = ?", (job_id,))
    conn.close()
    assert ledger.verify() == [f"job {job_id}: events end at queued, but the job is downloaded"]


def test_chain_problem() -> None:
    assert chain_problem(S.PENDING, []) is None
    assert chain_problem(S.QUEUED, [("pending", "submitting"), ("submitting", "queued")]) is None
    assert "starts at" in (chain_problem(S.QUEUED, [("submitting", "queued")]) or "")
    assert "illegal" in (chain_problem(S.DOWNLOADED, [("pending", "downloaded")]) or "")
    assert "unknown" in (chain_problem(S.PENDING, [("pending", "nowhere")]) or "")


def test_poll_state_refuses_jobs_that_are_not_polled() -> None:
    with pytest.raises(IllegalTransition):
        poll_state(S.COMPLETED, "IN_PROGRESS")
    assert poll_state(S.QUEUED, "mystery") is S.QUEUED


def test_two_processes_never_submit_the_same_job_twice(path: Path) -> None:
    """Two ledgers (two connections) race to submit the same jobs: each goes exactly once."""
    with Ledger(path) as setup:
        add_batch(setup, "b")
        setup.upsert_jobs("b", specs(60))
    won: list[list[int]] = [[], []]

    def submitter(n: int) -> None:
        with Ledger(path) as ledger:
            for job in ledger.pending_jobs("b", 60):
                try:
                    ledger.begin_submit(job.id)
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
        assert all(len(ledger.events(i)) == 1 for i in range(1, 61))
        assert ledger.verify() == []
