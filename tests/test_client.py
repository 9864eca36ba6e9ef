"""The CometAPI client against the simulator on a real socket (and MockTransport
where the failure cannot be produced by a real server on demand)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from batchvid.api import Task, TaskStatus
from batchvid.client import CometClient
from batchvid.download import TransferInterrupted, part_path
from batchvid.errors import (
    AuthError,
    DownloadError,
    InDoubtError,
    RateLimited,
    RejectedError,
    RetryableError,
    TaskNotFound,
    UrlExpired,
)
from batchvid.request import VideoRequest
from batchvid.simulator import Simulator

pytestmark = pytest.mark.anyio

FAST = "doubao-seedance-2-0-fast"
PNG = b"\x89PNG\r\n\x1a\n" + b"png-body" * 20
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-body" * 20
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"webp-body" * 20


def fast_client(sim: Simulator, **kwargs: object) -> CometClient:
    options: dict[str, object] = {"wait_initial": 0.01, "wait_max": 0.05, "wait_jitter": 0.01}
    options.update(kwargs)
    return CometClient(sim.base_url, sim.api_key, **options)  # type: ignore[arg-type]


async def finished(client: CometClient, task_id: str) -> Task:
    with anyio.fail_after(10):
        while True:
            task = await client.retrieve(task_id)
            if task.status.terminal:
                return task
            await anyio.sleep(0.01)


async def finished_task(client: CometClient, prompt: str = "a paper boat") -> Task:
    created = await client.create(VideoRequest(prompt=prompt, model=FAST))
    return await finished(client, created.id)


def requests_to(sim: Simulator, method: str, prefix: str) -> list[dict[str, object]]:
    return [
        r
        for r in sim.stats()["requests"]
        if r["method"] == method and str(r["path"]).startswith(prefix)
    ]


class CountingGate:
    """A RequestGate that only counts what the client tells it."""

    def __init__(self) -> None:
        self.acquired = 0
        self.penalties: list[float | None] = []
        self.rewards = 0

    async def acquire(self) -> None:
        self.acquired += 1

    def penalise(self, retry_after: float | None) -> None:
        self.penalties.append(retry_after)

    def reward(self) -> None:
        self.rewards += 1


# -- the happy path ----------------------------------------------------------


async def test_create_poll_download_matches_the_servers_sha256(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    created = await client.create(VideoRequest(prompt="a paper boat", model=FAST, seconds=6))
    assert created.status is TaskStatus.QUEUED
    assert created.raw_status == "SUBMITTED"
    seen: list[TaskStatus] = []
    with anyio.fail_after(10):
        while not (task := await client.retrieve(created.id)).status.terminal:
            seen.append(task.status)
            await anyio.sleep(0.005)
    assert task.status is TaskStatus.COMPLETED and task.progress == 100
    assert task.video_url is not None and task.video_url.startswith(sim.cdn_url)
    assert set(seen) <= {TaskStatus.QUEUED, TaskStatus.IN_PROGRESS}

    dest = tmp_path / "out" / "boat.mp4"
    result = await client.download(task, dest)

    expected = sim.stats()["tasks"][task.id]
    assert result.sha256 == expected["sha256"] == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert result.size == expected["size_bytes"] == dest.stat().st_size
    assert (result.resumed_from, result.attempts, result.refreshes) == (0, 1, 0)
    assert not part_path(dest).exists()
    assert expected["seconds"] == 6 and expected["model"] == FAST


# -- rejections ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (VideoRequest(prompt="", model=FAST), "MissingParameter", "prompt"),
        (VideoRequest(prompt="x", model=""), "MissingParameter", "model"),
        (VideoRequest(prompt="x", model="doubao-seedance-9-0"), "InvalidParameter", "model"),
        (VideoRequest(prompt="x", model=FAST, seconds=16), "InvalidParameter", "duration"),
        (VideoRequest(prompt="x", model=FAST, seconds=3), "InvalidParameter", "duration"),
        (
            VideoRequest(prompt="x", model="doubao-seedance-1-0-pro", seconds=11),
            "InvalidParameter",
            "duration",
        ),
        (VideoRequest(prompt="x", model=FAST, size="17:9"), "InvalidParameter", "size"),
        (
            VideoRequest(prompt="x", model="doubao-seedance-2-0", resolution="1080p"),
            "InvalidParameter",
            "resolution",
        ),
    ],
    ids=[
        "no-prompt",
        "no-model",
        "unknown-model",
        "too-long",
        "too-short",
        "too-long-1.0",
        "bad-size",
        "1080p-on-2.0",
    ],
)
async def test_each_validation_error_is_rejected_with_the_apis_words(
    sim: Simulator, client: CometClient, request_: VideoRequest, code: str, words: str
) -> None:
    with pytest.raises(RejectedError) as caught:
        await client.create(request_)
    assert type(caught.value) is RejectedError
    assert caught.value.status == 400
    assert caught.value.code == code
    assert words in caught.value.message
    assert sim.stats()["creates"] == 0
    assert len(requests_to(sim, "POST", "/v1/videos")) == 1  # a rejection is never retried


async def test_reference_to_a_text_only_model_is_rejected_as_r2v(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    ref = tmp_path / "ref.png"
    ref.write_bytes(PNG)
    request = VideoRequest(prompt="x", model="doubao-seedance-1-5-pro", references=(ref,))
    with pytest.raises(
        RejectedError, match="task_type r2v does not support model seedance-1-5-pro"
    ):
        await client.create(request)
    assert sim.stats()["creates"] == 0


async def test_a_non_image_reference_is_refused_before_anything_is_sent(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    ref = tmp_path / "notes.png"
    ref.write_bytes(b"just some text, not a PNG")
    with pytest.raises(RejectedError, match="not a JPEG, PNG or WebP"):
        await client.create(VideoRequest(prompt="x", model=FAST, references=(ref,)))
    assert sim.stats()["api_requests"] == 0


async def test_references_go_in_order_as_repeated_parts_with_real_types(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    paths = []
    # Names lie about the format on purpose: the content decides the type.
    for name, data in (("one.jpg", PNG), ("two.png", JPEG), ("three.bin", WEBP)):
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(path)
    task = await client.create(
        VideoRequest(prompt="[Image 1] meets [Image 2]", model=FAST, references=tuple(paths))
    )
    refs = sim.stats()["tasks"][task.id]["references"]
    assert [(r["filename"], r["content_type"]) for r in refs] == [
        ("one.jpg", "image/png"),
        ("two.png", "image/jpeg"),
        ("three.bin", "image/webp"),
    ]
    assert [r["sha256"] for r in refs] == [hashlib.sha256(d).hexdigest() for d in (PNG, JPEG, WEBP)]


async def test_unknown_task_is_task_not_found(client: CometClient) -> None:
    with pytest.raises(TaskNotFound):
        await client.retrieve("task_does_not_exist")


# -- vocabularies and shapes -----------------------------------------------------


@pytest.mark.parametrize(
    ("vocabulary", "words"),
    [
        ("upper", {"SUBMITTED", "IN_PROGRESS", "SUCCESS"}),
        ("lower", {"queued", "in_progress", "completed"}),
    ],
)
async def test_both_status_vocabularies_normalise(
    sim: Simulator, client: CometClient, vocabulary: str, words: set[str]
) -> None:
    sim.configure(vocabulary=vocabulary)
    created = await client.create(VideoRequest(prompt="x", model=FAST))
    raw = {created.raw_status}
    with anyio.fail_after(10):
        while not (task := await client.retrieve(created.id)).status.terminal:
            raw.add(task.raw_status)
            await anyio.sleep(0.002)
    raw.add(task.raw_status)
    assert task.status is TaskStatus.COMPLETED
    assert raw <= words
    assert {w for w in words if w.lower() in ("submitted", "queued")} <= raw


@pytest.mark.parametrize("shape", ["openai", "flat"])
async def test_both_error_shapes_give_the_same_exception(
    sim: Simulator, client: CometClient, shape: str
) -> None:
    sim.configure(error_shape=shape)
    with pytest.raises(RejectedError) as caught:
        await client.create(VideoRequest(prompt="x", model=FAST, seconds=99))
    assert (caught.value.status, caught.value.code) == (400, "InvalidParameter")
    assert "duration" in caught.value.message
    with pytest.raises(TaskNotFound):
        await client.retrieve("task_unknown")


async def test_failed_and_error_tasks_keep_their_details(
    sim: Simulator, client: CometClient
) -> None:
    sim.configure(fail_rate=1.0)
    failed = await finished_task(client)
    assert failed.status is TaskStatus.FAILED
    assert failed.error_detail is not None and "OutputVideoSensitive" in failed.error_detail
    sim.configure(fail_rate=0.0, error_rate=1.0)
    errored = await finished_task(client)
    assert errored.status is TaskStatus.ERROR
    assert errored.error_detail is not None and "fail_reason" in errored.error_detail


# -- auth -------------------------------------------------------------------------


async def test_wrong_key_is_auth_error_at_once(sim: Simulator) -> None:
    async with CometClient(sim.base_url, "sk-wrong-key-0123", wait_initial=0.01) as client:
        with pytest.raises(AuthError) as on_create:
            await client.create(VideoRequest(prompt="x", model=FAST))
        with pytest.raises(AuthError):
            await client.retrieve("task_x")
    assert on_create.value.status == 401
    assert "sk-wrong-key-0123" not in str(on_create.value)
    stats = sim.stats()
    assert stats["counters"]["unauthorized"] == 2
    assert stats["api_requests"] == 2  # one each: 401 is never retried
    assert stats["creates"] == 0


async def test_the_key_appears_in_no_repr_error_or_log(
    sim: Simulator, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    secret = "sk-live-abcdef0123456789"
    sim.configure(api_key=secret)
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with fast_client(sim, max_attempts=2) as client:
        seen.append(repr(client))
        task = await finished_task(client)
        await client.download(task, tmp_path / "v.mp4")
        with pytest.raises(TaskNotFound) as not_found:
            await client.retrieve("task_nope")
        sim.inject(server_error=2)
        with pytest.raises(RetryableError) as gave_up:
            await client.retrieve(task.id)
        for caught in (not_found, gave_up):
            seen += [str(caught.value), repr(caught.value), repr(caught.value.__cause__)]
    sim.configure(api_key="another-key")  # now our secret is refused
    async with CometClient(sim.base_url, secret) as refused:
        with pytest.raises(AuthError) as caught_auth:
            await refused.create(VideoRequest(prompt="x", model=FAST))
    seen += [str(caught_auth.value), repr(caught_auth.value)]
    seen += [record.getMessage() for record in caplog.records]
    seen += [repr(record.__dict__) for record in caplog.records]
    assert caplog.records, "expected some log records to inspect"
    assert not [text for text in seen if secret in text]


# -- retryable failures -----------------------------------------------------------


async def test_429_waits_at_least_retry_after(sim: Simulator) -> None:
    gate = CountingGate()
    async with fast_client(sim, limiter=gate) as client:
        task = await client.create(VideoRequest(prompt="x", model=FAST))
        sim.configure(rate_limit=2, rate_window=1.0)  # the create is in the window too
        await client.retrieve(task.id)
        started = time.monotonic()
        await client.retrieve(task.id)
        waited = time.monotonic() - started
    statuses = [r["status"] for r in requests_to(sim, "GET", "/v1/videos/")]
    assert statuses == [200, 429, 200]
    log = requests_to(sim, "GET", "/v1/videos/")
    assert waited >= 1.0
    assert float(log[2]["t"]) - float(log[1]["t"]) >= 0.999  # type: ignore[arg-type]
    assert gate.penalties == [1.0]
    assert gate.acquired == 4  # create, poll, poll, its retry
    assert gate.rewards == 3


async def test_a_retry_after_beyond_the_cap_is_handed_to_the_caller(sim: Simulator) -> None:
    async with fast_client(sim, max_retry_after=5.0) as client:
        task = await client.create(VideoRequest(prompt="x", model=FAST))
        sim.configure(rate_limit=2, rate_window=60.0, retry_after=30.0)
        await client.retrieve(task.id)
        with pytest.raises(RateLimited) as caught:
            await client.retrieve(task.id)
    assert caught.value.retry_after == 30.0
    assert sim.stats()["counters"]["rate_limited"] == 1


async def test_5xx_is_retried_until_it_succeeds(sim: Simulator, client: CometClient) -> None:
    task = await client.create(VideoRequest(prompt="x", model=FAST))
    sim.inject(server_error=2)
    assert (await client.retrieve(task.id)).id == task.id
    statuses = [r["status"] for r in requests_to(sim, "GET", "/v1/videos/")]
    assert statuses[:2] != [200, 200] and all(s >= 500 for s in statuses[:2])
    assert statuses[2] == 200 and len(statuses) == 3


async def test_5xx_on_create_is_retried_without_duplicating_the_task(
    sim: Simulator, client: CometClient
) -> None:
    sim.inject(server_error=1)
    await client.create(VideoRequest(prompt="x", model=FAST))
    stats = sim.stats()
    assert (stats["creates"], stats["duplicate_creates"]) == (1, 0)
    assert [r["status"] >= 500 for r in requests_to(sim, "POST", "/v1/videos")] == [True, False]


async def test_5xx_every_time_gives_up_after_max_attempts(sim: Simulator) -> None:
    sim.configure(p_5xx=1.0)
    async with fast_client(sim, max_attempts=3) as client:
        with pytest.raises(RetryableError) as caught:
            await client.retrieve("task_x")
    assert caught.value.status is not None and caught.value.status >= 500
    assert sim.stats()["api_requests"] == 3


# -- in doubt ------------------------------------------------------------------


async def test_drop_after_create_is_in_doubt_and_never_retried(
    sim: Simulator, client: CometClient
) -> None:
    sim.inject(drop_after_create=1)
    with pytest.raises(InDoubtError) as caught:
        await client.create(VideoRequest(prompt="x", model=FAST))
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError | httpx.ReadError)
    stats = sim.stats()
    assert (stats["creates"], stats["counters"]["drops"]) == (1, 1)  # the task is real
    assert [r["status"] for r in requests_to(sim, "POST", "/v1/videos")] == [0]  # sent once


async def test_a_create_answered_after_the_read_timeout_is_in_doubt(sim: Simulator) -> None:
    sim.configure(create_delay=0.4)
    async with fast_client(sim, timeout=httpx.Timeout(5.0, read=0.1)) as client:
        with pytest.raises(InDoubtError) as caught:
            await client.create(VideoRequest(prompt="x", model=FAST))
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert sim.stats()["creates"] == 1
    assert len(requests_to(sim, "POST", "/v1/videos")) == 1


def mock_client(
    handler: Callable[[httpx.Request], Awaitable[httpx.Response]], **kwargs: object
) -> CometClient:
    options: dict[str, object] = {"wait_initial": 0.001, "wait_max": 0.01, "wait_jitter": 0.001}
    options.update(kwargs)
    return CometClient(
        "https://api.example",
        "sk-mock",
        transport=httpx.MockTransport(handler),
        **options,  # type: ignore[arg-type]
    )


TASK_BODY = b'{"id": "task_1", "status": "queued", "progress": 0}'


async def test_before_send_runs_after_the_gate_before_each_attempt(sim: Simulator) -> None:
    gate = CountingGate()
    calls: list[tuple[int, int]] = []  # (gate grants so far, requests the server saw)
    async with fast_client(sim, limiter=gate) as client:
        sim.inject(server_error=1)
        await client.create(
            VideoRequest(prompt="x", model=FAST),
            before_send=lambda: calls.append((gate.acquired, sim.stats()["api_requests"])),
        )
    assert calls == [(1, 0), (2, 1)]


async def test_create_is_retried_only_when_it_never_left() -> None:
    calls: list[str] = []

    async def refuse_then_answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, content=TASK_BODY)

    async with mock_client(refuse_then_answer) as client:
        task = await client.create(VideoRequest(prompt="x", model=FAST))
    assert task.id == "task_1" and calls == ["POST", "POST"]


@pytest.mark.parametrize(
    "failure", [httpx.ReadTimeout, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError]
)
async def test_create_lost_after_sending_is_in_doubt_but_a_poll_is_retried(
    failure: type[httpx.TransportError],
) -> None:
    calls: list[str] = []

    async def lose_first(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:
            raise failure("lost", request=request)
        return httpx.Response(200, content=TASK_BODY)

    async with mock_client(lose_first) as client:
        with pytest.raises(InDoubtError):
            await client.create(VideoRequest(prompt="x", model=FAST))
        assert calls == ["POST"]
        calls.clear()
        assert (await client.retrieve("task_1")).id == "task_1"
        assert calls == ["GET", "GET"]


async def test_an_unreadable_create_answer_is_in_doubt() -> None:
    async def gibberish(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>welcome</html>")

    async with mock_client(gibberish) as client:
        with pytest.raises(InDoubtError, match="could not be read"):
            await client.create(VideoRequest(prompt="x", model=FAST))


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


async def test_refreshing_is_bounded(sim: Simulator, tmp_path: Path) -> None:
    sim.configure(url_ttl=0.0)
    async with fast_client(sim, max_refreshes=2) as client:
        task = await finished_task(client)
        with pytest.raises(UrlExpired):
            await client.download(task, tmp_path / "v.mp4")
        with pytest.raises(UrlExpired):  # a bare URL cannot be refreshed at all
            await client.download(task.video_url or "", tmp_path / "w.mp4")
    assert sim.stats()["counters"]["cdn_refused"] == 3 + 1


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


# -- where the key goes ---------------------------------------------------------


async def test_the_cdn_sees_no_authorization_header(
    sim: Simulator, client: CometClient, tmp_path: Path
) -> None:
    for n in range(3):
        task = await finished_task(client, prompt=f"take {n}")
        await client.download(task, tmp_path / f"{n}.mp4")
    counters = sim.stats()["counters"]
    assert counters["cdn_requests"] == 3
    assert counters.get("cdn_authorization_headers", 0) == 0
    # The counter does count: a careless client would be caught.
    async with httpx.AsyncClient() as careless:
        await careless.get(task.video_url or "", headers={"Authorization": "Bearer x"})
    assert sim.stats()["counters"]["cdn_authorization_headers"] == 1


async def test_bearer_token_only_goes_to_the_api_origin(tmp_path: Path) -> None:
    seen: dict[str, str | None] = {}

    async def record(request: httpx.Request) -> httpx.Response:
        seen[str(request.url)] = request.headers.get("authorization")
        if request.url.path.endswith("/content"):
            return httpx.Response(302, headers={"Location": "https://cdn.example/r.mp4"})
        return httpx.Response(200, stream=httpx.ByteStream(b"video-bytes"))

    async with mock_client(record) as client:
        for n, url in enumerate(
            [
                "https://cdn.example/v.mp4?sig=1",
                "https://api.example:8443/v.mp4",  # same host, other port
                "http://api.example/v.mp4",  # same host, other scheme
                "https://API.example/v.mp4",  # the API's own origin
            ]
        ):
            await client.download(url, tmp_path / f"{n}.mp4")
        await client.download("task_1", tmp_path / "content.mp4")  # redirects to the CDN
    assert seen == {
        "https://cdn.example/v.mp4?sig=1": None,
        "https://api.example:8443/v.mp4": None,
        "http://api.example/v.mp4": None,
        "https://api.example/v.mp4": "Bearer sk-mock",
        "https://api.example/v1/videos/task_1/content": "Bearer sk-mock",
        "https://cdn.example/r.mp4": None,
    }


async def test_the_gate_sees_every_api_request_and_no_cdn_download(
    sim: Simulator, tmp_path: Path
) -> None:
    gate = CountingGate()
    async with fast_client(sim, limiter=gate) as client:
        sim.inject(server_error=1)
        task = await finished_task(client)
        before = gate.acquired
        await client.download(task, tmp_path / "v.mp4")
        assert gate.acquired == before
    api = [r for r in sim.stats()["requests"] if str(r["path"]).startswith("/v1/")]
    assert gate.acquired == len(api)
    assert gate.rewards == sum(1 for r in api if r["status"] == 200)


async def test_base_url_may_end_in_v1(sim: Simulator) -> None:
    async with CometClient(sim.base_url + "/v1/", sim.api_key) as client:
        assert client.base_url == sim.base_url
        with pytest.raises(TaskNotFound):
            await client.retrieve("task_x")
