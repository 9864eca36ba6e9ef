"""What the client, download and simulator tests share: fast clients, stand-in servers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import httpx

from batchvid.remote.client import CometClient
from batchvid.remote.protocol import Task
from batchvid.request import VideoRequest
from batchvid.sim.server import Simulator

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
