"""The CometAPI client against the simulator on a real socket (and MockTransport
where a failure cannot be produced by a real server on demand): creates, polls,
retries, what is in doubt, and where the key goes.  Downloads: test_download.py."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import anyio
import httpx
import pytest
from client_helpers import (
    FAST,
    TASK_BODY,
    CountingGate,
    Recorder,
    fast_client,
    finished_task,
    mock_client,
    requests_to,
)

from batchvid.errors import (
    ApiError,
    AuthError,
    InDoubtError,
    RateLimited,
    RejectedError,
    RetryableError,
    ServiceRefused,
    TaskNotFound,
)
from batchvid.remote.client import CometClient
from batchvid.remote.download import part_path
from batchvid.remote.protocol import TaskStatus
from batchvid.request import VideoRequest
from batchvid.sim.server import Simulator

pytestmark = pytest.mark.anyio

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


async def test_before_send_runs_after_the_gate_before_each_attempt(sim: Simulator) -> None:
    gate = CountingGate()
    calls: list[tuple[int, int]] = []  # (gate grants so far, requests the server saw)

    async def before_send() -> None:
        calls.append((gate.acquired, sim.stats()["api_requests"]))

    async with fast_client(sim, limiter=gate) as client:
        sim.inject(server_error=1)
        await client.create(VideoRequest(prompt="x", model=FAST), before_send=before_send)
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
