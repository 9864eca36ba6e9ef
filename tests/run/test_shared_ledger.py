"""Many workers, one batch, on a real PostgreSQL ledger: kills, a partition, shared limits.

Every worker is a real ``batchvid run`` process (see ``tests/fleet.py``); the
simulator runs on a thread, the database is the session's PostgreSQL server.
Assertions are on the simulator's own records (creates, duplicates, 429s,
tasks rendering at once, requests in any window, who sent them), the
ledger's rows and the files on disk; never on how long anything took.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet import Fleet, every_video_once, fleet_manifest, outcome
from pg_server import PgServer
from s3_server import S3Server
from tcp_proxy import TcpProxy

from batchvid.sim.config import SimConfig
from batchvid.sim.server import Simulator, SimulatorThread

#: Renders of 2-4 s; the workers' waits on the same clock, and their lease 5 s.
SCALE = 0.05
LEASE_S = 100.0
LEASE = LEASE_S * SCALE
WINDOW = 60.0 * SCALE


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    knobs = getattr(request, "param", {})
    with SimulatorThread(SimConfig(time_scale=SCALE, seed=23, **knobs)) as sim:
        yield sim


#: Where to stop a worker: what it holds then, and the simulator knob that makes the step long.
STEPS = {
    "between claim and create": (["pending"], {}),
    "between create and task id": (["submitting"], {"create_delay": 2.0}),
    "while polling": (["queued", "in_progress"], {"poll_delay": 1.0}),
    "mid-download": (["completed"], {"cdn_delay": 2.0}),
}


@pytest.mark.parametrize(
    ("held", "simulator"),
    [STEPS[name] for name in STEPS],
    ids=list(STEPS),
    indirect=["simulator"],
)
def test_a_worker_killed_at_any_step_is_taken_over_and_nothing_is_created_twice(
    tmp_path: Path, pg_url: str, simulator: Simulator, held: list[str]
) -> None:
    # A slow limiter keeps jobs claimed while they wait for it (the first step).
    limits = "rate_per_minute: 8, concurrency: 4, max_active_tasks: 8"
    manifest = fleet_manifest(tmp_path, prompts=1, styles=2, limits=limits)  # 20 jobs
    fleet = Fleet(manifest, pg_url, simulator, SCALE, LEASE_S)
    doomed, survivor = fleet.start(), fleet.start()
    fleet.wait_for(f"the first worker holding a {held} job", lambda: fleet.holds(doomed, held))
    doomed.kill()
    code = survivor.wait()
    states = fleet.states()
    seen = outcome(simulator, tmp_path / "out", WINDOW)
    assert seen.duplicates == 0
    in_doubt = states.get("in_doubt", 0)
    if held == ["submitting"]:  # a create left in flight: in doubt, never resent
        assert in_doubt >= 1
    # At any other step the doomed worker may still have had a create of another job in
    # flight when it died (its claims are many): that job, and only such, is in doubt.
    assert code == (1 if in_doubt else 0), survivor.output()
    assert states.get("downloaded", 0) + in_doubt == 20
    assert 20 - in_doubt <= seen.creates <= 20  # a create in doubt may have been made, or not
    assert all(f":{doomed.pid}:" in (sender or "") for sender in doubted_senders(fleet))
    every_video_once(fleet, tmp_path / "out")
    assert fleet.query("SELECT count(*) FROM jobs WHERE claimed_by IS NOT NULL")[0][0] == 0


def doubted_senders(fleet: Fleet) -> list[str | None]:
    """Who made the intent of each in-doubt job (its last; a job may have several)."""
    found = fleet.query(
        """SELECT e.detail_json::json->>'worker' FROM jobs j JOIN events e
        ON e.id = (SELECT max(id) FROM events WHERE job_id = j.id AND to_state = 'submitting')
        WHERE j.state = 'in_doubt'"""
    )
    return [sender for (sender,) in found]


@pytest.mark.parametrize("simulator", [{"rate_limit": 12, "rate_window": WINDOW}], indirect=True)
def test_three_workers_one_killed_hold_every_limit_in_total(
    tmp_path: Path, pg_url: str, simulator: Simulator
) -> None:
    """The acceptance: three workers, one killed mid-batch; nothing created twice, the rate
    (enforced by the simulator) and the active-task cap held over all of them together,
    and every video once."""
    limits = "rate_per_minute: 12, concurrency: 6, max_active_tasks: 6"
    manifest = fleet_manifest(tmp_path, prompts=2, styles=2, limits=limits)  # 40 jobs
    fleet = Fleet(manifest, pg_url, simulator, SCALE, LEASE_S)
    first, *others = (fleet.start() for _ in range(3))
    fleet.wait_for(
        "the first worker holding a live task",
        lambda: fleet.holds(first, ["submitting", "queued", "in_progress", "completed"]),
    )
    first.kill()
    codes = [w.wait() for w in others]
    seen = outcome(simulator, tmp_path / "out", WINDOW)
    states = fleet.states()
    assert seen.duplicates == 0 and seen.rate_limited == 0
    assert seen.most_in_window <= 12
    assert seen.most_rendering <= 6
    assert states.get("downloaded", 0) + states.get("in_doubt", 0) == 40
    assert set(codes) <= {0, 1} and (codes == [0, 0]) == ("in_doubt" not in states)
    every_video_once(fleet, tmp_path / "out")


def test_a_worker_cut_off_from_the_ledger_stops_creating_before_others_take_over(
    tmp_path: Path, pg_server: PgServer, pg_url: str
) -> None:
    """The first worker reaches the database through a proxy, which then hangs: every
    byte stops, no connection closes.  No create leaves it once its lease could have
    ended (each task the simulator made after then was sent, as the ledger's events
    say, by the other worker); the other takes its jobs over; it ends on its own."""
    limits = "rate_per_minute: 30, concurrency: 4, max_active_tasks: 6"
    manifest = fleet_manifest(tmp_path, prompts=1, styles=2, limits=limits)
    with (
        SimulatorThread(SimConfig(time_scale=SCALE, seed=29)) as sim,
        TcpProxy(("127.0.0.1", pg_server.port)) as db_proxy,
    ):
        fleet = Fleet(manifest, pg_url, sim, SCALE, LEASE_S)
        cut_off = fleet.start(ledger=db_proxy.url_for(pg_url))
        fleet.wait_for("the first worker's first creates", lambda: sim.stats()["creates"] >= 3)
        db_proxy.hang()
        hung_at = sim.state.clock()
        other = fleet.start()
        assert other.wait() in (0, 1), other.output()
        assert cut_off.wait() != 0  # it stopped on its own: the ledger was out of reach
        said = cut_off.output()
        # Its paid task ids it could not record are in its recovery file: run again from
        # the same folder, it records them, and their videos are fetched, not bought again.
        again = fleet.start()
        assert again.wait() == 0, again.output()
        stats = sim.stats()
    senders = dict(
        fleet.query(
            """SELECT j.task_id, e.detail_json::json->>'worker' FROM jobs j JOIN events e
            ON e.id = (SELECT max(id) FROM events WHERE job_id = j.id AND to_state = 'submitting')
            WHERE j.task_id IS NOT NULL"""  # the intent its task answered: the job's last
        )
    )
    late = [task for task, t in stats["tasks"].items() if t["created_t"] > hung_at + LEASE]
    assert late  # the other worker went on creating ...
    assert all(f":{other.pid}:" in str(senders.get(task)) for task in late)  # ... only it
    assert stats["duplicate_creates"] == 0
    recorded = fleet.query("SELECT task_id FROM jobs WHERE state = 'downloaded'")
    assert {t for (t,) in recorded} == set(stats["tasks"])  # every paid task, its video
    assert "stopped early" in said and "kept in state/" in said, said
    every_video_once(fleet, tmp_path / "out")


def test_three_workers_one_bucket_one_killed_keep_every_video_in_the_store_once(
    tmp_path: Path, pg_url: str, simulator: Simulator, s3_server: S3Server, s3_bucket: str
) -> None:
    """Issue 20's acceptance: three workers on one PostgreSQL ledger and one bucket, one
    killed mid-batch; nothing created twice, every video in the store once, and every
    object the ledger names is its job's (task, sha256, ETag)."""
    limits = "rate_per_minute: 600, concurrency: 4, max_active_tasks: 8"
    manifest = fleet_manifest(tmp_path, prompts=1, styles=2, limits=limits)  # 20 jobs
    out = f"s3://{s3_bucket}/fleet"
    fleet = Fleet(manifest, pg_url, simulator, SCALE, LEASE_S, extra=("--output-dir", out))
    first, *others = (fleet.start() for _ in range(3))
    fleet.wait_for(
        "the first worker holding a live task",
        lambda: fleet.holds(first, ["queued", "in_progress", "completed"]),
    )
    first.kill()
    codes = [w.wait() for w in others]
    stats = simulator.stats()
    states = fleet.states()
    assert stats["duplicate_creates"] == 0
    assert set(codes) <= {0, 1} and states.get("downloaded", 0) + states.get("in_doubt", 0) == 20
    objects = s3_server.objects(s3_bucket)
    videos = {k: o for k, o in objects.items() if not k.startswith("fleet/posters/")}
    rows = fleet.query(
        "SELECT task_id, file_path, sha256, object_etag FROM jobs WHERE state = 'downloaded'"
    )
    assert len(videos) == len(rows)  # every video once: no object without its row
    for task, uri, sha256, etag in rows:
        video = videos[uri.removeprefix(f"s3://{s3_bucket}/")]
        assert video["meta"]["batchvid-task"] == task and video["etag"] == etag
        assert video["meta"]["batchvid-sha256"] == sha256 == stats["tasks"][task]["sha256"]
