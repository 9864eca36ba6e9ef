"""A worker's lease: when a create may still leave, and the heartbeat that keeps it (on a
real PostgreSQL ledger), hears that it ended, and puts creates left in flight in doubt."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from ledger_helpers import add_batch, specs
from pg_server import PgServer
from tcp_proxy import TcpProxy

from batchvid.ledger import Ledger
from batchvid.ledger.port import RunLedger
from batchvid.run.creates import Creates
from batchvid.run.lease import CREATE_SHARE, Lease, keep_lease
from batchvid.run.policy import Budget, DownloadRetries, SubmitPause
from batchvid.run.poll_policy import RenderBook
from batchvid.run.record import Recorder
from batchvid.run.recovery import import_tasks
from batchvid.states import JobState


def test_creates_leave_only_while_most_of_the_lease_is_surely_ahead() -> None:
    lease = Lease("w", length=60.0, confirmed_at=100.0)
    assert lease.every == 20.0 and lease.holds_until() == 160.0
    last = 100.0 + 60.0 * CREATE_SHARE
    assert lease.may_create(100.0) and lease.may_create(last - 0.001)
    assert not lease.may_create(last) and not lease.may_create(170.0)
    lease.renewed(130.0)  # a renewal sent at 130 that the database took
    assert lease.may_create(last + 1) and lease.holds_until() == 190.0
    lease.renewed(120.0)  # an older one answering late never moves it back
    assert lease.holds_until() == 190.0
    lease.lost = True
    assert not lease.may_create(130.0)


def test_the_heartbeat_keeps_the_lease_and_hears_when_it_ended(pg_url: str) -> None:
    with Ledger(pg_url) as ledger, Ledger(pg_url) as other:
        add_batch(ledger, "b")
        ledger.plans.upsert_jobs("b", specs(3))
        length = 0.6
        worker = ledger.leases.join("b", length)
        lease = Lease(worker, length, confirmed_at=time.monotonic())
        port = RunLedger(ledger, timeout=5.0)
        heard: list[str] = []

        async def main() -> None:
            with anyio.fail_after(30):  # a hang, not speed
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        keep_lease,
                        port,
                        lease,
                        "b",
                        time.monotonic,
                        lambda: heard.append("lost"),
                        lambda n: heard.append(f"taken over {n}"),
                    )
                    # Several lease lengths: the heartbeat keeps it alive all along.
                    for _ in range(4):
                        await anyio.sleep(length)
                        assert worker in {w.id for w in other.leases.live("b")}
                    # Another worker's create left in flight when its lease ended: in doubt.
                    gone = other.leases.join("b", 60)
                    job = other.queue.take_pending("b", 1)[0]
                    other.moves.begin_submit(job.id)
                    end_lease(other, gone)
                    while not heard:
                        await anyio.sleep(0.05)
                    assert heard == ["taken over 1"]
                    assert ledger.reads.get_job(job.id).state is JobState.IN_DOUBT
                    # This worker's lease ended behind its back (a long partition): it hears so.
                    end_lease(ledger, worker)
                    while "lost" not in heard:
                        await anyio.sleep(0.05)
                    tg.cancel_scope.cancel()

        anyio.run(main)
        port.close()
    assert lease.lost and not lease.may_create(time.monotonic())


def test_a_renewal_that_cannot_get_through_lets_the_lease_age(
    pg_server: PgServer, pg_url: str
) -> None:
    """The ledger's server stops answering (a proxy that hangs): renewals time out, the
    lease is not renewed, and creates stop before it could end."""
    length = 0.6
    with TcpProxy(("127.0.0.1", pg_server.port)) as proxy:
        with Ledger(pg_url) as setup:
            add_batch(setup, "b")
        ledger = Ledger(proxy.url_for(pg_url))
        worker = ledger.leases.join("b", length)
        lease = Lease(worker, length, confirmed_at=time.monotonic())
        port = RunLedger(ledger, timeout=length / 2)
        proxy.hang()

        async def main() -> None:
            with anyio.move_on_after(length * 2):
                await keep_lease(port, lease, "b", time.monotonic, lambda: None, lambda n: None)

        anyio.run(main)
        assert port.down  # the calls did not answer in time
        assert not lease.lost  # it never heard that the lease ended ...
        assert not lease.may_create(time.monotonic())  # ... but no longer trusts it
        proxy.cut()
        port.close()
        ledger.close()


def end_lease(ledger: Ledger, worker: str) -> None:
    """As if ``worker``'s lease had run out."""
    with ledger.engine.write() as tx:
        tx.execute("UPDATE workers SET lease_until = 0 WHERE id = ?", (worker,))


def test_a_create_intent_cut_short_by_the_end_of_the_run_goes_back_to_pending(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run ends (cancelled) while a create intent's commit is under way: the ledger
    took it, its answer never came, nothing was sent.  The intent is kept, and the next
    run makes the job pending again: not in doubt, as a create that may be billed."""
    monkeypatch.chdir(tmp_path)  # where a shared ledger's recovery file goes (state/)

    class Unanswered(RunLedger):
        async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
            result = await super().call(fn, *args, **kwargs)
            if fn == self.moves.begin_submit:
                await anyio.sleep_forever()  # taken, but the answer is lost
            return result

    with Ledger(pg_url) as ledger:
        add_batch(ledger, "b")
        ledger.plans.upsert_jobs("b", specs(1))
        worker = ledger.leases.join("b", 60)
        port = Unanswered(ledger)
        record = Recorder(
            port,
            RenderBook(),
            Budget(),
            SubmitPause(),
            DownloadRetries(),
            time.monotonic,
            random.Random(1),
        )
        record.lease = Lease(worker, 60, confirmed_at=time.monotonic())
        job = ledger.queue.take_pending("b", 1)[0]
        intent = Creates(record).intent(job)

        async def main() -> None:
            with anyio.move_on_after(0.5):
                await intent()

        anyio.run(main)
        port.close()
        assert not intent.sent and ledger.reads.get_job(job.id).state is JobState.SUBMITTING
        assert job.id in record.tally.quarantined  # not tried again this run
        assert "create was not sent" in " ".join(record.tally.failures)
        end_lease(ledger, worker)
    with Ledger(pg_url) as ledger:
        port = RunLedger(ledger)
        assert anyio.run(import_tasks, port, "b", lambda note: None) == 1
        port.close()
        assert ledger.reads.get_job(job.id).state is JobState.PENDING
