"""Headless Chromium driven over the DevTools protocol: for the gallery's browser test
and its benchmark (``bench/bench_media.py``).

Needs Chromium (``apt-get install chromium``; ``.ci/run`` installs it) and the
``websockets`` package (the dev group has it).
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

TIMEOUT = 30.0


class BrowserFailed(RuntimeError):
    """Chromium did not start (its log's tail is the message)."""


def chromium() -> str | None:
    """The Chromium executable, or ``None`` when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return None


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

    def wait_for(self, method: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The first ``method`` event, recorded already or arriving within ``timeout``
        (each event looked at once: a page of videos sends tens of thousands)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in itertools.islice(self.events, seen, None):
                if event.get("method") == method:
                    return event
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {method} within {timeout} s")
            self.events.append(json.loads(self._ws.recv(timeout=left)))

    def drain(self, seconds: float) -> None:
        """Record the events that arrive in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self._ws.recv(timeout=left)))
            except TimeoutError:
                return

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


@contextmanager
def open_page(browser_ws: str, url: str, *, until: str = "Page.loadEventFired") -> Iterator[Cdp]:
    """A new tab, recording network requests, navigated to ``url`` and loaded (``until``:
    ``Page.domContentEventFired`` for a page whose videos hold its load event back)."""
    with Cdp.connect(browser_ws) as root:
        target = root.call("Target.createTarget", url="about:blank")["targetId"]
    port = browser_ws.split(":")[2].split("/")[0]
    with Cdp.connect(f"ws://127.0.0.1:{port}/devtools/page/{target}") as page:
        page.call("Page.enable")
        page.call("Network.enable")
        page.call("Page.navigate", url=url)
        page.wait_for(until)
        yield page


@contextmanager
def headless_chromium(exe: str, workdir: Path) -> Iterator[str]:
    """Headless Chromium on a DevTools port of its choosing; yields the browser's ws URL."""
    profile = workdir / "chromium-profile"
    args = [
        *(exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"),
        *("--no-first-run", "--no-default-browser-check", "--disable-background-networking"),
        *("--disable-component-update", "--disable-sync", "--disable-extensions"),
        *("--disable-default-apps", "--mute-audio", "--hide-scrollbars"),
        *("--window-size=1400,1000", f"--user-data-dir={profile}"),
        *("--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"),
    ]
    with (workdir / "chromium.log").open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        active = profile / "DevToolsActivePort"  # "PORT\n/devtools/browser/ID\n" once listening
        deadline = time.monotonic() + TIMEOUT
        while len(_lines(active)) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (workdir / "chromium.log").read_text(errors="replace")[-2000:]
                raise BrowserFailed(f"Chromium did not open its DevTools port:\n{log_text}")
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
