"""What only a PostgreSQL ledger does, on a real server: the URLs it refuses (exit 2), claims
that two workers never share, leases that end, fencing, limits over every worker, buckets.

The state machine, events, reads and reports are the backend-neutral tests' (``ledger`` is
parametrized over both backends); these are the parts SQLite has no counterpart for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import add_batch, run_cli, specs
from pg_server import SECRET_PASSWORD, SECRET_ROLE, PgServer, free_port

from batchvid.errors import LedgerError, LimitReached, LostClaim
from batchvid.ledger import Ledger
from batchvid.ledger.submits import Admission
from batchvid.states import JobState


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        "batch: pgtest\nmodel: doubao-seedance-2-0\nprompts:\n  - a quiet harbour at dawn\n"
    )
    return path


@pytest.fixture
def two(pg_url: str) -> Iterator[tuple[Ledger, Ledger]]:
    """Two workers' views of one ledger, each joined to batch ``b`` with 20 pending jobs."""
    with Ledger(pg_url) as first, Ledger(pg_url) as second:
        add_batch(first, "b")
        first.plans.upsert_jobs("b", specs(20))
        yield first, second


# -- URLs the ledger cannot use: exit 2, a clear message, never a file ------------


def test_an_unknown_scheme_is_refused_by_name_and_no_file_is_made(
    tmp_path: Path, minimal: Path
) -> None:
    code, said = run_cli(tmp_path, "run", str(minimal), "--simulate", "--ledger", "mysql://u@h/db")
    assert code == 2
    assert "mysql:// is not a ledger batchvid can use" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]  # no "mysql:" folder


def test_a_server_that_cannot_be_reached_is_exit_2(tmp_path: Path) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    code, said = run_cli(tmp_path, "status", "--ledger", url)
    assert code == 2
    assert "is PostgreSQL running there" in said
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_password_is_exit_2_and_never_shown(pg_server: PgServer, tmp_path: Path) -> None:
    url = pg_server.url(user=SECRET_ROLE, password="not-the-password")
    code, said = run_cli(tmp_path, "status", "--ledger", url)
    assert code == 2
    assert "password authentication failed" in said and "check the user and password" in said
    assert "not-the-password" not in said and f"{SECRET_ROLE}:***@" in said


def test_the_right_password_opens_it(pg_server: PgServer, pg_url: str) -> None:
    database = pg_url.rsplit("/", 1)[1]
    pg_server.execute(f"GRANT ALL ON SCHEMA public TO {SECRET_ROLE}", database)
    url = pg_server.url(database, user=SECRET_ROLE, password=SECRET_PASSWORD)
    with Ledger(url) as ledger:
        assert SECRET_PASSWORD not in ledger.where and SECRET_PASSWORD not in repr(ledger.target)
        add_batch(ledger, "b")
        assert ledger.reads.get_batch("b") is not None


def test_a_missing_database_is_exit_2(pg_server: PgServer, tmp_path: Path) -> None:
    url = pg_server.url("no_such_database")
    code, said = run_cli(tmp_path, "status", "--ledger", url)
    assert code == 2
    assert "does not exist" in said and "createdb" in said


def test_a_ledger_a_newer_batchvid_wrote_is_refused_untouched(pg_url: str, tmp_path: Path) -> None:
    with Ledger(pg_url) as ledger:
        add_batch(ledger, "b")
    with pg_connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO batchvid_migrations SELECT migration_set, 'm999_future', applied_utc"
            " FROM batchvid_migrations LIMIT 1"
        )
    code, said = run_cli(tmp_path, "status", "--ledger", pg_url)
    assert code == 2 and "written by a newer batchvid" in said and "m999_future" in said
    with pytest.raises(LedgerError, match="newer batchvid"):
        Ledger(pg_url)


def test_status_on_an_empty_database_says_there_is_no_ledger_yet(
    pg_url: str, tmp_path: Path
) -> None:
    code, said = run_cli(tmp_path, "status", "--ledger", pg_url)
    assert code == 2 and "no ledger in" in said
    with pg_connect(pg_url) as conn:  # and it made nothing there
        assert conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,)


# -- claims and leases --------------------------------------------------------------


def test_two_workers_claim_disjoint_jobs_and_each_keeps_its_own(
    two: tuple[Ledger, Ledger],
) -> None:
    first, second = two
    a = first.leases.join("b", 60)
    b = second.leases.join("b", 60)
    mine = first.queue.take_pending("b", 8)
    theirs = second.queue.take_pending("b", 8)
    assert len(mine) == 8 and len(theirs) == 8
    assert not {j.id for j in mine} & {j.id for j in theirs}
    owners = dict(first.engine.rows("SELECT id, claimed_by FROM jobs WHERE claimed_by IS NOT NULL"))
    assert {owners[j.id] for j in mine} == {a} and {owners[j.id] for j in theirs} == {b}
    # A claim is kept: taking again returns one's own jobs (minus those busy), none of the other's.
    free = set(free_ids(first))
    again = first.queue.take_pending("b", 20, skip=[j.id for j in mine[:3]])
    assert {j.id for j in again} == {j.id for j in mine[3:]} | free
    with pytest.raises(LostClaim, match="another worker"):
        first.moves.begin_submit(theirs[0].id)


def test_claims_taken_at_once_never_overlap(pg_url: str) -> None:
    """Six workers take at once, in threads: SKIP LOCKED hands each job to one of them."""
    with Ledger(pg_url) as ledger:
        add_batch(ledger, "b")
        ledger.plans.upsert_jobs("b", specs(200))
    taken: list[list[int]] = []

    def take() -> None:
        with Ledger(pg_url) as worker:
            worker.leases.join("b", 60)
            mine: list[int] = []
            while batch := worker.queue.take_pending("b", 7, skip=mine):
                mine += [j.id for j in batch]
            taken.append(mine)

    run_threads([take] * 6)
    ids = [i for mine in taken for i in mine]
    assert len(taken) == 6 and len(ids) == len(set(ids)) == 200


def test_a_lapsed_lease_hands_the_jobs_over_and_fences_the_old_worker(
    two: tuple[Ledger, Ledger],
) -> None:
    first, second = two
    old = first.leases.join("b", 0.5)
    second.leases.join("b", 60)
    held = first.queue.take_pending("b", 20)
    first.moves.begin_submit(held[0].id)  # a create left in flight
    assert second.queue.take_pending("b", 20) == []  # all held, lease alive
    wait_until_lapsed(second, old)
    assert not first.leases.renew(old)  # the old worker hears its lease ended ...
    assert second.plans.recover_interrupted("b") == 1  # ... its create is in doubt
    assert second.reads.get_job(held[0].id).state is JobState.IN_DOUBT
    taken = second.queue.take_pending("b", 20)
    assert {j.id for j in taken} == {j.id for j in held[1:]}
    with pytest.raises(LostClaim):
        first.moves.begin_submit(held[1].id)  # the old worker may no longer move them


def test_leaving_hands_back_all_but_creates_in_flight(two: tuple[Ledger, Ledger]) -> None:
    first, second = two
    worker = first.leases.join("b", 60)
    held = first.queue.take_pending("b", 5)
    first.moves.begin_submit(held[0].id)
    assert first.leases.leave(worker) == 4
    assert [w.id for w in second.leases.live("b")] == []
    assert second.plans.recover_interrupted("b") == 1  # its lease ended when it left
    assert len(second.queue.take_pending("b", 30)) == 19


def test_an_unsent_intent_is_released_only_while_it_is_the_jobs_last(
    two: tuple[Ledger, Ledger],
) -> None:
    """A worker cut off while recording an intent never sent the create: the next run
    makes the job pending again, unless another intent (maybe sent) came since."""
    first, second = two
    cut_off = first.leases.join("b", 60)
    job, other_job = first.queue.take_pending("b", 2)
    first.moves.begin_submit(job.id)
    first.moves.begin_submit(other_job.id)
    first.leases.leave(cut_off)
    assert second.plans.recover_interrupted("b") == 2  # in doubt, for all the others know
    release = second.moves.release_unsent_intent
    assert not release(job.id, "someone else", 1, "x")
    assert not release(job.id, cut_off, 2, "x")
    assert release(job.id, cut_off, 1, "never sent")
    released = second.reads.get_job(job.id)
    assert released.state is JobState.PENDING and released.billable_attempts == 0
    assert not release(job.id, cut_off, 1, "never sent")  # once
    # The other job was retried since, and its new intent is another worker's: left alone.
    second.plans.retry("b", JobState.IN_DOUBT)
    second.leases.join("b", 60)
    assert [j.id for j in second.queue.take_pending("b", 20) if j.id == other_job.id]
    second.moves.begin_submit(other_job.id)
    assert not release(other_job.id, cut_off, 1, "never sent")
    assert second.reads.get_job(other_job.id).state is JobState.SUBMITTING


def test_a_short_lease_bounds_how_long_a_worker_holds_locks_or_waits(pg_url: str) -> None:
    """A worker cut off mid-transaction holds its rows until the server ends its session:
    within a quarter of the lease, so the others are never held up past theirs."""
    with Ledger(pg_url) as ledger:
        add_batch(ledger, "b")
        assert ledger.engine.rows("SHOW idle_in_transaction_session_timeout") == [("10s",)]
        worker = ledger.leases.join("b", 2.0)
        for _ in range(3):  # every pooled connection, old ones replaced
            assert ledger.engine.rows("SHOW idle_in_transaction_session_timeout") == [("500ms",)]
            assert ledger.engine.rows("SHOW lock_timeout") == [("500ms",)]
            assert ledger.engine.rows("SHOW application_name") == [(worker,)]


def test_the_sessions_of_a_worker_whose_lease_ended_are_ended_with_their_locks(
    two: tuple[Ledger, Ledger],
) -> None:
    """Cut off between a statement and its Sync, a session holds its row locks with no
    timer running: the others end it once the worker's lease has ended."""
    import psycopg

    first, second = two
    gone = first.leases.join("b", 0.5)
    job = first.queue.take_pending("b", 1)[0]
    url = first.target.url
    assert url is not None
    with psycopg.connect(url, autocommit=False, application_name=gone) as stuck:
        stuck.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job.id,))  # held open
        second.leases.join("b", 60)
        assert second.leases.end_gone() == 0  # its lease has not ended: its sessions stay
        wait_until_lapsed(second, gone)
        assert job.id not in {j.id for j in second.queue.take_pending("b", 30)}  # locked: skipped
        assert second.leases.end_gone() >= 1  # the stuck one, and the first ledger's own
        assert job.id in {j.id for j in second.queue.take_pending("b", 30)}  # free now
        second.moves.begin_submit(job.id)
        with pytest.raises(psycopg.OperationalError):
            stuck.execute("SELECT 1")


def test_a_simulating_worker_runs_alone(two: tuple[Ledger, Ledger]) -> None:
    first, second = two
    first.leases.join("b", 60)
    with pytest.raises(LedgerError, match="cannot be shared with --simulate"):
        second.leases.join("b", 60, alone=True)
    first.leases.leave(first.worker or "")
    alone = second.leases.join("b", 60, alone=True)
    with pytest.raises(LedgerError, match="cannot be shared with --simulate"):
        first.leases.join("b", 60)
    assert [w.id for w in first.leases.live("b")] == [alone]


# -- limits over every worker ------------------------------------------------------------


def test_admission_counts_every_workers_tasks(two: tuple[Ledger, Ledger]) -> None:
    first, second = two
    first.leases.join("b", 60)
    second.leases.join("b", 60)
    admit = Admission("b", max_active=5)
    mine = first.queue.take_pending("b", 3)
    theirs = second.queue.take_pending("b", 3)
    first.moves.begin_submit_many([j.id for j in mine], admit=admit)
    second.moves.begin_submit_many([j.id for j in theirs[:2]], admit=admit)
    with pytest.raises(LimitReached) as refused:
        second.moves.begin_submit(theirs[2].id, admit=admit)
    assert refused.value.limit == "active"
    assert second.reads.get_job(theirs[2].id).state is JobState.PENDING  # nothing written


def test_admission_holds_the_budget_over_every_worker(pg_url: str) -> None:
    with Ledger(pg_url) as first, Ledger(pg_url) as second:
        add_batch(first, "b")
        first.plans.upsert_jobs("b", specs(10, cost=1.0))
        first.leases.join("b", 60)
        second.leases.join("b", 60)
        admit = Admission("b", max_active=100, budget_usd=3.5)
        first.moves.begin_submit_many([j.id for j in first.queue.take_pending("b", 2)], admit=admit)
        second.moves.begin_submit(second.queue.take_pending("b", 1)[0].id, admit=admit)
        with pytest.raises(LimitReached) as refused:
            second.moves.begin_submit(second.queue.take_pending("b", 1)[0].id, admit=admit)
        assert refused.value.limit == "budget"


def test_admissions_at_once_never_pass_the_cap(pg_url: str) -> None:
    """Eight workers, in threads, admit one job at a time against a cap of 6 in total."""
    with Ledger(pg_url) as ledger:
        add_batch(ledger, "b")
        ledger.plans.upsert_jobs("b", specs(40))
    admit = Admission("b", max_active=6)
    admitted: list[int] = []

    def go() -> None:
        with Ledger(pg_url) as worker:
            worker.leases.join("b", 60)
            for job in worker.queue.take_pending("b", 5):
                try:
                    worker.moves.begin_submit(job.id, admit=admit)
                except LimitReached:
                    continue
                admitted.append(job.id)

    run_threads([go] * 8)
    assert len(admitted) == 6
    with Ledger(pg_url) as ledger:
        assert ledger.queue.active_count("b") == 6


def test_a_bucket_update_is_atomic_across_workers(two: tuple[Ledger, Ledger]) -> None:
    def bump(saved: dict[str, Any] | None, now: float) -> tuple[dict[str, Any], int]:
        count = (saved or {}).get("n", 0) + 1
        return {"n": count}, count

    def many(ledger: Ledger) -> None:
        for _ in range(25):
            ledger.buckets.update("key-hash", bump)

    run_threads([lambda: many(two[0]), lambda: many(two[1])] * 2)
    assert two[0].buckets.update("key-hash", bump) == 101


# -- helpers -------------------------------------------------------------------------------


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Start them all, wait for them all; an error in any fails the test."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reraised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def free_ids(ledger: Ledger) -> list[int]:
    return [i for (i,) in ledger.engine.rows("SELECT id FROM jobs WHERE claimed_by IS NULL")]


def wait_until_lapsed(ledger: Ledger, worker: str) -> None:
    """Until the database's clock has passed ``worker``'s lease (a hang, not speed, bound)."""
    for _ in range(200):
        if worker not in {w.id for w in ledger.leases.live()}:
            return
        time.sleep(0.05)
    raise AssertionError(f"the lease of {worker} never ended")


def pg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)
