"""The HTML report in a real browser: headless Chromium, driven over the DevTools protocol.

Builds the shipped matrix example's ledger with real, playable MP4s (probed, with
posters, as ``run`` leaves them) plus a job the API normalised and a job whose
prompt and error are script injections, renders the gallery, opens it in
Chromium and checks: every ``<video>`` has a poster that loads and waits to be
played (``preload="none"``), each still loads its metadata (a duration, a frame
size) when asked, no script from user text ran and no element was injected, the
page fetched nothing but local files, and a screenshot is saved for a person at
``state/report-screenshot.png``.

Skips, saying why, without Chromium (``apt-get install chromium``; ``.ci/run``
installs it) or without the ``websockets`` package (the dev group has it).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import BrowserFailed, chromium, headless_chromium, open_page
from report_ledgers import (
    MATRIX_OUTCOMES,
    ROOT,
    Clock,
    Outcome,
    add_batch,
    drive,
    drive_all,
    matrix_plan,
    real_video,
)

from batchvid.ledger import Ledger
from batchvid.ledger.rows import JobRow, NewJob
from batchvid.report import load_report
from batchvid.report.gallery import render_html

INJECTION = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
ERROR_INJECTION = "<img src=x onerror=window.__pwned=3> & </td></tr></table><b>broken</b>"
SCREENSHOT = ROOT / "state" / "report-screenshot.png"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[str]:
    """Headless Chromium on a DevTools port of its choosing; yields the browser's ws URL."""
    exe = chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("websockets", reason="the dev group's websockets package talks to CDP")
    try:
        with headless_chromium(exe, tmp_path) as url:
            yield url
    except BrowserFailed as exc:
        pytest.fail(str(exc))


# Every <video>'s poster, loaded by the page's own rules (CSP img-src): its size, or 0.
POSTERS = """
Promise.all([...document.querySelectorAll("video")].map((v) => new Promise((resolve) => {
  const image = new Image();
  image.onload = () => resolve({poster: v.getAttribute("poster"), width: image.naturalWidth});
  image.onerror = () => resolve({poster: v.getAttribute("poster"), width: 0});
  image.src = v.poster;
})))
"""

# Asks every <video> for its metadata, then resolves once each has it (or failed), within 15 s.
VIDEO_STATES = """
new Promise((resolve) => {
  const videos = [...document.querySelectorAll("video")];
  videos.forEach((v) => { v.preload = "metadata"; v.load(); });
  const done = () => videos.every((v) => v.readyState >= 1 || v.error);
  const report = () => resolve(videos.map((v) => ({
    src: v.getAttribute("src"), readyState: v.readyState, duration: v.duration,
    width: v.videoWidth, height: v.videoHeight, error: v.error && v.error.code,
    preload: v.getAttribute("preload"), controls: v.controls })));
  const started = Date.now();
  const tick = () => (done() || Date.now() - started > 15000) ? report() : setTimeout(tick, 50);
  tick();
})
"""


def build_report_html(tmp_path: Path) -> tuple[Path, list[JobRow]]:
    """The matrix example, driven to a mix of outcomes with real MP4s and their posters,
    plus a job the API normalised and an injection job."""
    videos = tmp_path / "videos"
    clock = Clock()
    make_video = real_video(videos)
    with Ledger(tmp_path / "ledger.db", clock=clock) as ledger:
        batch = add_batch(ledger, matrix_plan(), videos)
        evil = NewJob(key="evil", index=49, prompt=INJECTION, model="doubao-seedance-2-0-fast")
        odd = NewJob(key="odd", index=50, prompt="a pier", model="doubao-seedance-2-0",
                     size="1920x1080", resolution="720p", seconds=4)  # fmt: skip
        ledger.plans.upsert_jobs(batch, [evil, odd])
        drive_all(ledger, clock, batch, MATRIX_OUTCOMES, make_video, default=None, probe=True)
        for job in ledger.reads.jobs(batch):
            if job.state.value == "pending":
                outcome = "failed" if job.key == "evil" else "downloaded"
                render = 30.0 + 5 * job.idx
                how = Outcome(outcome, render, "<b>", ERROR_INJECTION)
                drive(ledger, clock, job, how, make_video, probe=True)
        html_path = videos / "report.html"
        html_path.write_text(render_html(load_report(ledger, batch), html_path), encoding="utf-8")
        return html_path, list(ledger.reads.jobs(batch))


def test_the_gallery_plays_in_chromium_and_runs_no_user_script(
    browser: str, tmp_path: Path
) -> None:
    html_path, jobs = build_report_html(tmp_path)
    downloaded = [j for j in jobs if j.state.value == "downloaded"]
    with open_page(browser, html_path.as_uri()) as page:
        # Every video shows its poster at once and loads nothing until played.
        posters = page.evaluate(POSTERS)
        assert len(posters) == len(downloaded) == 40
        assert [p for p in posters if p["width"] != 320] == []
        assert all(p["poster"].startswith("posters/") for p in posters)
        preloads = page.evaluate("[...document.querySelectorAll('video')].map((v) => v.preload)")
        assert set(preloads) == {"none"}
        flags = page.evaluate("[...document.querySelectorAll('.flag')].map((f) => f.innerText)")
        assert flags == ["asked 1920x1080, rendered 1280x720 (normalised by the API)"]
        # Each still plays: asked for its metadata, it has a duration and a frame size.
        videos = page.evaluate(VIDEO_STATES)
        not_loaded = [v for v in videos if v["readyState"] < 1 or not v["duration"] > 0]
        assert not_loaded == [], not_loaded
        assert all(v["width"] > 0 and v["height"] > 0 and v["controls"] for v in videos)
        assert all(not v["src"].startswith(("/", "file:", "http")) for v in videos)
        shot = page.call("Page.captureScreenshot", format="png")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
        assert SCREENSHOT.stat().st_size > 10_000

        # Nothing from a prompt or an error message ran or became an element.
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.evaluate("document.querySelectorAll('img, script, iframe').length") == 0
        text = page.evaluate("document.body.innerText")
        assert INJECTION in text and "<img src=x onerror=window.__pwned=3>" in text
        assert page.evaluate("document.querySelectorAll('.grid td figure').length") == len(jobs)

        # Only local files were fetched: the page itself and the videos.
        requested = {
            e["params"]["request"]["url"]
            for e in page.events
            if e.get("method") == "Network.requestWillBeSent"
        }
        assert requested, "the page made no request at all?"
        # (data: URLs are Chromium's own media-control icons.)
        remote = [u for u in requested if not u.startswith(("file://", "data:"))]
        assert remote == []
        assert html_path.as_uri() in requested

        # The state filter (CSS only) hides every figure but the failed ones.
        page.evaluate("document.getElementById('show-failed').click()")
        visible = page.evaluate(
            "[...document.querySelectorAll('figure.job')]"
            ".filter((f) => f.offsetParent !== null).map((f) => f.className)"
        )
        assert visible and all(c == "job s-failed" for c in visible)
        assert len(visible) == sum(1 for j in jobs if j.state.value == "failed")
        page.evaluate("document.getElementById('show-all').click()")
