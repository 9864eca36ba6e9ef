"""The simulator validates creates as the docs say, in the API's own words, as a client sees it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from client_helpers import (
    FAST,
    JPEG,
    PNG,
    WEBP,
    requests_to,
)

from batchvid.errors import (
    RejectedError,
    TaskNotFound,
)
from batchvid.remote.client import CometClient
from batchvid.request import VideoRequest
from batchvid.sim.server import Simulator

pytestmark = pytest.mark.anyio

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
