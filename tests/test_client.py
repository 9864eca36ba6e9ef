"""The CometAPI client against the simulator on a real socket (and MockTransport
where the failure cannot be produced by a real server on demand)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from batchvid.api import Task, TaskStatus
from batchvid.client import CometClient
from batchvid.download import TransferInterrupted, part_path
from batchvid.errors import (
    ApiError,
    AuthError,
    DownloadError,
    InDoubtError,
    RateLimited,
    RejectedError,
    RetryableError,
    ServiceRefused,
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


# -- gaps against the docs: answers an independent server may give ---------------

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


class Recorder:
    """A MockTransport handler: answers from a function, remembers every request."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def auth(self) -> list[tuple[str, str | None]]:
        return [(str(r.url), r.headers.get("authorization")) for r in self.requests]


def video_answer(request: httpx.Request, data: bytes = VIDEO) -> httpx.Response:
    """A CDN that honours single ``bytes=N-`` ranges."""
    wanted = request.headers.get("range")
    if wanted:
        first = int(wanted.removeprefix("bytes=").rstrip("-"))
        return httpx.Response(
            206,
            headers={
                "content-range": f"bytes {first}-{len(data) - 1}/{len(data)}",
                "content-type": "video/mp4",
            },
            content=data[first:],
        )
    return httpx.Response(200, headers={"content-type": "video/mp4"}, content=data)


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "task_1", "status": "SUBMITTED"}',
        b'{"task_id": "task_1", "status": "queued"}',
        b'{"id": "task_1", "task_id": "task_1", "status": "queued", "new_field": [1]}',
        b'{"id": "task_1"}',
    ],
    ids=["id", "task_id", "both", "no-status"],
)
async def test_create_reads_id_task_id_or_both(body: bytes) -> None:
    recorder = Recorder(lambda r: httpx.Response(200, content=body))
    async with mock_client(recorder) as client:
        task = await client.create(VideoRequest(prompt="x", model=FAST))
    assert task.id == "task_1" and not task.status.terminal
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"status": "queued", "object": "video"}'),
        (200, b'{"error": {"message": "upstream busy", "type": "server_error"}}'),
        (200, b""),
        (201, b"<html>created</html>"),
        (204, b""),
    ],
    ids=["no-id", "error-object", "empty", "html", "no-content"],
)
async def test_a_2xx_create_without_a_readable_id_is_in_doubt_and_never_repeated(
    status: int, body: bytes
) -> None:
    recorder = Recorder(lambda r: httpx.Response(status, content=body))
    async with mock_client(recorder) as client:
        with pytest.raises(InDoubtError, match="may have been created") as caught:
            await client.create(VideoRequest(prompt="x", model=FAST))
    assert len(recorder.requests) == 1
    assert caught.value.status == status
    if b"upstream busy" in body:
        assert "upstream busy" in str(caught.value)


async def test_an_undecodable_create_answer_is_in_doubt_but_a_poll_is_repeated() -> None:
    def corrupt(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and len(recorder.requests) > 2:
            return httpx.Response(200, content=TASK_BODY)
        return httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"not gzip")

    recorder = Recorder(corrupt)
    async with mock_client(recorder) as client:
        with pytest.raises(InDoubtError, match="decoded"):
            await client.create(VideoRequest(prompt="x", model=FAST))
        assert (await client.retrieve("task_1")).id == "task_1"
    assert [r.method for r in recorder.requests] == ["POST", "GET", "GET"]


async def test_odd_task_bodies_do_not_break_a_poll() -> None:
    body = b'{"id": "task_1", "status": "In_Progress", "progress": NaN, "completed_at": null}'
    async with mock_client(Recorder(lambda r: httpx.Response(200, content=body))) as client:
        task = await client.retrieve("task_1")
    assert (task.status, task.raw_status, task.progress) == (
        TaskStatus.IN_PROGRESS,
        "In_Progress",
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "task_not_exist", "type": "invalid_request_error"}}',
        b'{"code": "task_not_exist", "message": "task_not_exist"}',
        b'{"error": "task_not_exist"}',
    ],
)
async def test_task_not_exist_on_retrieve_in_every_shape(body: bytes) -> None:
    recorder = Recorder(lambda r: httpx.Response(400, content=body))
    async with mock_client(recorder) as client:
        with pytest.raises(TaskNotFound):
            await client.retrieve("task_gone")
    assert len(recorder.requests) == 1  # never retried


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "Invalid token", "type": "invalid_request_error"}}',
        b'{"code": "invalid_api_key", "message": "Invalid token"}',
        b"<html><body>401 Authorization Required</body></html>",
        b"",
    ],
)
async def test_401_in_every_shape_is_auth_error_at_once(body: bytes) -> None:
    recorder = Recorder(lambda r: httpx.Response(401, content=body))
    async with mock_client(recorder) as client:
        with pytest.raises(AuthError):
            await client.create(VideoRequest(prompt="x", model=FAST))
        with pytest.raises(AuthError):
            await client.retrieve("task_1")
    assert len(recorder.requests) == 2


@pytest.mark.parametrize(
    ("headers", "penalty"),
    [
        ({}, None),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # an HTTP-date, long past
        ({"Retry-After": "whenever"}, None),
    ],
    ids=["none", "seconds", "http-date", "unreadable"],
)
async def test_429_with_or_without_retry_after_is_retried(
    headers: dict[str, str], penalty: float | None
) -> None:
    def limited_once(request: httpx.Request) -> httpx.Response:
        if len(recorder.requests) == 1:
            return httpx.Response(429, headers=headers, content=b'{"error": "slow down"}')
        return httpx.Response(200, content=TASK_BODY)

    recorder = Recorder(limited_once)
    gate = CountingGate()
    async with mock_client(recorder, limiter=gate) as client:
        assert (await client.create(VideoRequest(prompt="x", model=FAST))).id == "task_1"
    assert len(recorder.requests) == 2  # a 429 did no work: the create may be repeated
    assert gate.penalties == [penalty]


@pytest.mark.parametrize(
    "body",
    [
        b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
        b"",
        b'{"error": {"message": "upstream timeout", "type": "server_error"}}',
    ],
)
async def test_5xx_pages_of_any_shape_are_retried_then_reported_readably(body: bytes) -> None:
    recorder = Recorder(lambda r: httpx.Response(502, content=body))
    async with mock_client(recorder, max_attempts=3) as client:
        with pytest.raises(RetryableError) as caught:
            await client.retrieve("task_1")
    assert len(recorder.requests) == 3
    assert caught.value.status == 502
    assert "<" not in caught.value.message


async def test_an_api_redirect_on_create_is_refused_not_followed() -> None:
    """A redirect says the base URL is wrong: a ServiceRefused (stop the run), not followed."""
    recorder = Recorder(
        lambda r: httpx.Response(307, headers={"Location": "https://other.example/v1/videos"})
    )
    async with mock_client(recorder) as client:
        with pytest.raises(ServiceRefused, match=r"redirect to https://other\.example"):
            await client.create(VideoRequest(prompt="x", model=FAST))
    assert [str(r.url) for r in recorder.requests] == ["https://api.example/v1/videos"]


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


# -- the key ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sk-abc\ndef", "sk abc", "sk-\u00e9t\u00e9", "sk-\x00"])
async def test_a_key_that_cannot_travel_in_a_header_is_refused_without_echo(key: str) -> None:
    with pytest.raises(AuthError) as caught:
        CometClient("https://api.example", key)
    assert key not in str(caught.value) and key.strip() not in repr(caught.value)


async def test_surrounding_whitespace_of_the_key_is_ignored() -> None:
    recorder = Recorder(lambda r: httpx.Response(200, content=TASK_BODY))
    async with CometClient(
        "https://api.example", "  sk-mock\n", transport=httpx.MockTransport(recorder)
    ) as client:
        await client.retrieve("task_1")
    assert recorder.requests[0].headers["authorization"] == "Bearer sk-mock"


async def test_the_key_is_in_no_error_chain_of_a_failed_request() -> None:
    secret = "sk-mock"

    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError(f"lost while talking to {request.url}", request=request)

    async with mock_client(Recorder(answer), max_attempts=1) as client:
        with pytest.raises(InDoubtError) as caught:
            await client.create(VideoRequest(prompt="x", model=FAST))
    texts: list[str] = []
    exc: BaseException | None = caught.value
    while exc is not None:
        texts += [str(exc), repr(exc)]
        request = getattr(exc, "_request", None)
        if isinstance(request, httpx.Request):
            texts += [repr(request), repr(request.headers)]
        exc = exc.__cause__ or exc.__context__
    assert len(texts) >= 4
    assert not [t for t in texts if secret in t]


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


@pytest.mark.parametrize(
    ("status", "expected"),
    [(504, InDoubtError), (403, ServiceRefused), (404, ServiceRefused), (405, ServiceRefused),
     (402, ServiceRefused), (302, ServiceRefused), (400, RejectedError), (422, RejectedError),
     (503, RetryableError)],
)  # fmt: skip
async def test_create_answers_are_classified_by_whose_fault_they_are(
    status: int, expected: type[Exception]
) -> None:
    """504 may come after the task was made (in doubt, sent once); 403/404/... are the
    endpoint's or account's fault (ServiceRefused); 400/422 are the job's; 503 did no work."""
    recorder = Recorder(lambda request: httpx.Response(status, json={"code": "x", "message": "m"}))
    async with mock_client(recorder, max_attempts=3) as client:
        with pytest.raises(expected) as caught:
            await client.create(VideoRequest(prompt="x", model=FAST))
    assert type(caught.value) is expected
    sent = len(recorder.requests)
    assert sent == (3 if expected is RetryableError else 1), sent
    # A GET is never in doubt, and a refused poll is not a service refusal.
    async with mock_client(recorder, max_attempts=1) as client:
        with pytest.raises(ApiError) as polled:
            await client.retrieve("task_1")
    assert not isinstance(polled.value, InDoubtError | ServiceRefused)
