"""Reports: figures against the ledger, every format, escaping, the gallery's layout, the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import statistics
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_ledgers import (
    MATRIX_OUTCOMES,
    T0,
    Clock,
    Outcome,
    add_batch,
    bytes_video,
    drive,
    drive_all,
    matrix_plan,
)

from batchvid.cli.report import report
from batchvid.ledger import Ledger
from batchvid.ledger.rows import JobRow, NewJob
from batchvid.report.data import (
    CSV_COLUMNS,
    FORMATS,
    ReportData,
    build_report,
    load_report,
    percentile,
)
from batchvid.report.formats import (
    FAILURE_GROUPS_SHOWN,
    md,
    render,
    render_csv,
    render_json,
    render_markdown,
)
from batchvid.report.formats import render_text as text_of
from batchvid.report.gallery import PRELOAD_LIMIT, gallery_layout, prompt_template, render_html
from batchvid.run.render_times import RenderSample
from batchvid.states import JobState

S = JobState
XSS = "<script>alert(1)</script>"
BATCH = "coastal-lookbook"
FAST, PRO = "doubao-seedance-2-0-fast", "doubao-seedance-1-5-pro"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def matrix_ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The 48-job matrix example, finished with failures, in doubt, stalled and undownloaded.

    Built once per module (hundreds of fsynced transitions); each test gets a copy.
    Returns the file and the clock's time when it was done.
    """
    base = tmp_path_factory.mktemp("matrix")
    clock = Clock()
    with Ledger(base / "ledger.db", clock=clock) as ledger:
        add_batch(ledger, matrix_plan(), base / "videos")
        drive_all(ledger, clock, BATCH, MATRIX_OUTCOMES, bytes_video(base / "videos"))
    return base / "ledger.db", clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock, request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """An empty ledger; a copy of the matrix example's when the test asks for ``finished``."""
    path = tmp_path / "state" / "ledger.db"
    if "finished" in request.fixturenames:
        source, clock.t = request.getfixturevalue("matrix_ledger")
        path.parent.mkdir(parents=True)
        shutil.copyfile(source, path)
    with Ledger(path, clock=clock) as opened:
        yield opened


@pytest.fixture
def finished(ledger: Ledger, clock: Clock) -> ReportData:
    """The report of the matrix example (see ``matrix_ledger``)."""
    return load_report(ledger, BATCH, now=clock())


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def oracle(values: list[float], q: int) -> float:
    """An independent percentile: the stdlib's inclusive quantiles (linear interpolation)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# -- figures ------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    values = [float(v) for v in range(10, 101, 10)]  # 10 .. 100
    assert percentile(values, 50) == pytest.approx(55.0)
    assert percentile(values, 95) == pytest.approx(95.5)
    assert percentile(list(reversed(values)), 0) == 10.0
    assert percentile(values, 100) == 100.0
    for q in (5, 50, 95):
        assert percentile(values, q) == pytest.approx(oracle(values, q))


def test_report_figures_match_the_ledger(finished: ReportData, ledger: Ledger) -> None:
    counts = ledger.reads.counts(BATCH)
    assert finished.counts == counts
    assert finished.total == 48 == sum(counts.values())
    assert counts[S.FAILED] == 5 and counts[S.DOWNLOADED] == 39
    assert finished.cost_usd == pytest.approx(ledger.queue.committed_cost(BATCH))
    plan = matrix_plan()
    assert finished.planned_cost_usd == pytest.approx(plan.totals.cost_usd)
    assert finished.planned_seconds == plan.totals.output_seconds
    rendered = [j for j in ledger.reads.jobs(BATCH) if j.state in (S.DOWNLOADED, S.COMPLETED)]
    assert finished.output_seconds == sum(j.seconds for j in rendered)
    for model in finished.models:
        jobs = [j for j in ledger.reads.jobs(BATCH) if j.model == model.model]
        # the fixture's render times: 30 + 5 * idx unless the outcome says otherwise
        times = [
            MATRIX_OUTCOMES[j.idx].render if j.idx in MATRIX_OUTCOMES else 30.0 + 5 * j.idx
            for j in jobs
            if j.state in (S.DOWNLOADED, S.COMPLETED)
        ]
        assert model.jobs == len(jobs) == 24
        assert model.rendered == len(times)
        assert model.render_p50 == pytest.approx(oracle(times, 50))
        assert model.render_p95 == pytest.approx(oracle(times, 95))
        failed = sum(1 for j in jobs if j.state in (S.FAILED, S.REJECTED))
        assert model.success_rate == pytest.approx(len(times) / (len(times) + failed))


def test_render_seconds_are_what_the_task_proved_not_when_we_looked(
    ledger: Ledger, clock: Clock
) -> None:
    add_batch(ledger, "b", Path("out"))
    ledger.plans.upsert_jobs("b", [NewJob(key="k", index=1, prompt="p", model="m")])
    job = next(ledger.reads.jobs("b"))
    drive(ledger, clock, job, Outcome("completed", 90.5), bytes_video(Path("unused")))
    done = next(ledger.reads.jobs("b"))
    # Recorded without render evidence (an older ledger): created to completion seen.
    assert done.render_seconds == pytest.approx(90.5)
    assert job.render_seconds is None
    ledger.plans.upsert_jobs("b", [NewJob(key="k2", index=2, prompt="p", model="m")])
    second = ledger.reads.job_by_key("b", "k2")
    assert second is not None
    ledger.moves.begin_submit(second.id)
    ledger.moves.record_submitted(second.id, "task_2", "queued", clock() + 60)
    clock.advance(300)  # seen done long after it finished: that wait is not the render
    ledger.moves.record_completed(
        second.id, "u", None, render=RenderSample(80, 82, stamped=True), render_s=81.2
    )
    assert ledger.reads.get_job(second.id).render_seconds == pytest.approx(81.2)


def test_failures_are_grouped_by_reason_with_examples(finished: ReportData) -> None:
    groups = [(g.state, g.code, g.message, g.count) for g in finished.failures]
    assert groups == [
        (S.FAILED, "OutputModeration", "the output was flagged by moderation", 4),
        (S.FAILED, "InternalError", "render worker lost", 1),
        (S.REJECTED, "InvalidParameter", "duration out of range", 1),
    ]
    assert [j.idx for j in finished.failures[0].examples] == [3, 10, 29]


# -- text --------------------------------------------------------------------------


def test_text_report_shows_the_ledger_figures(finished: ReportData) -> None:
    text = text_of(finished)
    assert "48 jobs: 1 in doubt, 1 completed, 39 downloaded, 5 failed, 1 rejected, 1 stalled" in (
        text
    )
    lines = text.splitlines()
    for model in finished.models:
        row = cells(next(line for line in lines if line.startswith(model.model)))
        assert row[:5] == [
            model.model,
            "24",
            str(model.rendered),
            str(model.failed),
            f"{model.success_rate:.1%}",
        ]
        assert row[5:7] == [f"{model.render_p50:,.1f} s", f"{model.render_p95:,.1f} s"]
        assert row[8] == f"${model.cost_usd:,.2f}"
    total = cells(next(line for line in lines if line.startswith("all models")))
    assert total[1:4] == ["48", "40", "6"]
    assert total[-1] == f"${finished.cost_usd:,.2f}"
    assert "\nendpoint    simulator\n" in text
    assert f"output seconds {finished.output_seconds} rendered of 256 planned" in text
    assert f"estimated cost ${finished.cost_usd:,.2f} committed" in text
    assert "budget $25.00" in text
    assert "4 × failed   OutputModeration: the output was flagged by moderation" in text
    assert "e.g. #3 sunrise, #10 sunrise take 2, #29 lighthouse, … 1 more" in text


def test_text_report_says_what_to_do(finished: ReportData) -> None:
    text = text_of(finished)
    assert "may have been billed" in text
    assert (
        "`batchvid retry coastal-lookbook --in-doubt` resubmits them (possibly paying twice)"
        in text
    )
    assert "#5 sunrise: read timeout after the request left" in text
    assert "`batchvid retry coastal-lookbook --stalled` polls the same task again" in text
    assert "#40 market take 2: task task-40" in text
    assert "`batchvid retry coastal-lookbook --failed`" in text
    assert "rendered, not downloaded (1)" in text
    assert "unfinished" not in text


def test_a_running_batch_is_reported_as_unfinished(
    ledger: Ledger, clock: Clock, tmp_path: Path
) -> None:
    add_batch(ledger, matrix_plan(), tmp_path / "videos")
    outcomes = {i: Outcome("queued") for i in range(20, 25)} | {25: Outcome("in_progress")}
    outcomes |= {26: Outcome("submitting")}
    pending = {i: Outcome("pending") for i in range(27, 49)}
    drive_all(ledger, clock, BATCH, outcomes | pending, bytes_video(tmp_path / "videos"))
    data = load_report(ledger, BATCH)
    assert data.counts[S.PENDING] == 22 and data.counts[S.QUEUED] == 5
    text = text_of(data)
    assert "unfinished (29): a run is under way, or was interrupted" in text
    assert f"`batchvid run {matrix_plan().manifest.path}` resumes it" in text
    rows = list(csv.DictReader(io.StringIO(render_csv(data))))
    assert [r["state"] for r in rows].count("pending") == 22
    assert len(json.loads(render_json(data))) == 48
    assert "<video" in render_html(data, tmp_path / "report.html")


def test_text_makes_control_characters_visible(ledger: Ledger, clock: Clock) -> None:
    add_batch(ledger, "b", Path("out"))
    ledger.plans.upsert_jobs("b", [NewJob(key="k", index=1, prompt="p", model="m", prompt_id="x")])
    drive(
        ledger,
        clock,
        next(ledger.reads.jobs("b")),
        Outcome("failed", 10, "E", "bad \x1b[31mred\x1b[0m\nline"),
        bytes_video(Path("unused")),
    )
    text = text_of(load_report(ledger, "b"))
    assert "\x1b" not in text
    assert "E: bad \\x1b[31mred\\x1b[0m line" in text


# -- csv and json --------------------------------------------------------------------


def test_csv_has_one_row_per_job_in_a_stable_column_order(
    finished: ReportData, ledger: Ledger
) -> None:
    text = render_csv(finished)
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    assert header == [*CSV_COLUMNS, "axis.style"]
    rows = list(csv.DictReader(io.StringIO(text)))
    jobs = list(ledger.reads.jobs(BATCH))
    assert len(rows) == len(jobs) == 48
    for row, job in zip(rows, jobs, strict=True):
        assert row["index"] == str(job.idx) and row["key"] == job.key
        assert row["state"] == job.state.value and row["task_id"] == (job.task_id or "")
        assert row["prompt"] == job.prompt
        assert row["file_path"] == (job.file_path or "")
        assert row["sha256"] == (job.sha256 or "")
        assert row["axis.style"] == dict(job.axes)["style"]
    assert float(rows[0]["render_seconds"]) == pytest.approx(35.0)
    assert rows[2]["error_code"] == "OutputModeration"
    assert rows[4]["state"] == "in_doubt" and rows[4]["task_id"] == ""


def test_csv_and_json_keep_awkward_text_intact(ledger: Ledger, clock: Clock) -> None:
    awkward = 'a "quoted", comma,\nnew line; ünïcode | pipe ' + XSS
    add_batch(ledger, "b", Path("out"))
    ledger.plans.upsert_jobs("b", [NewJob(key="k", index=1, prompt=awkward, model="m")])
    data = load_report(ledger, "b")
    (row,) = list(csv.DictReader(io.StringIO(render_csv(data))))
    assert row["prompt"] == awkward and row["state"] == "pending"
    assert list(row) == list(CSV_COLUMNS)  # no template variables: no axis columns
    (obj,) = json.loads(render_json(data))
    assert obj["prompt"] == awkward


@pytest.mark.parametrize(
    "prompt",
    ['=HYPERLINK("http://x.example","click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
     "\t=1", "\r=1"],
)  # fmt: skip
def test_csv_cells_a_spreadsheet_would_run_are_plain_text(ledger: Ledger, prompt: str) -> None:
    """Prompts and the API's words that start like a formula get a leading ``'`` in the
    CSV (OWASP's rule); JSON keeps them as they are, and numbers stay numbers."""
    add_batch(ledger, "b", Path("out"))
    ledger.plans.upsert_jobs("b", [NewJob(key="k", index=1, prompt=prompt, model="m")])
    data = load_report(ledger, "b")
    (row,) = list(csv.DictReader(io.StringIO(render_csv(data), newline="")))
    assert row["prompt"] == "'" + prompt and row["index"] == "1"
    (obj,) = json.loads(render_json(data))
    assert obj["prompt"] == prompt


def test_json_is_an_array_of_typed_objects(finished: ReportData) -> None:
    objects = json.loads(render_json(finished))
    assert isinstance(objects, list) and len(objects) == 48
    first = objects[0]
    assert list(first) == [*CSV_COLUMNS, "axes"]
    assert first["index"] == 1 and first["seconds"] == 5 and first["references"] == []
    assert first["axes"] == {"model": FAST, "size": "864x496", "style": "film noir"}
    assert first["render_seconds"] == 35.0 and first["cost_usd"] == pytest.approx(0.5)
    doubt = objects[4]
    assert doubt["state"] == "in_doubt" and doubt["task_id"] is None
    assert json.loads(render_json(build_report(finished.batch, [], now=T0))) == []


# -- markdown ---------------------------------------------------------------------------


def test_markdown_has_a_summary_table_and_a_failure_list(finished: ReportData) -> None:
    text = render_markdown(finished)
    lines = text.splitlines()
    header = "| model | jobs | rendered | failed | success | p50 | p95 | out s | cost |"
    at = lines.index(header)
    assert lines[at + 1].startswith("| --- | ---: |")
    model_rows = lines[at + 2 : at + 5]
    assert [r.split(" | ")[0] for r in model_rows] == [f"| {PRO}", f"| {FAST}", "| all models"]
    assert all(r.count("|") == header.count("|") for r in model_rows)
    assert "| downloaded | 39 |" in lines
    assert "### Failures" in lines
    assert (
        "- **4× failed**: OutputModeration: the output was flagged by moderation "
        "(e.g. #3 sunrise, #10 sunrise take 2, #29 lighthouse, … 1 more)" in lines
    )
    assert "`batchvid retry coastal-lookbook --in-doubt` resubmits" in text


def test_markdown_escapes_user_text() -> None:
    assert md("a | b") == "a \\| b"
    assert md(XSS) == "\\<script\\>alert(1)\\</script\\>"
    assert md("**bold** _it_ `code` [l](x) $x$ ~s~") == (
        "\\*\\*bold\\*\\* \\_it\\_ \\`code\\` \\[l\\](x) \\$x\\$ \\~s\\~"
    )
    assert md("two\nlines") == "two lines"


# -- html ---------------------------------------------------------------------------------


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text, of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    tags.close()
    return tags


def test_html_links_videos_relatively_and_fetches_nothing(finished: ReportData) -> None:
    reports = Path(finished.batch.output_dir).parent / "reports"  # beside the videos folder
    page = render_html(finished, reports / "night.html")
    tags = parse(page)
    videos = [a for t, a in tags.tags if t == "video"]
    assert len(videos) == 39
    for attrs in videos:
        src = attrs["src"] or ""
        assert src.startswith("../videos/") and src.endswith(".mp4")
        assert Path(os.path.normpath(reports / src)).is_file()
        assert attrs["preload"] == "metadata" and "controls" in attrs
    assert "http://" not in page and "https://" not in page
    assert not [t for t, _ in tags.tags if t in ("script", "link", "img", "iframe", "object")]
    links = [a.get("src") or a.get("href") for _, a in tags.tags if "src" in a or "href" in a]
    assert all(link and not re.match(r"^[a-z]+:|^//", link) for link in links)
    anchors = {a["href"] for t, a in tags.tags if t == "a"}
    ids = {a.get("id") for _, a in tags.tags}
    assert anchors and all(h and h[1:] in ids for h in anchors)  # in-page links only


def test_html_escapes_every_piece_of_user_text(ledger: Ledger, clock: Clock) -> None:
    add_batch(ledger, "b<i>", Path("out"))
    jobs = [
        NewJob(key="a", index=1, prompt=XSS, model="m", prompt_id='"><b>id'),
        NewJob(key="b", index=2, prompt="fine", model="m<x>", size='9:16"><script>'),
    ]
    ledger.plans.upsert_jobs("b<i>", jobs)
    a = ledger.reads.job_by_key("b<i>", "a")
    assert a is not None
    drive(ledger, clock, a, Outcome("failed", 5, "<code>", XSS + " & more"), bytes_video(Path()))
    page = render_html(load_report(ledger, "b<i>"), "report.html")
    for raw in (XSS, '"><b>id', "<x>", "<i>", '"><script>', "<code>:"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;code&gt;: &lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    tags = parse(page)
    assert not [t for t, _ in tags.tags if t in ("script", "x", "i")]
    text = "".join(tags.text)
    for shown in (XSS, '"><b>id', "m<x>", "b<i>"):  # shown, as text
        assert shown in text
    styles = [a["style"] for _, a in tags.tags if "style" in a]
    assert styles and all(re.fullmatch(r"aspect-ratio:\d+/\d+", s or "") for s in styles)


def test_html_marks_missing_files_and_quotes_paths(
    ledger: Ledger, clock: Clock, tmp_path: Path
) -> None:
    add_batch(ledger, "b", tmp_path / "out")
    ledger.plans.upsert_jobs(
        "b", [NewJob(key=k, index=i, prompt="p", model="m") for i, k in enumerate("xy")]
    )
    folder = tmp_path / "my videos#1"

    def make(job: JobRow) -> Path:
        path = folder / f"{job.key} 100%.mp4"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"v")
        return path

    drive_all(ledger, clock, "b", {}, make)
    (folder / "y 100%.mp4").unlink()
    tags = parse(render_html(load_report(ledger, "b"), tmp_path / "report.html"))
    (video,) = [a for t, a in tags.tags if t == "video"]
    assert video["src"] == "my%20videos%231/x%20100%25.mp4"
    assert "file missing: " + str(folder / "y 100%.mp4") in "".join(tags.text)


def test_html_filter_by_state_is_css_only(finished: ReportData) -> None:
    page = render_html(finished, "report.html")
    tags = parse(page)
    radios = [a["id"] for t, a in tags.tags if t == "input" and a.get("type") == "radio"]
    present = [s.value for s in S if finished.counts[s]]
    assert radios == ["show-all", *(f"show-{s}" for s in present)]
    for state in present:
        assert f"#show-{state}:checked ~ main .job:not(.s-{state}) {{ display: none; }}" in page
    assert "show-pending" not in page  # no radio for a state no job is in


def test_gallery_layout_of_the_matrix_example(finished: ReportData) -> None:
    layout = gallery_layout(finished.jobs)
    assert layout.column_axes == ("model", "size")
    assert layout.columns == (
        (FAST, "864x496"),
        (FAST, "496x864"),
        (PRO, "864x496"),
        (PRO, "496x864"),
    )
    assert layout.row_axes == ("style",)
    assert [(r.prompt_id, r.values) for r in layout.rows] == [
        (p, (s,))
        for p in ("sunrise", "lighthouse", "market")
        for s in ("film noir", "pastel watercolour")
    ]
    assert layout.rows[0].template.endswith("at sunrise, {style}")
    for row in layout.rows:
        assert [[j.take for j in cell] for cell in row.cells] == [[1, 2]] * 4
        for cell, column in zip(row.cells, layout.columns, strict=True):
            for job in cell:
                axes = dict(job.axes)
                assert (axes["model"], axes["size"], axes["style"]) == (*column, *row.values)
    placed = sorted(j.id for r in layout.rows for c in r.cells for j in c)
    assert placed == sorted(j.id for j in finished.jobs)


def test_gallery_layout_without_axes_falls_back_to_model_and_size(
    ledger: Ledger, tmp_path: Path
) -> None:
    add_batch(ledger, "b", tmp_path)
    ledger.plans.upsert_jobs(
        "b",
        [
            NewJob(key=f"{p}{m}{s}", index=i, prompt=p, model=m, size=s)
            for i, (p, m, s) in enumerate(
                (p, m, s) for p in ("one", "two") for m in ("m1", "m2") for s in ("16:9", "1:1")
            )
        ],
    )
    layout = gallery_layout(list(ledger.reads.jobs("b")))
    assert layout.column_axes == ("model", "size") and layout.row_axes == ()
    assert len(layout.columns) == 4 and [r.template for r in layout.rows] == ["one", "two"]
    single = gallery_layout([next(ledger.reads.jobs("b"))])
    assert single.column_axes == () and single.columns == ((),)


def test_template_variables_become_columns_when_no_api_setting_varies(
    ledger: Ledger, tmp_path: Path
) -> None:
    add_batch(ledger, "b", tmp_path)
    axes = [(("model", "m"), ("mood", v)) for v in ("calm", "storm")]
    ledger.plans.upsert_jobs(
        "b",
        [
            NewJob(key=str(i), index=i, prompt=f"sea, {a[1][1]}", model="m", axes=a)
            for i, a in enumerate(axes)
        ],
    )
    layout = gallery_layout(list(ledger.reads.jobs("b")))
    assert (layout.column_axes, layout.row_axes) == (("mood",), ())
    assert [r.template for r in layout.rows] == ["sea, {mood}"]
    job = next(ledger.reads.jobs("b"))
    assert prompt_template(job, job.axes) == "sea, {mood}"


# -- the command -----------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(report, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_every_format_prints_to_stdout(finished: ReportData, ledger: Ledger) -> None:
    for fmt in ("text", "csv", "json", "md"):
        code, out, _ = invoke("--ledger", str(ledger.path), "--format", fmt)
        assert code == 0, fmt
        assert out.startswith(
            {"text": "batchvid report", "csv": "batch,index", "json": "[\n"}.get(fmt, "## batchvid")
        )
    assert set(FORMATS) == {"text", "csv", "json", "md", "html"}


def test_files_are_written_where_asked_and_html_beside_the_videos(
    finished: ReportData, ledger: Ledger, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "jobs.csv"
    code, stdout, stderr = invoke(
        BATCH, "--ledger", str(ledger.path), "--format", "csv", "-o", str(out)
    )
    assert code == 0 and stdout == ""
    assert f"wrote {out} (48 jobs, csv)" in stderr
    with out.open(encoding="utf-8", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 48
    assert [p.name for p in out.parent.iterdir()] == ["jobs.csv"]  # no temporary left behind
    code, _, stderr = invoke("--ledger", str(ledger.path), "--format", "html")
    default = Path(finished.batch.output_dir) / "report.html"
    assert code == 0 and default.is_file() and str(default) in stderr
    assert 'src="001-' in default.read_text(encoding="utf-8")


def test_the_report_only_reads_the_ledger(finished: ReportData, ledger: Ledger) -> None:
    def dump() -> list[str]:
        conn = sqlite3.connect(ledger.path)
        try:
            return list(conn.iterdump())
        finally:
            conn.close()

    before = dump()
    for fmt in FORMATS:
        assert invoke("--ledger", str(ledger.path), "--format", fmt, "-o", "-")[0] == 0
    assert dump() == before


def test_unknown_batch_missing_ledger_and_empty_ledger_exit_2(
    ledger: Ledger, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.db"
    code, _, err = invoke("--ledger", str(missing))
    assert code == 2 and f"no ledger at {missing}" in err
    assert not missing.exists()
    code, _, err = invoke("--ledger", str(ledger.path))
    assert code == 2 and "has no batches yet" in err
    add_batch(ledger, "empty", tmp_path)
    code, _, err = invoke("--ledger", str(ledger.path))
    assert code == 2 and "batch 'empty' has no jobs yet" in err
    code, _, err = invoke("nope", "--ledger", str(ledger.path))
    assert code == 2 and "no batch named 'nope'" in err and "batches: empty" in err


def test_the_batch_must_be_named_when_the_ledger_has_several(
    finished: ReportData, ledger: Ledger, tmp_path: Path
) -> None:
    add_batch(ledger, "another", tmp_path)
    code, _, err = invoke("--ledger", str(ledger.path))
    assert code == 2 and "has 2 batches; name one:\n  another\n  coastal-lookbook" in err
    code, out, _ = invoke(BATCH, "--ledger", str(ledger.path), "--format", "json")
    assert code == 0 and len(json.loads(out)) == 48


def test_the_ledger_comes_from_the_environment(
    finished: ReportData, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHVID_LEDGER", str(ledger.path))
    code, out, _ = invoke("--format", "md")
    assert code == 0 and "**48 jobs: 1 in doubt" in out


def test_render_dispatches_every_format(finished: ReportData) -> None:
    for fmt in FORMATS:
        assert render(finished, fmt)
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        render(finished, "pdf")


def test_big_galleries_stop_preloading_every_video(finished: ReportData, tmp_path: Path) -> None:
    one = next(j for j in finished.jobs if j.state is S.DOWNLOADED)
    many = [one._replace(id=i, idx=i, key=f"k{i}") for i in range(1, PRELOAD_LIMIT + 2)]
    tags = parse(render_html(build_report(finished.batch, many, now=T0), tmp_path / "r.html"))
    preloads = {a["preload"] for t, a in tags.tags if t == "video"}
    assert preloads == {"none"}
    few = parse(render_html(build_report(finished.batch, many[:-1], now=T0), tmp_path / "r.html"))
    assert {a["preload"] for t, a in few.tags if t == "video"} == {"metadata"}


def test_an_unwritable_output_is_exit_2_and_leaves_nothing(
    finished: ReportData, ledger: Ledger, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = invoke("--ledger", str(ledger.path), "-o", str(blocker / "report.txt"))
    assert code == 2 and f"cannot write {blocker / 'report.txt'}" in err
    assert blocker.read_text() == "not a folder"


def test_many_failure_reasons_are_listed_up_to_a_limit(ledger: Ledger, clock: Clock) -> None:
    add_batch(ledger, "b", Path("out"))
    n = FAILURE_GROUPS_SHOWN + 3
    ledger.plans.upsert_jobs(
        "b", [NewJob(key=f"k{i}", index=i, prompt="p", model="m") for i in range(n)]
    )
    for job in list(ledger.reads.jobs("b")):
        drive(
            ledger, clock, job, Outcome("failed", 5, "E", f"reason {job.idx}"), bytes_video(Path())
        )
    data = load_report(ledger, "b")
    assert len(data.failures) == n
    text = text_of(data)
    assert "reason 19" in text and "reason 20" not in text
    assert "… 3 more jobs for 3 more reasons (--format csv lists every job)" in text
    assert "- … 3 more jobs, 3 more reasons" in render_markdown(data)
