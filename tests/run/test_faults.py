"""A night with faults ends well: every run ends, no paid task or video is lost or overwritten.

Real sockets against the simulator and its fault knobs; a full disk is an
ENOSPC-raising writer (mounting a small tmpfs needs privileges CI may not have).
"""

from __future__ import annotations

import errno
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from run_helpers import OPTIONS, SCALE, ledger_jobs, matrix_manifest, run_once

from batchvid.errors import LedgerError, LedgerFull
from batchvid.ledger import Ledger
from batchvid.ledger.reads import Reads
from batchvid.ledger.submits import SubmitMoves
from batchvid.manifest.plan import load_plan
from batchvid.remote import download
from batchvid.run.recovery import recovery_path
from batchvid.sim.config import SimConfig
from batchvid.sim.server import serve_simulator
from batchvid.states import JobState as S

pytestmark = pytest.mark.anyio


def one_prompt(tmp_path: Path) -> Any:
    return load_plan(matrix_manifest(tmp_path, prompts=1))  # 10 jobs


def requests_of(stats: dict[str, Any], path_part: str) -> int:
    return sum(1 for r in stats["requests"] if path_part in r["path"])


# -- 1. a run always ends ------------------------------------------------------------------


@pytest.mark.parametrize(
    "knobs",
    [
        {"url_ttl": 0.0, "content": False},  # every signed URL already expired, no /content
        {"p_cdn_error": 1.0, "content": False},  # the CDN answering 5xx, no /content
    ],
    ids=["expired", "cdn-5xx"],
)
async def test_downloads_that_cannot_succeed_end_the_run_instead_of_hanging_it(
    tmp_path: Path, knobs: dict[str, Any]
) -> None:
    """More jobs than slots: jobs whose tries are spent never crowd out the others."""
    options = replace(OPTIONS, concurrency=2, download_attempts=2)
    config = SimConfig(time_scale=SCALE, seed=8, **knobs)
    async with serve_simulator(config) as sim:
        with anyio.fail_after(60):
            report, _ = await run_once(tmp_path, sim, one_prompt(tmp_path), options)
    assert report.counts["completed"] == 10 and not report.all_done and not report.interrupted
    jobs = ledger_jobs(tmp_path)
    assert {j.download_errors for j in jobs} == {2}  # every job had its tries
    assert {j.error_code for j in jobs} == {"download"}  # nothing marked failed


async def test_jobs_set_aside_never_crowd_out_the_rest_of_the_queue(tmp_path: Path) -> None:
    """A reference image spoilt after planning: those jobs cannot be sent this run, stay
    pending, and the ones after them are still submitted; the run ends."""
    png = tmp_path / "ref.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    spoilt = "\n".join(f"  - {{prompt: spoilt {i}, input_reference: ref.png}}" for i in range(4))
    fine = "\n".join(f"  - plain {i}" for i in range(4))
    manifest = tmp_path / "batch.yaml"
    manifest.write_text(
        "version: 1\nbatch: e2e\noutput_dir: out\n"
        "defaults: {model: doubao-seedance-2-0-fast, seconds: 5, resolution: 480p}\n"
        f"prompts:\n{spoilt}\n{fine}\n"
    )
    plan = load_plan(manifest)
    png.write_bytes(b"not an image any more")
    options = replace(OPTIONS, concurrency=2)
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=16)) as sim:
        with anyio.fail_after(60):
            report, _ = await run_once(tmp_path, sim, plan, options)
    assert report.counts["pending"] == 4 and report.counts["downloaded"] == 4
    assert sum("not submitted: reference image 1" in f for f in report.failures) == 4


@pytest.mark.parametrize(
    "knobs", [{"url_ttl": 0.0}, {"p_cdn_error": 1.0}], ids=["expired", "cdn-5xx"]
)
async def test_when_the_signed_url_cannot_be_used_content_serves_the_video(
    tmp_path: Path, knobs: dict[str, Any]
) -> None:
    config = SimConfig(time_scale=SCALE, seed=9, **knobs)
    async with serve_simulator(config) as sim:
        report, _ = await run_once(tmp_path, sim, one_prompt(tmp_path))
        stats = sim.stats()
    assert report.all_done and report.counts["downloaded"] == 10
    for job in ledger_jobs(tmp_path):
        assert stats["tasks"][job.task_id]["sha256"] == job.sha256
    assert stats["counters"]["content_requests"] >= 10
    # One refresh at most before /content, not twenty CDN requests and fifteen polls a job.
    assert stats["counters"].get("cdn_requests", 0) <= 2 * 10 * 4  # 2 URLs, 4 transfer tries
    assert stats["counters"].get("cdn_authorization_headers", 0) == 0  # no key to the CDN


def enospc_writer(monkeypatch: pytest.MonkeyPatch, full: list[bool]) -> None:
    """Video writes fail with ENOSPC while ``full[0]``; the ledger's disk is another one."""
    real = download._stream_into

    async def write(response: Any, part: Path, plan: Any) -> int:
        if full[0]:
            part.write_bytes(b"")  # the file opens, the first write fails
            raise download._disk_error(OSError(errno.ENOSPC, "No space left on device"))
        return await real(response, part, plan)

    monkeypatch.setattr(download, "_stream_into", write)


async def test_a_full_disk_pauses_downloads_and_they_resume_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = [True]
    enospc_writer(monkeypatch, full)

    async def free_space_later() -> None:
        await anyio.sleep(1.0)
        full[0] = False

    options = replace(OPTIONS, concurrency=2)
    config = SimConfig(time_scale=SCALE, seed=10)
    async with serve_simulator(config) as sim, anyio.create_task_group() as tg:
        tg.start_soon(free_space_later)
        with anyio.fail_after(60):
            report, _ = await run_once(tmp_path, sim, one_prompt(tmp_path), options)
    assert report.all_done and report.counts["downloaded"] == 10
    assert any("disk holding the videos is full" in f for f in report.failures)
    assert {j.download_errors for j in ledger_jobs(tmp_path)} == {0}  # a full disk is no try
    assert not list((tmp_path / "out").glob("*.part.json"))  # no empty notes left behind


async def test_a_disk_that_stays_full_stops_the_run_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enospc_writer(monkeypatch, [True])
    options = replace(OPTIONS, concurrency=2, max_active=4, time_scale=0.0005)  # 0.3 s patience
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=11)) as sim:
        with anyio.fail_after(60):
            report, _ = await run_once(tmp_path, sim, one_prompt(tmp_path), options)
        creates = sim.stats()["creates"]
    assert report.halted and "disk holding the videos has been full" in report.halted
    assert not report.all_done and not report.interrupted
    jobs = ledger_jobs(tmp_path)
    assert {j.state for j in jobs} <= {S.COMPLETED, S.PENDING, S.QUEUED, S.IN_PROGRESS}
    assert creates < 10  # no more videos bought while none can be kept


# -- 3. a paid task id is never lost --------------------------------------------------------


async def test_a_task_id_the_ledger_cannot_take_is_kept_and_recorded_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = SubmitMoves.record_submitted
    calls = [0]

    def failing(self: SubmitMoves, *args: Any, **kwargs: Any) -> S:
        calls[0] += 1
        if calls[0] == 3 and not kwargs.get("recovered"):
            raise LedgerFull("ledger: its disk is full (database or disk is full)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SubmitMoves, "record_submitted", failing)
    plan = one_prompt(tmp_path)
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=12)) as sim:
        report, _ = await run_once(tmp_path, sim, plan)
        assert report.halted and "could not record task" in report.halted
        lines = recovery_path(tmp_path / "ledger.db").read_text().splitlines()
        kept = [json.loads(line) for line in lines]
        assert len(kept) == 1 and kept[0]["task_id"] in sim.stats()["tasks"]
        with Ledger(tmp_path / "ledger.db") as ledger:
            assert ledger.reads.get_job(kept[0]["job_id"]).state is S.SUBMITTING
        again, _ = await run_once(tmp_path, sim, plan)
        stats = sim.stats()
    assert again.all_done and again.counts["downloaded"] == 10
    job = next(j for j in ledger_jobs(tmp_path) if j.id == kept[0]["job_id"])
    assert job.task_id == kept[0]["task_id"]  # the paid task, not a new one
    assert stats["creates"] == 10 and stats["duplicate_creates"] == 0
    assert not recovery_path(tmp_path / "ledger.db").exists()


async def test_no_ledger_read_stands_between_a_create_and_its_task_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The render history cannot be read (a damaged index page): no create is paid for
    without its task id recorded, and the jobs it stopped are still pending."""
    real = Reads.render_samples
    calls = [0]

    def damaged(self: Reads, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] % 2:
            raise LedgerError("ledger: database disk image is malformed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Reads, "render_samples", damaged)
    options = replace(OPTIONS, concurrency=4)
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=17)) as sim:
        report, _ = await run_once(tmp_path, sim, one_prompt(tmp_path), options)
        stats = sim.stats()
    jobs = ledger_jobs(tmp_path)
    recorded = {j.task_id for j in jobs if j.task_id}
    assert calls[0] >= 2 and recorded == set(stats["tasks"])  # every paid task is in the ledger
    assert {j.state for j in jobs} <= {S.DOWNLOADED, S.PENDING}  # nothing in doubt
    assert report.counts["downloaded"] == len(recorded) > 0


def damage_an_index(path: Path) -> None:
    """Overwrite one index page of the ledger with garbage (a bad sector, say)."""
    with Ledger(path) as ledger:
        page = ledger.engine._conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'jobs_batch_state'"
        ).fetchone()[0]
        size = ledger.engine._conn.execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as fh:
        fh.seek((page - 1) * size)
        fh.write(b"\xde\xad\xbe\xef" * (size // 4))


async def test_a_damaged_ledger_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    from batchvid.run.batch import Endpoint, run_manifest

    path = tmp_path / "ledger.db"
    manifest = matrix_manifest(tmp_path, prompts=1)
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=13)) as sim:
        endpoint = Endpoint(sim.base_url, sim.api_key)
        first = await run_manifest(manifest, ledger_path=path, endpoint=endpoint, options=OPTIONS)
        assert first.all_done
        manifest.write_text(manifest.read_text().replace("seconds: 5", "seconds: 6"))
        damage_an_index(path)
        with pytest.raises(LedgerError, match="is damaged"):
            await run_manifest(manifest, ledger_path=path, endpoint=endpoint, options=OPTIONS)
        assert sim.stats()["creates"] == 10  # nothing more was sent


# -- 4. no paid video is ever written over --------------------------------------------------


async def test_an_edited_manifest_and_a_second_batch_keep_every_video(tmp_path: Path) -> None:
    """seconds 5, then 10 (same index, prompt and size), then a second batch in the same
    folder: one distinct file per job, each matching its sha256."""
    out = tmp_path / "out"
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=14)) as sim:
        five = matrix_manifest(tmp_path, prompts=1)
        await run_once(tmp_path, sim, load_plan(five))
        ten = matrix_manifest(tmp_path, prompts=1)
        ten.write_text(ten.read_text().replace("seconds: 5", "seconds: 10"))
        await run_once(tmp_path, sim, load_plan(ten))
        other = tmp_path / "other"
        other.mkdir()
        second = matrix_manifest(other, prompts=1)
        second.write_text(
            second.read_text()
            .replace("batch: e2e", "batch: e2e-copy")
            .replace("output_dir: out", f"output_dir: {out}")
        )
        report, _ = await run_once(tmp_path, sim, load_plan(second))
        assert report.all_done
    with Ledger(tmp_path / "ledger.db") as ledger:
        jobs = [*ledger.reads.jobs("e2e"), *ledger.reads.jobs("e2e-copy")]
    assert len(jobs) == 30 and {j.state for j in jobs} == {S.DOWNLOADED}
    assert len({j.file_path for j in jobs}) == 30
    for job in jobs:
        assert hashlib.sha256(Path(job.file_path).read_bytes()).hexdigest() == job.sha256
    assert len(list(out.glob("*.mp4"))) == 30


# -- 7. smaller ------------------------------------------------------------------------------


async def test_another_writer_holding_the_ledger_pauses_the_run_and_sets_no_job_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchvid.errors import LedgerBusy
    from batchvid.run.record import Recorder

    real = Recorder.polled
    busy = [3]

    async def sometimes_locked(self: Recorder, *args: Any) -> None:
        if busy[0] > 0:
            busy[0] -= 1
            raise LedgerBusy("ledger: another program is writing it (database is locked)")
        await real(self, *args)

    monkeypatch.setattr(Recorder, "polled", sometimes_locked)
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=15)) as sim:
        report, _ = await run_once(tmp_path, sim, one_prompt(tmp_path))
    assert report.all_done and report.counts["downloaded"] == 10
    assert any("database is locked" in f for f in report.failures)
    assert not any("stopped for this run" in f for f in report.failures)  # nobody set aside
