"""The one download path (batchvid.remote.download) on a real socket and MockTransport:
resumes, refreshes, /content, error pages, and never a partial file under a final name."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from client_helpers import (
    FAST,
    VIDEO,
    CountingGate,
    Recorder,
    fast_client,
    finished_task,
    mock_client,
    video_answer,
)

from batchvid.errors import (
    DownloadError,
    TaskNotFound,
    Undecodable,
    UrlExpired,
)
from batchvid.remote import check, download
from batchvid.remote.client import CometClient
from batchvid.remote.download import TransferInterrupted, part_path
from batchvid.remote.protocol import Task, TaskStatus
from batchvid.request import VideoRequest
from batchvid.sim.server import Simulator

pytestmark = pytest.mark.anyio

# -- downloads --------------------------------------------------------------------


async def test_truncated_download_resumes_with_a_range_request(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    task = await finished_task(client)
    sim.inject(truncate=1)
    dest = tmp_path / "v.mp4"
    result = await client.download(task, dest)
    assert result.sha256 == sim.stats()["tasks"][task.id]["sha256"]
    assert result.attempts == 2 and 0 < result.resumed_from < result.size
    counters = sim.stats()["counters"]
    assert (counters["truncated"], counters["ranges"]) == (1, 1)
    assert not part_path(dest).exists()


async def test_a_download_that_keeps_breaking_keeps_its_part_for_later(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    task = await finished_task(client)
    dest = tmp_path / "v.mp4"
    sim.configure(p_truncate=1.0)
    with pytest.raises(TransferInterrupted):
        await client.download(task, dest, attempts=2)
    assert not dest.exists()
    kept = part_path(dest).stat().st_size
    assert kept > 0
    sim.configure(p_truncate=0.0)
    result = await client.download(task, dest)
    assert result.resumed_from == kept
    assert result.sha256 == sim.stats()["tasks"][task.id]["sha256"]


async def test_expired_url_is_refreshed_by_querying_the_task_again(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    sim.configure(url_ttl=0.05)
    task = await finished_task(client)
    await anyio.sleep(0.1)
    sim.configure(url_ttl=60.0)
    polls_before = sim.stats()["polls"][task.id]
    result = await client.download(task, tmp_path / "v.mp4")
    stats = sim.stats()
    assert result.refreshes == 1
    assert result.sha256 == stats["tasks"][task.id]["sha256"]
    assert stats["counters"]["cdn_refused"] == 1
    assert stats["polls"][task.id] == polls_before + 1
    assert stats["creates"] == 1  # a download never re-creates the video


async def test_refreshing_is_bounded_then_content_serves_the_video(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.configure(url_ttl=0.0)  # every signed URL is already expired
    async with fast_client(sim, max_refreshes=2) as client:
        task = await finished_task(client)
        result = await client.download(task, tmp_path / "v.mp4")
        with pytest.raises(UrlExpired):  # a bare URL can be neither refreshed nor replaced
            await client.download(task.video_url or "", tmp_path / "w.mp4")
    stats = sim.stats()
    assert (result.refreshes, result.via_content) == (2, True)
    assert result.sha256 == stats["tasks"][task.id]["sha256"]
    assert stats["counters"]["cdn_refused"] == 3 + 1
    assert stats["counters"]["content_requests"] == 1


async def test_without_content_the_expired_url_is_reported(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    sim.configure(url_ttl=0.0, content=False)
    task = await finished_task(client)
    with pytest.raises(DownloadError, match=r"not_found|404"):
        await client.download(task, tmp_path / "v.mp4")
    assert not list(tmp_path.iterdir())


async def test_cdn_errors_are_retried(sim: Simulator, client: CometClient, tmp_path: Path) -> None:
    task = await finished_task(client)
    sim.inject(cdn_error=2)
    result = await client.download(task, tmp_path / "v.mp4")
    assert result.attempts == 3
    assert sim.stats()["counters"]["cdn_errors"] == 2


async def test_without_video_url_the_content_route_is_used(sim: Simulator, tmp_path: Path) -> None:
    sim.configure(video_url=False)
    gate = CountingGate()
    async with fast_client(sim, limiter=gate) as client:
        task = await finished_task(client)
        assert task.video_url is None
        acquired = gate.acquired
        result = await client.download(task, tmp_path / "v.mp4")
        assert gate.acquired == acquired + 1  # /content is an API request
        with pytest.raises(TaskNotFound):
            await client.download("task_unknown", tmp_path / "x.mp4")
    counters = sim.stats()["counters"]
    assert result.sha256 == sim.stats()["tasks"][task.id]["sha256"]
    assert counters["content_requests"] == 1
    assert "cdn_requests" not in counters


async def test_content_route_before_completion_is_a_download_error(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    sim.configure(time_scale=1.0)
    task = await client.create(VideoRequest(prompt="x", model=FAST))
    with pytest.raises(DownloadError, match="not available"):
        await client.download(task.id, tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()


# -- downloads: what the docs allow a server to do ---------------------------------


async def test_success_without_video_url_downloads_from_content_with_the_key(
    tmp_path: Path,
) -> None:
    recorder = Recorder(video_answer)
    async with mock_client(recorder) as client:
        result = await client.download(
            Task("task_1", TaskStatus.COMPLETED, "SUCCESS"), tmp_path / "v.mp4"
        )
    assert result.sha256 == hashlib.sha256(VIDEO).hexdigest() and result.size == len(VIDEO)
    assert recorder.auth() == [("https://api.example/v1/videos/task_1/content", "Bearer sk-mock")]


@pytest.mark.parametrize(
    ("status", "content_type"),
    [
        (400, "application/json"),
        (404, "application/json"),
        (200, "application/json"),
        (200, "text/html; charset=utf-8"),
    ],
)
async def test_content_before_completion_is_a_download_error_and_writes_nothing(
    tmp_path: Path, status: int, content_type: str
) -> None:
    body = (
        b'{"error": {"message": "the video is not ready", "type": "invalid_request_error",'
        b' "code": "invalid_request_error"}}'
    )
    recorder = Recorder(
        lambda r: httpx.Response(status, headers={"content-type": content_type}, content=body)
    )
    dest = tmp_path / "v.mp4"
    async with mock_client(recorder) as client:
        with pytest.raises(DownloadError, match="not ready"):
            await client.download("task_1", dest)
    assert not dest.exists() and not part_path(dest).exists()
    assert len(recorder.requests) == 1  # not retried: ask again once the task is done


async def test_a_cdn_answering_200_with_a_json_error_writes_nothing(tmp_path: Path) -> None:
    recorder = Recorder(
        lambda r: httpx.Response(
            200, headers={"content-type": "application/json"}, content=b'{"code": "Denied"}'
        )
    )
    dest = tmp_path / "v.mp4"
    async with mock_client(recorder) as client:
        with pytest.raises(DownloadError, match="Denied"):
            await client.download("https://cdn.example/v.mp4?sig=1", dest)
    assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.parametrize(
    ("video_url", "fetched", "token"),
    [
        ("/files/task_1.mp4", "https://api.example/files/task_1.mp4", "Bearer sk-mock"),
        ("files/task_1.mp4", "https://api.example/files/task_1.mp4", "Bearer sk-mock"),
        ("//cdn.example/task_1.mp4?sig=2", "https://cdn.example/task_1.mp4?sig=2", None),
        (
            "ftp://cdn.example/task_1.mp4",
            "https://api.example/v1/videos/task_1/content",
            "Bearer sk-mock",
        ),
        ("not a url at all", "https://api.example/v1/videos/task_1/content", "Bearer sk-mock"),
    ],
    ids=["root-relative", "relative", "scheme-relative", "ftp", "garbage"],
)
async def test_a_relative_or_odd_video_url_is_resolved_against_the_api(
    tmp_path: Path, video_url: str, fetched: str, token: str | None
) -> None:
    body = json.dumps({"id": "task_1", "status": "SUCCESS", "video_url": video_url}).encode()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/videos/task_1":
            return httpx.Response(200, content=body)
        return video_answer(request)

    recorder = Recorder(answer)
    async with mock_client(recorder) as client:
        task = await client.retrieve("task_1")
        assert task.video_url is None or task.video_url.startswith("https://")
        result = await client.download(task, tmp_path / "v.mp4")
    assert result.size == len(VIDEO)
    assert recorder.auth()[1:] == [(fetched, token)]


@pytest.mark.parametrize(
    ("start", "hops"),
    [
        # /content on the API redirects to a CDN, which redirects to another CDN host.
        ("task_1", ["https://cdn.example/a.mp4", "https://cdn2.example/b.mp4"]),
        # A signed URL on the API's own host redirects to a CDN.
        ("https://api.example/signed/task_1.mp4", ["https://cdn.example/a.mp4"]),
        # A CDN redirects back to the API host: the auth flow is not re-run for it.
        ("https://cdn.example/a.mp4", ["https://api.example/files/b.mp4"]),
        # Same host, another scheme (https -> http): a different origin.
        ("task_1", ["http://api.example/files/b.mp4"]),
    ],
    ids=["content-cdn-cdn", "api-signed-cdn", "cdn-api", "https-to-http"],
)
async def test_redirects_never_carry_the_key_off_the_api_origin(
    tmp_path: Path, start: str, hops: list[str]
) -> None:
    chain = dict(zip([None, *hops], [*hops, None], strict=True))

    def answer(request: httpx.Request) -> httpx.Response:
        url = str(request.url.copy_with(query=None))
        after = (
            chain.get(url) if url in chain else chain[None] if len(recorder.requests) == 1 else None
        )
        if after is not None:
            return httpx.Response(302, headers={"Location": after})
        return video_answer(request)

    recorder = Recorder(answer)
    async with mock_client(recorder) as client:
        result = await client.download(start, tmp_path / "v.mp4")
    assert result.sha256 == hashlib.sha256(VIDEO).hexdigest()
    seen = recorder.auth()
    assert [url for url, _ in seen][1:] == hops
    assert [token for _, token in seen][1:] == [None] * len(hops)
    first_is_api = start == "task_1" or start.startswith("https://api.example/")
    assert seen[0][1] == ("Bearer sk-mock" if first_is_api else None)


async def test_a_redirect_loop_is_a_download_error(tmp_path: Path) -> None:
    recorder = Recorder(
        lambda r: httpx.Response(302, headers={"Location": "https://cdn.example/loop"})
    )
    async with mock_client(recorder) as client:
        with pytest.raises(DownloadError, match="loop"):
            await client.download("https://cdn.example/loop", tmp_path / "v.mp4")


def stream_then_break(data: bytes, cut: int, total: int | None) -> httpx.Response:
    """A 200 that sends ``data[:cut]`` and then loses the connection."""

    class Breaking(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield data[:cut]
            raise httpx.ReadError("peer closed connection")

    headers = {"content-type": "video/mp4"}
    if total is not None:
        headers["content-length"] = str(total)
    return httpx.Response(200, headers=headers, stream=Breaking())


async def test_a_server_that_ignores_range_restarts_the_file_instead_of_appending(
    tmp_path: Path,
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(recorder.requests) == 1:
            return stream_then_break(VIDEO, 1000, len(VIDEO))
        return httpx.Response(200, headers={"content-type": "video/mp4"}, content=VIDEO)  # no 206

    recorder = Recorder(answer)
    dest = tmp_path / "v.mp4"
    async with mock_client(recorder) as client:
        result = await client.download("https://cdn.example/v.mp4", dest)
    assert recorder.requests[1].headers["range"] == "bytes=1000-"
    assert dest.read_bytes() == VIDEO
    assert (result.size, result.resumed_from, result.attempts) == (len(VIDEO), 0, 2)
    assert result.sha256 == hashlib.sha256(VIDEO).hexdigest()


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "no-length"])
async def test_a_truncated_body_keeps_its_part_and_resumes(tmp_path: Path, announced: bool) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(recorder.requests) == 1:
            return stream_then_break(VIDEO, 777, len(VIDEO) if announced else None)
        return video_answer(request)

    recorder = Recorder(answer)
    dest = tmp_path / "v.mp4"
    async with mock_client(recorder) as client:
        result = await client.download("https://cdn.example/v.mp4", dest)
    assert dest.read_bytes() == VIDEO and not part_path(dest).exists()
    assert (result.resumed_from, result.attempts) == (777, 2)


async def test_a_chunked_body_without_content_length_is_counted_and_hashed(
    tmp_path: Path,
) -> None:
    class Chunks(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for start in range(0, len(VIDEO), 1000):
                yield VIDEO[start : start + 1000]

    recorder = Recorder(
        lambda r: httpx.Response(
            200,
            headers={"content-type": "video/mp4", "transfer-encoding": "chunked"},
            stream=Chunks(),
        )
    )
    dest = tmp_path / "v.mp4"
    async with mock_client(recorder) as client:
        result = await client.download("https://cdn.example/v.mp4", dest)
    assert (result.size, result.sha256) == (len(VIDEO), hashlib.sha256(VIDEO).hexdigest())
    assert dest.read_bytes() == VIDEO


def seed_part(dest: Path, data: bytes, source: str | None, etag: str | None = None) -> None:
    """A ``.part`` as an earlier, broken download of ``source`` left it."""
    part_path(dest).write_bytes(data)
    if source is not None:
        meta = {"source": source, "etag": etag}
        dest.with_name(dest.name + ".part.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("part_bytes", "content_range", "requests"),
    [
        (VIDEO, f"bytes */{len(VIDEO)}", 1),  # the .part was already whole
        (VIDEO[:500] + b"junk", f"bytes */{len(VIDEO) - 100}", 2),  # it was not: start over
        (VIDEO + b"more", None, 2),  # no Content-Range at all: start over
    ],
    ids=["complete", "mismatch", "no-content-range"],
)
async def test_416_to_a_resume_commits_a_whole_part_or_starts_over(
    tmp_path: Path, part_bytes: bytes, content_range: str | None, requests: int
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("range"):
            headers = {"content-range": content_range} if content_range else {}
            return httpx.Response(416, headers=headers)
        return video_answer(request)

    dest = tmp_path / "v.mp4"
    seed_part(dest, part_bytes, "url:https://cdn.example/v.mp4")
    recorder = Recorder(answer)
    async with mock_client(recorder) as client:
        result = await client.download("https://cdn.example/v.mp4", dest)
    assert len(recorder.requests) == requests
    assert dest.read_bytes() == (part_bytes if requests == 1 else VIDEO)
    assert result.size == dest.stat().st_size and not part_path(dest).exists()


@pytest.mark.parametrize("status", [401, 403, 404, 410])
async def test_a_refused_or_vanished_signed_url_is_refreshed(tmp_path: Path, status: int) -> None:
    fresh = b'{"id": "task_1", "status": "SUCCESS", "video_url": "https://cdn.example/new.mp4"}'

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/videos/task_1":
            return httpx.Response(200, content=fresh)
        if request.url.path == "/old.mp4":
            return httpx.Response(status, content=b"<Error><Code>AccessDenied</Code></Error>")
        return video_answer(request)

    recorder = Recorder(answer)
    task = Task("task_1", TaskStatus.COMPLETED, "SUCCESS", video_url="https://cdn.example/old.mp4")
    async with mock_client(recorder) as client:
        result = await client.download(task, tmp_path / "v.mp4")
    assert result.refreshes == 1
    assert [r.url.path for r in recorder.requests] == ["/old.mp4", "/v1/videos/task_1", "/new.mp4"]
    assert [r.headers.get("authorization") for r in recorder.requests] == [
        None,
        "Bearer sk-mock",
        None,
    ]


async def test_a_cdn_429_honours_retry_after(tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(recorder.requests) == 1:
            return httpx.Response(429, headers={"Retry-After": "0"})
        return video_answer(request)

    recorder = Recorder(answer)
    async with mock_client(recorder) as client:
        result = await client.download("https://cdn.example/v.mp4", tmp_path / "v.mp4")
    assert result.attempts == 2


async def test_an_encoded_body_that_cannot_be_decoded_starts_over(tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(recorder.requests) == 1:
            return httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"garbage")
        return video_answer(request)

    recorder = Recorder(answer)
    dest = tmp_path / "v.mp4"
    async with mock_client(recorder) as client:
        result = await client.download("https://cdn.example/v.mp4", dest)
    assert "range" not in recorder.requests[1].headers
    assert dest.read_bytes() == VIDEO and result.attempts == 2


async def test_the_final_name_never_holds_a_partial_file(tmp_path: Path) -> None:
    recorder = Recorder(lambda r: stream_then_break(VIDEO, 300, len(VIDEO)))
    dest = tmp_path / "v.mp4"
    async with mock_client(recorder) as client:
        with pytest.raises(TransferInterrupted):
            await client.download("https://cdn.example/v.mp4", dest, attempts=2)
    assert not dest.exists()
    # The second attempt asked for the rest, got the whole file again (200) and
    # started over: what is kept is the start of the file, never appended twice.
    assert part_path(dest).read_bytes() == VIDEO[:300]


# -- the simulator with the new faults, on a real socket -----------------------------


async def test_a_resume_against_a_server_ignoring_range_restarts_on_a_socket(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    task = await finished_task(client)
    sim.inject(truncate=1, ignore_range=1)
    dest = tmp_path / "v.mp4"
    result = await client.download(task, dest)
    counters = sim.stats()["counters"]
    assert (counters["truncated"], counters["ranges_ignored"]) == (1, 1)
    assert "ranges" not in counters  # no 206 was ever sent
    assert (result.attempts, result.resumed_from) == (2, 0)
    assert result.sha256 == sim.stats()["tasks"][task.id]["sha256"]
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == result.sha256


async def test_content_redirecting_to_the_cdn_sends_it_no_key(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.configure(video_url=False)
    async with fast_client(sim) as client:
        task = await finished_task(client)
        sim.inject(content_redirect=1)
        result = await client.download(task, tmp_path / "v.mp4")
    counters = sim.stats()["counters"]
    assert (counters["content_redirects"], counters["cdn_requests"]) == (1, 1)
    assert counters.get("cdn_authorization_headers", 0) == 0
    assert result.sha256 == sim.stats()["tasks"][task.id]["sha256"]


@pytest.mark.parametrize(
    "source",
    [None, "task:task_OLD", "url:https://cdn.example/other.mp4"],
    ids=["unknown-origin", "another-task", "another-url"],
)
async def test_a_part_of_another_source_is_discarded_not_resumed(
    tmp_path: Path, source: str | None
) -> None:
    dest = tmp_path / "v.mp4"
    seed_part(dest, b"bytes of some other video" * 10, source)
    recorder = Recorder(video_answer)
    async with mock_client(recorder) as client:
        task = Task(
            "task_1", TaskStatus.COMPLETED, "SUCCESS", video_url="https://cdn.example/v.mp4"
        )
        result = await client.download(task, dest)
    assert "range" not in recorder.requests[0].headers
    assert dest.read_bytes() == VIDEO and result.resumed_from == 0
    assert list(tmp_path.iterdir()) == [dest]  # neither .part nor its note is left


async def test_a_resume_sends_if_range_and_a_changed_file_starts_over(tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if len(recorder.requests) == 1:
            broken = stream_then_break(VIDEO, 1000, len(VIDEO))
            broken.headers["etag"] = '"v1"'
            return broken
        # The file changed upstream: If-Range no longer matches, the whole new file.
        assert request.headers["if-range"] == '"v1"'
        assert request.headers["range"] == "bytes=1000-"
        return httpx.Response(200, headers={"etag": '"v2"'}, content=VIDEO[::-1])

    recorder = Recorder(answer)
    dest = tmp_path / "v.mp4"
    async with mock_client(recorder) as client:
        result = await client.download("task_1", dest)
    assert dest.read_bytes() == VIDEO[::-1] and result.resumed_from == 0
    assert list(tmp_path.iterdir()) == [dest]


async def test_an_empty_body_is_no_video(tmp_path: Path) -> None:
    recorder = Recorder(lambda r: httpx.Response(200, headers={"content-type": "video/mp4"}))
    dest = tmp_path / "v.mp4"
    async with mock_client(recorder) as client:
        with pytest.raises(TransferInterrupted, match="empty"):
            await client.download("https://cdn.example/v.mp4", dest, attempts=2)
    assert len(recorder.requests) == 2
    assert list(tmp_path.iterdir()) == []


async def test_an_unusable_bare_url_is_a_download_error_without_any_request(
    tmp_path: Path,
) -> None:
    recorder = Recorder(video_answer)
    async with mock_client(recorder) as client:
        with pytest.raises(DownloadError, match="no usable download URL"):
            await client.download("https://cdn.example/a b.mp4", tmp_path / "v.mp4")
    assert recorder.requests == []


def test_a_full_disk_leaves_no_empty_note_beside_the_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from batchvid.errors import DiskFull
    from batchvid.remote import download

    def no_space(self: Path, *args: object, **kwargs: object) -> int:
        self.touch()  # the file is made, then the write fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(DiskFull):
        download._write_meta(tmp_path / "v.mp4", "task:t1", '"e1"')
    assert list(tmp_path.iterdir()) == []


# -- the check before the final name ---------------------------------------------------------


async def test_a_check_that_never_ends_times_out_in_a_thread_that_holds_up_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is kept aside (paid for), nothing gets the final name, and the thread the
    check was left running in is a daemon: it cannot keep a finished run from exiting."""
    monkeypatch.setattr(check, "CHECK_TIMEOUT_S", 0.2)
    release = threading.Event()
    dest = tmp_path / "v.mp4"
    part_path(dest).write_bytes(b"some bytes")

    def stuck(path: Path) -> None:
        release.wait(30)

    with pytest.raises(Undecodable, match=r"took over 0.2 s; .* kept as v.mp4.undecodable"):
        await download.checked(stuck, part_path(dest), dest)
    left = [t for t in threading.enumerate() if t.name.startswith("batchvid-check")]
    assert left and all(t.daemon for t in left)
    release.set()
    assert not dest.exists() and not part_path(dest).exists()
    assert download.rejected_path(dest).read_bytes() == b"some bytes"


async def test_a_check_failing_for_the_machines_sake_keeps_the_part_for_the_next_try(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "v.mp4"
    part_path(dest).write_bytes(b"some bytes")

    def no_handles(path: Path) -> None:
        raise OSError(24, "Too many open files")

    with pytest.raises(OSError, match="Too many open files"):
        await download.checked(no_handles, part_path(dest), dest)
    assert part_path(dest).read_bytes() == b"some bytes"
    assert not download.rejected_path(dest).exists()
    assert await download.checked(lambda path: path.stat().st_size, part_path(dest), dest) == 10
