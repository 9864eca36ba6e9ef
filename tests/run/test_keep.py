"""Videos kept in a store, end to end: the simulator, a real S3 server (moto), a real ledger.

Assertions are on the bucket's objects (each written once, never replaced), the
ledger's rows, the simulator's counters (creates, CDN downloads) and the spool.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from run_helpers import OPTIONS, matrix_manifest
from s3_server import S3Server

from batchvid.errors import LedgerFull, OutputError
from batchvid.ledger import Ledger
from batchvid.manifest.plan import load_plan
from batchvid.outputs import S3Outputs, object_name
from batchvid.run.batch import Endpoint, prepare, run_batch, spool_for
from batchvid.run.options import RunReport
from batchvid.sim.server import Simulator

pytestmark = pytest.mark.anyio


async def run_to(
    tmp_path: Path, sim: Simulator, output: str, *, batch: str = "e2e", prompts: int = 2
) -> RunReport:
    """One run of a ``prompts`` x 10-job batch whose videos go to ``output``."""
    plan = load_plan(matrix_manifest(tmp_path, prompts=prompts, batch=batch))
    endpoint = Endpoint(sim.base_url, sim.api_key)
    with Ledger(tmp_path / "ledger.db") as ledger:
        prepared = prepare(ledger, plan, endpoint, output=output)
        assert prepared.store is not None and prepared.output_dir == spool_for(ledger.target, batch)
        return await run_batch(ledger, prepared, endpoint, OPTIONS)


def rows(tmp_path: Path, batch: str = "e2e") -> list[dict[str, Any]]:
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.row_factory = sqlite3.Row
        found = [
            dict(r)
            for r in conn.execute("SELECT * FROM jobs WHERE batch = ? ORDER BY idx", (batch,))
        ]
    conn.close()
    return found


def spooled(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]


async def test_every_video_goes_to_the_store_once_with_its_proof(
    tmp_path: Path, sim: Simulator, s3_server: S3Server, s3_bucket: str
) -> None:
    report = await run_to(tmp_path, sim, f"s3://{s3_bucket}/night")
    assert report.all_done and report.output_dir == f"s3://{s3_bucket}/night"
    objects = s3_server.objects(s3_bucket)
    jobs = rows(tmp_path)
    assert len(jobs) == 20 and len(objects) == 40  # a video and a poster each
    tasks = sim.stats()["tasks"]
    for job in jobs:
        key = job["file_path"].removeprefix(f"s3://{s3_bucket}/")
        body = s3_server.body(s3_bucket, key)
        assert hashlib.sha256(body).hexdigest() == job["sha256"] == tasks[job["task_id"]]["sha256"]
        assert objects[key]["etag"] == job["object_etag"]
        assert objects[key]["meta"]["batchvid-task"] == job["task_id"]
        poster = job["poster_path"].removeprefix(f"s3://{s3_bucket}/")
        assert poster.startswith("night/posters/") and poster in objects
        assert job["width"] is not None  # probed: the facts are in the ledger
    assert spooled(tmp_path) == []  # nothing left in the spool
    assert sim.stats()["counters"]["cdn_requests"] == 20


async def test_a_crash_between_upload_and_record_is_recorded_next_run_without_a_download(
    tmp_path: Path,
    sim: Simulator,
    s3_server: S3Server,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ledger refuses the record after the upload (as a crash there would leave
    it): the next run finds each object, checks it is its task's and records it."""
    from batchvid.ledger.transitions import TaskMoves as Transitions

    real = Transitions.record_downloaded
    recorded = 0

    def full_after_five(self: Transitions, *args: Any, **kwargs: Any) -> None:
        nonlocal recorded
        if recorded >= 5:
            raise LedgerFull("the disk holding the ledger is full (simulated)")
        recorded += 1
        real(self, *args, **kwargs)

    monkeypatch.setattr(Transitions, "record_downloaded", full_after_five)
    first = await run_to(tmp_path, sim, f"s3://{s3_bucket}/night")
    assert first.halted and "full" in first.halted
    before = s3_server.objects(s3_bucket)
    uploaded = {k for k in before if not k.startswith("night/posters/")}
    unrecorded = [j for j in rows(tmp_path) if j["state"] == "completed"]
    assert len(uploaded) > 5 and unrecorded  # some videos are in the store, not the ledger
    downloads = sim.stats()["counters"]["cdn_requests"]

    monkeypatch.setattr(Transitions, "record_downloaded", real)
    second = await run_to(tmp_path, sim, f"s3://{s3_bucket}/night")
    assert second.all_done
    after = s3_server.objects(s3_bucket)
    assert {k: v["etag"] for k, v in after.items() if k in before} == {
        k: v["etag"] for k, v in before.items()
    }  # nothing replaced
    videos = {k for k in after if not k.startswith("night/posters/")}
    assert len(videos) == 20
    stats = sim.stats()
    # Only the videos that never reached the store were fetched again.
    assert stats["counters"]["cdn_requests"] - downloads == 20 - len(uploaded)
    assert stats["creates"] == 20 and stats["duplicate_creates"] == 0
    for job in rows(tmp_path):
        key = job["file_path"].removeprefix(f"s3://{s3_bucket}/")
        assert after[key]["etag"] == job["object_etag"]
        assert after[key]["meta"]["batchvid-sha256"] == job["sha256"]
        assert job["width"] is not None  # the facts came back from the object's metadata


async def test_two_batches_on_one_prefix_replace_nothing(
    tmp_path: Path, sim: Simulator, s3_server: S3Server, s3_bucket: str
) -> None:
    """The same prompts in two batches give the same file names: the second batch's
    videos take the names with their task ids; no object is written twice."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    await run_to(one, sim, f"s3://{s3_bucket}/shared", batch="first")
    before = s3_server.objects(s3_bucket)
    await run_to(two, sim, f"s3://{s3_bucket}/shared", batch="second")
    after = s3_server.objects(s3_bucket)
    assert {k: after[k]["etag"] for k in before} == {k: v["etag"] for k, v in before.items()}
    first, second = rows(one, "first"), rows(two, "second")
    paths = {j["file_path"] for j in first} | {j["file_path"] for j in second}
    assert len(paths) == 40  # every video its own object
    for mine, theirs in zip(second, first, strict=True):  # the same job, batch by batch
        name = PurePosixPath(theirs["file_path"]).name
        assert mine["file_path"] == (
            f"s3://{s3_bucket}/shared/{object_name(name, mine['task_id'], taken=True)}"
        )
        key = mine["file_path"].removeprefix(f"s3://{s3_bucket}/")
        assert after[key]["meta"]["batchvid-task"] == mine["task_id"]


async def test_a_store_that_stops_answering_pauses_downloads_then_stops_the_run(
    tmp_path: Path,
    sim: Simulator,
    s3_server: S3Server,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store goes away after the run's check: downloads wait, then the run stops,
    nothing marked failed and nothing left in the spool; the next run keeps them all."""

    def answered(self: S3Outputs) -> None:
        return None

    monkeypatch.setattr(S3Outputs, "check", answered)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    first = await run_to(tmp_path, sim, f"s3://{s3_bucket}/night")
    assert first.halted and "has not answered" in first.halted
    states = {j["state"] for j in rows(tmp_path)}
    assert states == {"completed"}  # rendered and paid; none failed
    assert spooled(tmp_path) == []
    assert s3_server.objects(s3_bucket) == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    second = await run_to(tmp_path, sim, f"s3://{s3_bucket}/night")
    assert second.all_done and len(s3_server.objects(s3_bucket)) == 40
    assert sim.stats()["duplicate_creates"] == 0


async def test_a_bucket_that_does_not_exist_stops_the_run_before_anything_is_paid(
    tmp_path: Path, sim: Simulator, s3_bucket: str
) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        await run_to(tmp_path, sim, "s3://bv-nobody-made-this/night")
    assert sim.stats()["creates"] == 0
    assert {j["state"] for j in rows(tmp_path)} == {"pending"}


async def test_a_store_that_refuses_mid_run_stops_it_rather_than_buy_videos_it_cannot_keep(
    tmp_path: Path, sim: Simulator, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket is gone after the run's check (deleted, or the key's rights taken
    away): the first video that cannot be kept stops the run, nothing marked failed,
    nothing left in the spool."""

    def answered(self: S3Outputs) -> None:
        return None

    monkeypatch.setattr(S3Outputs, "check", answered)
    report = await run_to(tmp_path, sim, "s3://bv-gone-after-the-check/night")
    assert report.halted and "does not exist" in report.halted
    assert "failed" not in {j["state"] for j in rows(tmp_path)}
    assert not report.counts.get("downloaded")
    assert spooled(tmp_path) == []
