"""``run``, ``validate`` and ``report`` with videos in a store, as a user runs them: real
processes, a real S3-compatible server (moto, 127.0.0.1)."""

from __future__ import annotations

import hashlib
import html
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
from run_helpers import matrix_manifest
from s3_server import S3Server

from batchvid.sim.config import SimConfig
from batchvid.sim.server import SimulatorThread


def batchvid(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchvid", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_a_batch_in_a_store_and_its_reports(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    manifest = matrix_manifest(tmp_path, prompts=1)
    ran = batchvid(
        tmp_path, "run", str(manifest), "--simulate", "--output-dir", f"s3://{s3_bucket}/night"
    )
    assert ran.returncode == 0, ran.stderr
    assert f"videos: s3://{s3_bucket}/night (10 files)" in ran.stdout
    assert f"videos to s3://{s3_bucket}/night" in ran.stderr

    made = batchvid(tmp_path, "report", "--format", "html")
    assert made.returncode == 0, made.stderr
    assert "presigned" in made.stderr and "(7 days)" in made.stderr
    page = (tmp_path / "e2e-report.html").read_text()
    links = [html.unescape(u) for u in re.findall(r'<video src="([^"]+)"', page)]
    assert len(links) == 10 and all(u.startswith(s3_server.endpoint) for u in links)
    assert f"media-src &#x27;self&#x27; file: blob: {s3_server.endpoint}" in page
    with sqlite3.connect(tmp_path / "state" / "batchvid.db") as conn:
        digests = {row[0] for row in conn.execute("SELECT sha256 FROM jobs")}
    conn.close()
    fetched = httpx.get(links[0])  # a link works with no credentials: it is signed
    assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() in digests

    sheet = batchvid(tmp_path, "report", "--format", "sheet")
    assert sheet.returncode == 0, sheet.stderr
    with_posters = (tmp_path / "e2e-sheet.jpg").read_bytes()
    # Without the store, the same sheet has grey tiles: the posters came from the store.
    gone = batchvid(
        tmp_path, "report", "--format", "sheet", "-o", "blind.jpg",
        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
    )  # fmt: skip
    assert gone.returncode == 0, gone.stderr
    assert (tmp_path / "blind.jpg").read_bytes() != with_posters
    status = batchvid(tmp_path, "status", "e2e")  # the ledger says it all: no store needed
    assert status.returncode == 0 and "downloaded 10" in status.stdout.replace("  ", " ")


def test_an_output_no_store_can_take_is_refused_before_anything_is_paid(
    tmp_path: Path, s3_bucket: str
) -> None:
    manifest = matrix_manifest(tmp_path, prompts=1)
    text = manifest.read_text().replace("output_dir: out", "output_dir: gs://bv-out/night")
    manifest.write_text(text)
    checked = batchvid(tmp_path, "validate", str(manifest))
    assert checked.returncode == 2
    assert re.search(
        r"batch\.yaml:3: output_dir: 'gs://bv-out/night': .*not to gs://", checked.stderr
    ), checked.stderr
    manifest.write_text(text.replace("gs://bv-out/night", "out"))
    missing = batchvid(
        tmp_path, "run", str(manifest), "--simulate", "--output-dir", "s3://bv-none-such/x"
    )
    assert missing.returncode == 2
    assert "the bucket 'bv-none-such' does not exist" in missing.stderr
    # Checked before the ledger was even opened: nothing sent, nothing recorded.
    assert not (tmp_path / "state" / "batchvid.db").exists()


def test_kills_at_any_moment_leave_every_video_in_the_store_once(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """A run is killed (SIGKILL) each time a new object lands in the bucket, so kills
    fall mid-upload, between an upload and its record, and everywhere else; then one
    run to the end.  Every video is in the store once, no object was ever replaced, and
    nothing was created twice."""
    manifest = matrix_manifest(tmp_path, prompts=2, batch="kills")
    ledger = tmp_path / "ledger.db"
    etags: dict[str, str] = {}

    def look() -> dict[str, str]:
        now = s3_server.etags(s3_bucket)
        assert {k: now[k] for k in etags} == etags  # nothing seen before was replaced
        etags.update(now)
        return now

    with SimulatorThread(SimConfig(time_scale=0.01, seed=31)) as sim:
        env = {"COMETAPI_BASE_URL": sim.base_url, "COMETAPI_KEY": sim.api_key}
        args = [sys.executable, "-m", "batchvid", "run", str(manifest), "--ledger", str(ledger),
                "--time-scale", "0.01", "--concurrency", "2",
                "--output-dir", f"s3://{s3_bucket}/k"]  # fmt: skip
        kills = 0
        while kills < 8:
            seen = len(look())
            process = subprocess.Popen(
                args, cwd=tmp_path, env={**os.environ, **env},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while process.poll() is None and len(look()) == seen and time.monotonic() < deadline:
                time.sleep(0.005)
            if process.poll() is not None:
                break  # it finished before a kill could land
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
        last = batchvid(tmp_path, *args[3:], env=env)
        assert last.returncode in (0, 1), last.stdout + last.stderr
        stats = sim.stats()
    assert kills >= 3
    objects = look()
    videos = [k for k in objects if not k.startswith("k/posters/")]
    with sqlite3.connect(ledger) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"))
        recorded = dict(
            conn.execute("SELECT file_path, object_etag FROM jobs WHERE state = 'downloaded'")
        )
    conn.close()
    # A kill that fell mid-create leaves that job in doubt (never resent): the only other end.
    in_doubt = states.get("in_doubt", 0)
    assert states.get("downloaded", 0) == 20 - in_doubt and (last.returncode == 1) == (in_doubt > 0)
    assert len(videos) == 20 - in_doubt and stats["duplicate_creates"] == 0
    assert 20 - in_doubt <= stats["creates"] <= 20
    assert recorded == {f"s3://{s3_bucket}/{k}": objects[k] for k in videos}
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]  # nothing left
