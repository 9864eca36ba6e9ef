"""The contact sheet: every job's poster on the matrix, labelled, failures and
normalised renders marked; written as JPEG or PNG by ``report --format sheet``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from report_ledgers import (
    MATRIX_OUTCOMES,
    Clock,
    add_batch,
    bytes_video,
    drive_all,
    matrix_plan,
    real_video,
)

from batchvid.cli.main import cli
from batchvid.ledger import Ledger
from batchvid.ledger.rows import NewJob
from batchvid.report import ReportData, load_report
from batchvid.report.sheet import MAX_ROWS, TILE_WIDTH, render_sheet, sheet_band, sheet_layout
from batchvid.states import FAILED_STATES, JobState

RED, AMBER = (200, 30, 30), (230, 150, 0)


@pytest.fixture
def matrix_batch(tmp_path: Path) -> ReportData:
    """The shipped matrix example with real videos and posters, some jobs failed, and
    one job the API normalised (``1920x1080`` at 720p renders ``1280x720``)."""
    clock = Clock()
    with Ledger(tmp_path / "ledger.db", clock=clock) as ledger:
        batch = add_batch(ledger, matrix_plan(), tmp_path / "videos")
        odd = NewJob(key="odd", index=49, prompt="a pier", model="doubao-seedance-2-0",
                     size="1920x1080", resolution="720p", seconds=4)  # fmt: skip
        ledger.plans.upsert_jobs(batch, [odd])
        drive_all(ledger, clock, batch, MATRIX_OUTCOMES, real_video(tmp_path / "videos"),
                  probe=True)  # fmt: skip
        return load_report(ledger, batch)


def near(pixel: tuple[int, ...], colour: tuple[int, int, int], slack: int = 40) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(pixel, colour, strict=False))


def test_every_job_has_a_tile_where_the_matrix_puts_it(matrix_batch: ReportData) -> None:
    plan = sheet_layout(matrix_batch)
    jobs = [job for job, _ in plan.tiles]
    assert sorted(j.id for j in jobs) == sorted(j.id for j in matrix_batch.jobs)
    corners = [at for _, at in plan.tiles]
    assert len(set(corners)) == len(corners)  # no two tiles on one spot
    assert all(x + TILE_WIDTH <= plan.width and y + plan.tile_h <= plan.height for x, y in corners)
    # Takes of one combination sit side by side, in one row.
    by_idx = {job.idx: at for job, at in plan.tiles}
    assert by_idx[1][1] == by_idx[2][1] and by_idx[2][0] - by_idx[1][0] == TILE_WIDTH + 8
    headings = [text for text, _, _ in plan.headings]
    assert "model: doubao-seedance-2-0-fast" in headings and "size: 864x496" in headings
    assert any(prompt.startswith("sunrise: ") for prompt, _, _ in plan.rows)


def test_posters_are_drawn_and_failures_and_normalised_renders_are_marked(
    matrix_batch: ReportData, tmp_path: Path
) -> None:
    sheet = render_sheet(matrix_batch, base=tmp_path)
    plan = sheet_layout(matrix_batch)
    assert sheet.size == (plan.width, plan.height)
    failed = [(j, at) for j, at in plan.tiles if j.state in FAILED_STATES]
    done = [(j, at) for j, at in plan.tiles if j.state is JobState.DOWNLOADED]
    assert failed and done
    for _, (x, y) in failed:  # a red outline
        assert near(sheet.getpixel((x + 1, y + plan.tile_h // 2)), RED)  # type: ignore[arg-type]
    for job, (x, y) in done:  # the poster itself: its middle pixel, as in the poster
        with Image.open(job.poster_path or "") as opened:
            poster = opened.convert("RGB")
        middle = poster.getpixel((poster.width // 2, poster.height // 2))
        cx, cy = x + TILE_WIDTH // 2, y + plan.tile_h // 2
        assert near(sheet.getpixel((cx, cy)), middle), job.idx  # type: ignore[arg-type]
    normalised = [(j, at) for j, at in plan.tiles if j.normalised]
    assert [j.key for j, _ in normalised] == ["odd"]
    _, (x, y) = normalised[0]
    assert near(sheet.getpixel((x + TILE_WIDTH - 3, y + plan.tile_h - 3)), AMBER)  # type: ignore[arg-type]
    plain = next(at for j, at in done if not j.normalised)
    assert not near(sheet.getpixel((plain[0] + TILE_WIDTH - 3, plain[1] + plan.tile_h - 3)), AMBER)  # type: ignore[arg-type]


def test_a_missing_poster_is_a_grey_tile_not_an_error(
    matrix_batch: ReportData, tmp_path: Path
) -> None:
    for job in matrix_batch.jobs:
        if job.poster_path:
            Path(job.poster_path).unlink()
    sheet = render_sheet(matrix_batch, base=tmp_path)
    plan = sheet_layout(matrix_batch)
    job, (x, y) = next((j, at) for j, at in plan.tiles if j.state is JobState.DOWNLOADED)
    assert near(sheet.getpixel((x + TILE_WIDTH - 4, y + 4)), (215, 215, 212), 4)  # type: ignore[arg-type]


def test_report_format_sheet_writes_jpeg_or_png_and_refuses_other_names(
    matrix_batch: ReportData, tmp_path: Path
) -> None:
    ledger = str(tmp_path / "ledger.db")
    runner = CliRunner()
    for name, kind in (("sheet.jpg", "JPEG"), ("sheet.PNG", "PNG")):
        out = tmp_path / "out" / name
        result = runner.invoke(
            cli, ["report", "--ledger", ledger, "--format", "sheet", "-o", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert f"wrote {out}" in result.stderr
        with Image.open(out) as image:
            assert image.format == kind and image.width > 4 * TILE_WIDTH
        mask = os.umask(0o022)
        os.umask(mask)
        assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert not list((tmp_path / "out").glob(".*"))  # no scratch file left
    default = runner.invoke(cli, ["report", "--ledger", ledger, "--format", "sheet"])
    assert default.exit_code == 0, default.output
    assert (Path(matrix_batch.batch.output_dir) / "sheet.jpg").is_file()
    wrong = runner.invoke(
        cli, ["report", "--ledger", ledger, "--format", "sheet", "-o", str(tmp_path / "s.gif")]
    )
    assert wrong.exit_code == 2 and "sheet.jpg or sheet.png" in wrong.output
    assert not (tmp_path / "s.gif").exists()


def test_report_format_sheet_to_a_pipe_is_a_jpeg(matrix_batch: ReportData, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batchvid", "report", "--ledger", str(tmp_path / "ledger.db"),
         "--format", "sheet", "-o", "-"],
        capture_output=True, timeout=120, check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.stdout[:3] == b"\xff\xd8\xff"  # a JPEG's first bytes


def test_a_batch_too_tall_for_one_picture_shows_its_first_rows_and_says_so(
    tmp_path: Path,
) -> None:
    clock = Clock()
    long_prompt = "a very long prompt, " * 300  # 6,000 characters: clipped, quickly
    with Ledger(tmp_path / "ledger.db", clock=clock) as ledger:
        batch = add_batch(ledger, "tall", tmp_path / "videos")
        jobs = [
            NewJob(key=f"k{i:04d}", index=i + 1, prompt=f"{long_prompt} {i}", prompt_id=f"p{i}",
                   model="doubao-seedance-2-0-fast")
            for i in range(MAX_ROWS + 10)
        ]  # fmt: skip
        ledger.plans.upsert_jobs(batch, jobs)
        drive_all(ledger, clock, batch, {}, bytes_video(tmp_path / "videos"))
        data = load_report(ledger, batch)
    plan = sheet_layout(data)
    assert len(plan.rows) == MAX_ROWS and len(plan.tiles) == MAX_ROWS
    assert plan.footer.startswith("… 10 more rows")
    sheet = render_sheet(data, base=tmp_path)
    assert sheet.size == (plan.width, plan.height) and plan.height < 65_535


def test_a_video_of_another_length_is_banded_with_its_length(
    matrix_batch: ReportData, tmp_path: Path
) -> None:
    job = next(j for j in matrix_batch.jobs if j.state is JobState.DOWNLOADED)
    asked = job.facts
    assert asked is not None
    odd = job._replace(
        duration_s=3.0, normalised="asked 5 s, rendered 3.0 s (normalised by the API)"
    )
    band = sheet_band(odd)
    assert band == f"rendered 3.0 s, asked {job.seconds} s"
    resized = job._replace(width=1280, height=720, normalised="asked ..., rendered 1280x720")
    assert sheet_band(resized) == "rendered 1280x720"
    assert sheet_band(job) is None
