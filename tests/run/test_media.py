"""Did I get what I paid for: every download probed, normalised renders flagged, bad files
fetched once more and then failed, never re-created.

Real sockets against the simulator, which serves real H.264 videos of the size the
docs say each request renders (normalisations included).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from PIL import Image
from run_helpers import OPTIONS, SCALE, run_once

from batchvid.cli.main import cli
from batchvid.ledger import Ledger
from batchvid.manifest.plan import load_plan
from batchvid.media.synth import FPS
from batchvid.report import load_report, render
from batchvid.report.gallery import render_html
from batchvid.sim.config import SimConfig
from batchvid.sim.server import serve_simulator
from batchvid.states import JobState as S

pytestmark = pytest.mark.anyio

NORMALISED = "asked 1920x1080, rendered 1280x720 (normalised by the API)"


def sizes_manifest(tmp_path: Path, *, takes: int = 1) -> Path:
    """Three requests the API renders otherwise than asked, two it renders as asked."""
    path = tmp_path / "sizes.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            batch: e2e
            output_dir: out
            repeat: {takes}
            prompts:
              - id: exact-1080
                prompt: a harbour at dawn, wide
                model: doubao-seedance-2-0
                size: 1920x1080       # not offered at 720p: renders 1280x720
                resolution: 720p
                seconds: 4
              - id: pro-ratio
                prompt: a harbour at dawn, pro
                model: doubao-seedance-1-5-pro
                size: "16:9"          # 1.5 Pro renders a ratio at 720p
                resolution: 1080p
                seconds: 6
              - id: pro-portrait
                prompt: a harbour at dawn, portrait
                model: doubao-seedance-1-5-pro
                size: "9:16"
                resolution: 480p
                seconds: 5
              - id: as-asked
                prompt: a harbour at dawn, fast
                model: doubao-seedance-2-0-fast
                size: "9:16"
                resolution: 480p
                seconds: 5
              - id: exact-documented
                prompt: a harbour at dawn, 1.0
                model: doubao-seedance-1-0-pro
                size: 1920x1088
                resolution: 1080p
                seconds: 3
            """
        )
    )
    return path


def jobs_of(tmp_path: Path) -> list[Any]:
    with Ledger(tmp_path / "ledger.db") as ledger:
        return list(ledger.reads.jobs("e2e"))


async def test_every_download_is_probed_and_what_the_api_changed_is_flagged(
    tmp_path: Path,
) -> None:
    plan = load_plan(sizes_manifest(tmp_path))
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=41)) as sim:
        with anyio.fail_after(60):
            report, _ = await run_once(tmp_path, sim, plan)
        tasks = sim.stats()["tasks"]
    assert report.all_done
    jobs = {job.prompt_id: job for job in jobs_of(tmp_path)}
    for job in jobs.values():
        rendered = tasks[job.task_id]["rendered"]
        facts = job.facts
        assert facts is not None, job.prompt_id
        assert facts.size == rendered
        assert facts.duration_s == job.seconds and facts.fps == FPS
        assert facts.codec == "h264" and facts.has_audio is False
        assert job.poster_path and Path(job.poster_path).parent.name == "posters"
        with Image.open(job.poster_path) as poster:
            assert poster.format == "JPEG" and poster.width == 320
    assert jobs["exact-1080"].normalised == NORMALISED
    assert jobs["pro-ratio"].normalised == NORMALISED
    assert jobs["pro-portrait"].normalised == (
        "asked 496x864, rendered 720x1280 (normalised by the API)"
    )
    assert jobs["as-asked"].normalised is None and jobs["exact-documented"].normalised is None
    assert report.normalised == {NORMALISED: 2, jobs["pro-portrait"].normalised: 1}

    # status names them, as text and JSON.
    ledger = str(tmp_path / "ledger.db")
    status = CliRunner().invoke(cli, ["status", "e2e", "--ledger", ledger])
    assert status.exit_code == 0, status.output
    assert "rendered otherwise than asked: 3 videos" in status.output
    assert f"2 x {NORMALISED}" in status.output
    as_json = CliRunner().invoke(cli, ["status", "e2e", "--ledger", ledger, "--json"])
    assert json.loads(as_json.output)["normalised"][NORMALISED] == 2

    # The report: text and Markdown name them; CSV and JSON carry the probed fields.
    with Ledger(tmp_path / "ledger.db", read_only=True) as store:
        data = load_report(store, "e2e")
    text, markdown = render(data, "text"), render(data, "md")
    assert NORMALISED in text and "normalised by the API: 3 videos" in text
    assert "1920x1080" in markdown and "rendered 1280x720" in markdown
    rows = {r["prompt_id"]: r for r in csv.DictReader(io.StringIO(render(data, "csv")))}
    assert rows["exact-1080"]["width"] == "1280" and rows["exact-1080"]["height"] == "720"
    assert rows["exact-1080"]["normalised"] == NORMALISED
    assert rows["as-asked"]["normalised"] == "" and rows["as-asked"]["vcodec"] == "h264"
    records = {r["prompt_id"]: r for r in json.loads(render(data, "json"))}
    assert records["pro-ratio"]["width"] == 1280 and records["pro-ratio"]["duration_s"] == 6.0
    assert records["pro-ratio"]["has_audio"] is False and records["as-asked"]["normalised"] is None

    # The gallery: a flag on each normalised video, a poster on every one.
    html = render_html(data, tmp_path / "report.html", base=tmp_path)
    assert html.count('<span class="flag">') == 3
    assert html.count(f'<span class="flag">{NORMALISED}</span>') == 2
    assert html.count(" poster=") == 5 and html.count('preload="none"') == 5


async def test_an_undecodable_file_is_fetched_once_more_and_then_the_job_fails(
    tmp_path: Path,
) -> None:
    """Every file arrives whole (its length true) but cut before its index: fetched twice,
    then failed ``undecodable``; the task is never created again; no file under a final name."""
    plan = load_plan(sizes_manifest(tmp_path))
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=42, corrupt_rate=1.0)) as sim:
        with anyio.fail_after(60):
            report, _ = await run_once(tmp_path, sim, plan)
        stats = sim.stats()
    jobs = jobs_of(tmp_path)
    assert [job.state for job in jobs] == [S.FAILED] * 5
    assert all(job.error_code == "undecodable" for job in jobs)
    assert all("not a playable video" in (job.error_message or "") for job in jobs)
    assert all(job.bad_downloads == 2 and job.download_errors == 2 for job in jobs)
    assert all(job.attempts == 1 and job.polls == stats["polls"][job.task_id] for job in jobs)
    assert stats["creates"] == 5 and stats["counters"]["corrupt_served"] == 10
    assert report.retries == {}  # failed, not re-created: the default retry policy
    assert not list((tmp_path / "out").glob("*.mp4"))  # nothing under a final name
    # ... but the bytes paid for are kept, as fetched, beside where the video would be.
    kept = sorted((tmp_path / "out").glob("*.mp4.undecodable"))
    assert len(kept) == 5
    assert all(f"kept as {path.name}" in (job.error_message or "") for job, path in zip(
        sorted(jobs, key=lambda j: j.idx), kept, strict=True))  # fmt: skip
    sizes = {task["size_bytes"] * 3 // 5 for task in stats["tasks"].values()}
    assert {path.stat().st_size for path in kept} <= sizes
    assert any("does not decode" in failure for failure in report.failures)


async def test_a_bad_file_once_is_fetched_again_and_kept(tmp_path: Path) -> None:
    plan = load_plan(sizes_manifest(tmp_path))
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=43)) as sim:
        sim.inject(corrupt=1)
        with anyio.fail_after(60):
            report, _ = await run_once(tmp_path, sim, plan)
        stats = sim.stats()
    jobs = jobs_of(tmp_path)
    assert report.all_done and stats["creates"] == 5 and stats["counters"]["corrupt_served"] == 1
    assert sorted(job.bad_downloads for job in jobs) == [0, 0, 0, 0, 1]
    assert all(job.facts is not None for job in jobs)
    bad = next(job for job in jobs if job.bad_downloads)
    # What is kept is the task's whole video, not the cut one fetched first.
    assert bad.sha256 == stats["tasks"][bad.task_id]["sha256"]
    assert hashlib.sha256(Path(bad.file_path).read_bytes()).hexdigest() == bad.sha256
    assert bad.error_code is None and bad.attempts == 1
    assert not list((tmp_path / "out").glob("*.undecodable"))  # the bad copy is gone


async def test_without_probing_files_are_kept_as_they_came(tmp_path: Path) -> None:
    """``run --no-probe``: no decode check, no facts, no posters (and a bad file is kept)."""
    plan = load_plan(sizes_manifest(tmp_path))
    async with serve_simulator(SimConfig(time_scale=SCALE, seed=44)) as sim:
        sim.inject(corrupt=1)
        with anyio.fail_after(60):
            report, _ = await run_once(tmp_path, sim, plan, replace(OPTIONS, probe=False))
    jobs = jobs_of(tmp_path)
    assert report.all_done and report.normalised == {}
    assert all(job.facts is None and job.poster_path is None for job in jobs)
    assert not (tmp_path / "out" / "posters").exists()
