"""The HTML report in a real browser: headless Chromium, driven over the DevTools protocol.

Builds the shipped matrix example's ledger with real, playable MP4s plus a job
whose prompt and error are script injections, renders the gallery, opens it in
Chromium and checks: every ``<video>`` loads its metadata (a duration, a frame
size), no script from user text ran and no element was injected, the page
fetched nothing but local files, and a screenshot is saved for a person at
``state/report-screenshot.png``.

Skips, saying why, without Chromium (``apt-get install chromium``; ``.ci/run``
installs it), without the ``websockets`` package (the dev group has it), or
without a playable sample video (``batchvid/assets/sample.mp4`` or ffmpeg).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from report_ledgers import (
    MATRIX_OUTCOMES,
    ROOT,
    Clock,
    Outcome,
    add_batch,
    drive,
    drive_all,
    matrix_plan,
)

from batchvid.ledger import Ledger
from batchvid.ledger.rows import JobRow, NewJob
from batchvid.report import load_report
from batchvid.report.gallery import render_html

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

INJECTION = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
ERROR_INJECTION = "<img src=x onerror=window.__pwned=3> & </td></tr></table><b>broken</b>"
SCREENSHOT = ROOT / "state" / "report-screenshot.png"
SAMPLE = ROOT / "batchvid" / "assets" / "sample.mp4"
TIMEOUT = 30.0


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")


def sample_video(tmp_path: Path) -> Path:
    """A tiny playable H.264 MP4: the package's sample, else one made by ffmpeg."""
    if SAMPLE.is_file():
        return SAMPLE
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip(f"no playable sample video: {SAMPLE} is missing and ffmpeg is not installed")
    out = tmp_path / "sample.mp4"
    subprocess.run(
        [
            *(ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x90:rate=10"),
            *("-t", "1", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-movflags", "+faststart"),
            str(out),
        ],
        check=True,
        timeout=60,
    )
    return out


class Cdp:
    """The few DevTools-protocol calls this test needs, over one websocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    @classmethod
    @contextmanager
    def connect(cls, url: str) -> Iterator[Cdp]:
        from websockets.sync.client import connect

        with connect(url, max_size=64 * 2**20, open_timeout=TIMEOUT) as ws:
            yield cls(ws)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=TIMEOUT))
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(json.loads(self._ws.recv(timeout=TIMEOUT)))
        raise AssertionError(f"no {method} within {TIMEOUT} s")

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[str]:
    """Headless Chromium on a DevTools port of its choosing; yields the browser's ws URL."""
    exe = chromium()
    pytest.importorskip("websockets", reason="the dev group's websockets package talks to CDP")
    profile = tmp_path / "chromium-profile"
    args = [
        *(exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"),
        *("--no-first-run", "--no-default-browser-check", "--disable-background-networking"),
        *("--disable-component-update", "--disable-sync", "--disable-extensions"),
        *("--disable-default-apps", "--mute-audio", "--hide-scrollbars"),
        *("--window-size=1400,1000", f"--user-data-dir={profile}"),
        *("--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"),
    ]
    with (tmp_path / "chromium.log").open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        active = profile / "DevToolsActivePort"  # "PORT\n/devtools/browser/ID\n" once listening
        deadline = time.monotonic() + TIMEOUT
        while len(_lines(active)) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (tmp_path / "chromium.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"Chromium did not open its DevTools port:\n{log_text}")
            time.sleep(0.05)
        port, path = _lines(active)[:2]
        yield f"ws://127.0.0.1:{port}{path}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


@contextmanager
def open_page(browser_ws: str, url: str) -> Iterator[Cdp]:
    """A new tab, recording network requests, navigated to ``url`` and loaded."""
    with Cdp.connect(browser_ws) as root:
        target = root.call("Target.createTarget", url="about:blank")["targetId"]
    port = browser_ws.split(":")[2].split("/")[0]
    with Cdp.connect(f"ws://127.0.0.1:{port}/devtools/page/{target}") as page:
        page.call("Page.enable")
        page.call("Network.enable")
        page.call("Page.navigate", url=url)
        page.wait_for("Page.loadEventFired")
        yield page


# Resolves once every <video> has its metadata (or failed), within 15 s.
VIDEO_STATES = """
new Promise((resolve) => {
  const videos = [...document.querySelectorAll("video")];
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


def build_report_html(tmp_path: Path, clip: Path) -> tuple[Path, list[JobRow]]:
    """The matrix example, driven to a mix of outcomes with real MP4s, plus an injection job."""
    videos = tmp_path / "videos"
    clock = Clock()

    def make_video(job: JobRow) -> Path:
        path = videos / f"{job.idx:03d}-{job.prompt_id}-{job.size.replace(':', 'x')}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, path)
        return path

    with Ledger(tmp_path / "ledger.db", clock=clock) as ledger:
        batch = add_batch(ledger, matrix_plan(), videos)
        evil = NewJob(key="evil", index=49, prompt=INJECTION, model="doubao-seedance-2-0-fast")
        ledger.upsert_jobs(batch, [evil])
        drive_all(ledger, clock, batch, MATRIX_OUTCOMES, make_video, default=None)
        for job in ledger.jobs(batch):
            if job.state.value == "pending":
                outcome = "failed" if job.key == "evil" else "downloaded"
                render = 30.0 + 5 * job.idx
                drive(
                    ledger, clock, job, Outcome(outcome, render, "<b>", ERROR_INJECTION), make_video
                )
        html_path = videos / "report.html"
        html_path.write_text(render_html(load_report(ledger, batch), html_path), encoding="utf-8")
        return html_path, list(ledger.jobs(batch))


def test_the_gallery_plays_in_chromium_and_runs_no_user_script(
    browser: str, tmp_path: Path
) -> None:
    html_path, jobs = build_report_html(tmp_path, sample_video(tmp_path))
    downloaded = [j for j in jobs if j.state.value == "downloaded"]
    with open_page(browser, html_path.as_uri()) as page:
        videos = page.evaluate(VIDEO_STATES)
        assert len(videos) == len(downloaded) == 39
        not_loaded = [v for v in videos if v["readyState"] < 1 or not v["duration"] > 0]
        assert not_loaded == [], not_loaded
        assert all(v["width"] > 0 and v["height"] > 0 for v in videos)
        assert all(v["preload"] == "metadata" and v["controls"] for v in videos)
        assert all(not v["src"].startswith(("/", "file:", "http")) for v in videos)

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

        shot = page.call("Page.captureScreenshot", format="png")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
        assert SCREENSHOT.stat().st_size > 10_000
