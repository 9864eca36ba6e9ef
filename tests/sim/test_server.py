"""The built-in simulator, spoken to with plain httpx over a real socket."""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from batchvid.catalogue import MODELS
from batchvid.cli.simulator import simulator as simulator_command
from batchvid.remote.protocol import FilePart, encode_multipart
from batchvid.sim.config import KNOB_HELP, SimConfig
from batchvid.sim.requests import parse_range
from batchvid.sim.server import Simulator
from batchvid.sim.state import max_in_window, render_seconds

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
FAST = "doubao-seedance-2-0-fast"
LOWER = {"queued", "in_progress", "completed", "failed", "error"}
UPPER = {"SUBMITTED", "IN_PROGRESS", "SUCCESS", "FAILED", "ERROR"}


@pytest.fixture
def http(sim_thread: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sim_thread.base_url,
        headers={"Authorization": f"Bearer {sim_thread.api_key}"},
        timeout=5,
    ) as client:
        yield client


def post_create(
    http: httpx.Client, fields: Mapping[str, str], references: tuple[bytes, ...] = ()
) -> httpx.Response:
    files = [
        FilePart("input_reference", f"r{n}.png", "image/png", r) for n, r in enumerate(references)
    ]
    content_type, body = encode_multipart(fields, files)
    return http.post("/v1/videos", content=body, headers={"Content-Type": content_type})


def wait_done(http: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    """Every answer from the first poll to the terminal one."""
    bodies: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = http.get(f"/v1/videos/{task_id}").json()
        bodies.append(body)
        if body["status"] in ("SUCCESS", "completed", "FAILED", "failed", "ERROR", "error"):
            return bodies
        time.sleep(0.003)
    raise AssertionError("the task never finished")


def new_task(http: httpx.Client, prompt: str = "a lighthouse at dusk") -> str:
    response = post_create(http, {"prompt": prompt, "model": FAST})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


# -- creates -------------------------------------------------------------------


def test_the_docs_curl_example_with_quoted_values_is_accepted(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    fields = {
        "prompt": '"A paper boat drifting on a calm lake at sunrise"',
        "model": '"doubao-seedance-2-0"',
        "seconds": '"5"',
        "size": '"16:9"',
        "resolution": '"720p"',
    }
    response = post_create(http, fields)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == body["task_id"] and body["id"].startswith("task_")
    assert (body["object"], body["status"], body["progress"]) == ("video", "SUBMITTED", 0)
    assert isinstance(body["created_at"], int)
    task = sim_thread.stats()["tasks"][body["id"]]
    assert (task["prompt"], task["model"]) == (
        "A paper boat drifting on a calm lake at sunrise",
        "doubao-seedance-2-0",
    )


def test_omitted_fields_take_the_documented_defaults(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    task_id = new_task(http)
    task = sim_thread.stats()["tasks"][task_id]
    assert (task["seconds"], task["size"], task["resolution"]) == (5, "16:9", "720p")


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"model": FAST}, "MissingParameter", "prompt"),
        ({"prompt": "  ", "model": FAST}, "MissingParameter", "prompt"),
        ({"prompt": "x"}, "MissingParameter", "model"),
        ({"prompt": "x", "model": "sora-2"}, "InvalidParameter", "model sora-2"),
        ({"prompt": "x", "model": FAST, "seconds": "16"}, "InvalidParameter", "duration"),
        ({"prompt": "x", "model": FAST, "seconds": "3"}, "InvalidParameter", "duration"),
        ({"prompt": "x", "model": FAST, "seconds": "4.5"}, "InvalidParameter", "duration"),
        (
            {"prompt": "x", "model": "doubao-seedance-1-5-pro", "seconds": "13"},
            "InvalidParameter",
            "duration",
        ),
        (
            {"prompt": "x", "model": "doubao-seedance-1-0-pro", "seconds": "1"},
            "InvalidParameter",
            "duration",
        ),
        ({"prompt": "x", "model": FAST, "size": "16:10"}, "InvalidParameter", "size"),
        ({"prompt": "x", "model": FAST, "size": "1280X720"}, "InvalidParameter", "size"),
        ({"prompt": "x", "model": FAST, "resolution": "1080p"}, "InvalidParameter", "1080p"),
        (
            {"prompt": "x", "model": "doubao-seedance-2-0", "resolution": "1080p"},
            "InvalidParameter",
            "resolution",
        ),
        (
            {"prompt": "x", "model": "doubao-seedance-1-5-pro", "resolution": "4k"},
            "InvalidParameter",
            "resolution",
        ),
    ],
)
def test_invalid_creates_are_refused_like_the_docs_say(
    sim_thread: Simulator, http: httpx.Client, fields: dict[str, str], code: str, words: str
) -> None:
    response = post_create(http, fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert words in error["message"]
    assert sim_thread.stats()["creates"] == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": "x", "model": "doubao-seedance-1-0-pro", "seconds": "2"},
        {"prompt": "x", "model": "doubao-seedance-1-0-pro", "resolution": "1080p"},
        {"prompt": "x", "model": "doubao-seedance-1-5-pro", "seconds": "12", "size": "21:9"},
        {"prompt": "x", "model": "doubao-seedance-2-0", "seconds": "15", "size": "1920x1080"},
        {"prompt": "x", "model": FAST, "seconds": "4", "resolution": "480p", "size": "9:16"},
    ],
)
def test_creates_at_the_edges_of_the_model_table_are_accepted(
    http: httpx.Client, fields: dict[str, str]
) -> None:
    assert post_create(http, fields).status_code == 200


def test_references_only_on_image_to_video_models_and_only_images(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    refused = post_create(http, {"prompt": "x", "model": "doubao-seedance-1-5-pro"}, (PNG,))
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "the specified task_type r2v does not support model seedance-1-5-pro"
    )
    not_image = post_create(http, {"prompt": "x", "model": FAST}, (PNG, b"%PDF-1.7 not an image"))
    assert not_image.status_code == 400
    assert "input_reference 2" in not_image.json()["error"]["message"]
    accepted = post_create(http, {"prompt": "x", "model": FAST}, (PNG, PNG))
    assert accepted.status_code == 200
    assert sim_thread.stats()["creates"] == 1


def test_a_create_that_is_not_multipart_is_refused(http: httpx.Client) -> None:
    response = http.post("/v1/videos", json={"prompt": "x", "model": FAST})
    assert response.status_code == 400
    assert "multipart" in response.json()["error"]["message"]


# -- auth and unknown tasks ---------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "sim-key"}]
)
def test_missing_or_wrong_key_is_401(sim_thread: Simulator, headers: dict[str, str]) -> None:
    content_type, body = encode_multipart({"prompt": "x", "model": FAST}, [])
    with httpx.Client(base_url=sim_thread.base_url) as anonymous:
        created = anonymous.post(
            "/v1/videos", content=body, headers={"Content-Type": content_type, **headers}
        )
        polled = anonymous.get("/v1/videos/task_x", headers=headers)
    assert (created.status_code, polled.status_code) == (401, 401)
    assert created.json()["error"]["type"] == "authentication_error"
    stats = sim_thread.stats()
    assert stats["creates"] == 0 and stats["counters"]["unauthorized"] == 2


def test_unknown_task_is_400_task_not_exist_in_either_shape(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    openai = http.get("/v1/videos/task_nope")
    sim_thread.configure(error_shape="flat")
    flat = http.get("/v1/videos/task_nope")
    assert (openai.status_code, flat.status_code) == (400, 400)
    assert openai.json() == {
        "error": {
            "message": "task_not_exist",
            "type": "invalid_request_error",
            "code": "task_not_exist",
        }
    }
    assert flat.json() == {"code": "task_not_exist", "message": "task_not_exist"}
    assert sim_thread.stats()["polls"] == {"task_nope": 2}


def test_mixed_error_shapes_use_both(sim_thread: Simulator, http: httpx.Client) -> None:
    sim_thread.configure(error_shape="mixed")
    shapes = {"error" in http.get("/v1/videos/task_nope").json() for _ in range(30)}
    assert shapes == {True, False}


# -- the render clock ----------------------------------------------------------------


@pytest.mark.parametrize(("vocabulary", "words"), [("upper", UPPER), ("lower", LOWER)])
def test_a_task_rises_through_its_states_in_one_vocabulary(
    sim_thread: Simulator, http: httpx.Client, vocabulary: str, words: set[str]
) -> None:
    sim_thread.configure(vocabulary=vocabulary, time_scale=0.002)
    created = post_create(http, {"prompt": "x", "model": FAST}).json()
    bodies = wait_done(http, created["id"])
    statuses = [created["status"]] + [b["status"] for b in bodies]
    assert set(statuses) <= words
    order = [
        {"SUBMITTED": 0, "queued": 0}.get(s, 1 if s.lower() == "in_progress" else 2)
        for s in statuses
    ]
    assert order == sorted(order) and order[-1] == 2 and 1 in order
    progress = [b["progress"] for b in bodies]
    assert progress == sorted(progress) and progress[-1] == 100
    final = bodies[-1]
    assert final["completed_at"] >= final["created_at"]
    assert "video_url" in final and all("video_url" not in b for b in bodies[:-1])


def test_mixed_vocabulary_uses_both(sim_thread: Simulator, http: httpx.Client) -> None:
    sim_thread.configure(vocabulary="mixed", time_scale=1.0)
    task_id = new_task(http)
    seen = {http.get(f"/v1/videos/{task_id}").json()["status"] for _ in range(30)}
    assert seen == {"SUBMITTED", "queued"}


def test_failed_and_error_outcomes(sim_thread: Simulator, http: httpx.Client) -> None:
    sim_thread.configure(fail_rate=1.0)
    failed = wait_done(http, new_task(http))[-1]
    sim_thread.configure(fail_rate=0.0, error_rate=1.0)
    errored_id = new_task(http)
    errored = wait_done(http, errored_id)[-1]
    assert failed["status"] == "FAILED" and failed["error"]["code"]
    assert errored["status"] == "ERROR" and errored["fail_reason"]
    assert errored["progress"] < 100
    assert "video_url" not in failed and "video_url" not in errored
    content = http.get(f"/v1/videos/{errored_id}/content")
    assert content.status_code == 400


def test_a_hanging_task_renders_longer_and_a_vanishing_one_is_forgotten_when_done(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    sim_thread.configure(hang_rate=1.0, hang_factor=20.0)
    hung = new_task(http, "one that hangs")
    sim_thread.configure(hang_rate=0.0, vanish_rate=1.0)
    gone = new_task(http, "one that vanishes")
    tasks = sim_thread.stats()["tasks"]
    assert tasks[hung]["hangs"] and not tasks[hung]["vanishes"]
    assert tasks[gone]["vanishes"] and not tasks[gone]["hangs"]
    assert tasks[hung]["duration_s"] == pytest.approx(20 * tasks[gone]["duration_s"], rel=0.4)
    assert http.get(f"/v1/videos/{gone}").status_code == 200  # known while it renders
    deadline = time.monotonic() + 10
    while (answer := http.get(f"/v1/videos/{gone}")).status_code == 200:
        assert answer.json()["status"] in ("SUBMITTED", "IN_PROGRESS"), "never seen done"
        assert time.monotonic() < deadline
        time.sleep(0.003)
    assert answer.status_code == 400 and "task_not_exist" in answer.text
    assert http.get(f"/v1/videos/{gone}/content").status_code == 400


def test_seeded_fates_follow_the_request_not_the_order_of_creates(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    """A seeded simulator gives the n-th create of one request the same outcome, whatever
    was created before it: retries interleaved by timing stay repeatable."""
    sim_thread.configure(error_rate=0.5)
    prompts = [f"fate {i}" for i in range(12)]

    def outcomes(order: list[str]) -> dict[str, str]:
        sim_thread.reset()
        sim_thread.configure(error_rate=0.5)
        made = {prompt: new_task(http, prompt) for prompt in order}
        tasks = sim_thread.stats()["tasks"]
        return {prompt: tasks[task]["outcome"] for prompt, task in made.items()}

    forwards = outcomes(prompts)
    assert outcomes(prompts[::-1]) == forwards
    assert set(forwards.values()) == {"completed", "error"}


def test_render_time_follows_model_seconds_and_resolution() -> None:
    for model in MODELS:
        assert 60 <= render_seconds(model, 5, "720p") <= 180  # the docs' 1-3 minutes
        assert render_seconds(model, 10, "720p") > render_seconds(model, 5, "720p")
        assert render_seconds(model, 5, "480p") < render_seconds(model, 5, "720p")
    assert render_seconds(FAST, 5, "720p") < render_seconds("doubao-seedance-2-0", 5, "720p")
    assert render_seconds("doubao-seedance-1-0-pro", 5, "1080p") > render_seconds(
        "doubao-seedance-1-0-pro", 5, "720p"
    )


def test_time_scale_and_spread_shape_each_render(sim_thread: Simulator, http: httpx.Client) -> None:
    sim_thread.configure(time_scale=0.01, spread=0.12)
    task_ids = [new_task(http, f"take {n}") for n in range(12)]
    tasks = sim_thread.stats()["tasks"]
    durations = [tasks[task_id]["duration_s"] for task_id in task_ids]
    nominal = render_seconds(FAST, 5, "720p") * 0.01
    cut = math.exp(2.5 * 0.12)  # the log-normal spread is cut at 2.5 sigma
    assert all(nominal / cut - 1e-3 <= d <= nominal * cut + 1e-3 for d in durations)
    assert len(set(durations)) > 1
    sim_thread.configure(spread=0)
    same = [new_task(http, f"same {n}") for n in range(3)]
    tasks = sim_thread.stats()["tasks"]
    assert {tasks[task_id]["duration_s"] for task_id in same} == {round(nominal, 4)}


# -- the CDN ---------------------------------------------------------------------------


def finished_url(sim: Simulator, http: httpx.Client) -> tuple[str, str]:
    task_id = new_task(http)
    return task_id, str(wait_done(http, task_id)[-1]["video_url"])


def test_signed_url_serves_the_tasks_own_video(sim_thread: Simulator, http: httpx.Client) -> None:
    task_id, url = finished_url(sim_thread, http)
    assert url.startswith(sim_thread.cdn_url) and sim_thread.cdn_url != sim_thread.base_url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    assert (
        hashlib.sha256(response.content).hexdigest()
        == sim_thread.stats()["tasks"][task_id]["sha256"]
    )
    assert task_id.encode() in response.content


def test_tampered_or_expired_urls_are_403(sim_thread: Simulator, http: httpx.Client) -> None:
    task_id, url = finished_url(sim_thread, http)
    tampered = httpx.get(url[:-4] + ("0000" if not url.endswith("0000") else "1111"))
    other_task = httpx.get(url.replace(task_id, "task_0000000000000000"))
    assert (tampered.status_code, other_task.status_code) == (403, 403)
    assert b"SignatureDoesNotMatch" in tampered.content
    sim_thread.configure(url_ttl=0.05)
    short_lived = str(http.get(f"/v1/videos/{task_id}").json()["video_url"])
    time.sleep(0.1)
    expired = httpx.get(short_lived)
    assert expired.status_code == 403 and b"expired" in expired.content
    sim_thread.configure(url_ttl=60.0)
    fresh = str(http.get(f"/v1/videos/{task_id}").json()["video_url"])
    assert fresh != short_lived
    assert httpx.get(fresh).status_code == 200  # re-querying the task gives a working URL


def test_range_requests(sim_thread: Simulator, http: httpx.Client) -> None:
    _, url = finished_url(sim_thread, http)
    whole = httpx.get(url).content
    size = len(whole)
    tail = httpx.get(url, headers={"Range": "bytes=100-"})
    assert tail.status_code == 206
    assert tail.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
    assert tail.content == whole[100:]
    head = httpx.get(url, headers={"Range": "bytes=0-9"})
    assert (head.status_code, head.content) == (206, whole[:10])
    suffix = httpx.get(url, headers={"Range": "bytes=-16"})
    assert suffix.content == whole[-16:]
    beyond = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    only_headers = httpx.head(url)
    assert only_headers.status_code == 200 and only_headers.content == b""
    assert int(only_headers.headers["content-length"]) == size
    assert sim_thread.stats()["counters"]["ranges"] == 3


def test_parse_range_edge_cases() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-", 100) == (0, 99)
    assert parse_range("bytes=10-500", 100) == (10, 99)
    assert parse_range("bytes=-500", 100) == (0, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None  # multiple ranges: whole file
    assert parse_range("bytes=100-", 100) == "bad"
    assert parse_range("bytes=5-2", 100) == "bad"
    assert parse_range("items=0-1", 100) is None


def test_truncated_download_announces_everything_and_sends_half(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    _, url = finished_url(sim_thread, http)
    sim_thread.inject(truncate=1)
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as response:
        announced = int(response.headers["content-length"])
        for chunk in response.iter_raw():
            received += chunk
    assert 0 < len(received) < announced
    assert sim_thread.stats()["counters"]["truncated"] == 1


def test_slow_polls_and_slow_downloads_answer_late(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    """``poll_delay`` holds a lookup's answer back; ``cdn_delay`` pauses halfway through a
    video (what a worker killed mid-poll or mid-download is caught in)."""
    task_id, url = finished_url(sim_thread, http)
    sim_thread.configure(poll_delay=30.0, cdn_delay=30.0)
    try:
        with pytest.raises(httpx.ReadTimeout):
            http.get(f"/v1/videos/{task_id}", timeout=0.5)
        received = bytearray()
        with (
            pytest.raises(httpx.ReadTimeout),
            httpx.stream("GET", url, timeout=0.5) as response,
        ):
            announced = int(response.headers["content-length"])
            for chunk in response.iter_raw():
                received += chunk
        assert len(received) == announced // 2  # the first half came at once
    finally:
        sim_thread.configure(poll_delay=0.0, cdn_delay=0.0)
    assert http.get(f"/v1/videos/{task_id}").json()["id"] == task_id
    assert len(httpx.get(url).content) == announced


def test_ignore_range_answers_the_whole_file_with_200(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    _, url = finished_url(sim_thread, http)
    whole = httpx.get(url).content
    sim_thread.inject(ignore_range=1)
    ignored = httpx.get(url, headers={"Range": "bytes=100-"})
    assert (ignored.status_code, ignored.content) == (200, whole)
    assert "content-range" not in ignored.headers
    assert httpx.get(url, headers={"Range": "bytes=100-"}).status_code == 206  # one-shot
    counters = sim_thread.stats()["counters"]
    assert (counters["ranges_ignored"], counters["ranges"]) == (1, 1)


def test_content_redirect_sends_the_client_to_the_signed_cdn_url(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    task_id, _ = finished_url(sim_thread, http)
    sim_thread.configure(p_content_redirect=1.0)
    moved = http.get(f"/v1/videos/{task_id}/content", follow_redirects=False)
    assert moved.status_code == 302
    location = moved.headers["location"]
    assert location.startswith(sim_thread.cdn_url + f"/v/{task_id}.mp4?")
    video = httpx.get(location)
    assert (
        hashlib.sha256(video.content).hexdigest() == sim_thread.stats()["tasks"][task_id]["sha256"]
    )
    assert sim_thread.stats()["counters"]["content_redirects"] == 1


def test_cdn_errors_are_5xx_in_xml(sim_thread: Simulator, http: httpx.Client) -> None:
    _, url = finished_url(sim_thread, http)
    sim_thread.inject(cdn_error=1)
    failed = httpx.get(url)
    assert failed.status_code in (500, 502, 503)
    assert failed.headers["content-type"].startswith("application/xml")
    assert httpx.get(url).status_code == 200


def test_content_route_needs_the_key_and_a_finished_task(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    task_id, _ = finished_url(sim_thread, http)
    assert httpx.get(f"{sim_thread.base_url}/v1/videos/{task_id}/content").status_code == 401
    response = http.get(f"/v1/videos/{task_id}/content")
    assert response.status_code == 200
    assert (
        hashlib.sha256(response.content).hexdigest()
        == sim_thread.stats()["tasks"][task_id]["sha256"]
    )
    sim_thread.configure(time_scale=1.0)
    pending = http.get(f"/v1/videos/{new_task(http)}/content")
    assert pending.status_code == 400
    assert pending.json()["error"]["code"] == "invalid_request_error"


# -- faults ----------------------------------------------------------------------------


def test_drop_after_create_makes_the_task_and_answers_nothing(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    sim_thread.inject(drop_after_create=1)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        post_create(http, {"prompt": "x", "model": FAST})
    stats = sim_thread.stats()
    assert stats["creates"] == 1 and stats["counters"]["drops"] == 1
    assert post_create(http, {"prompt": "x", "model": FAST}).status_code == 200


def test_injected_5xx_does_no_work(sim_thread: Simulator, http: httpx.Client) -> None:
    sim_thread.inject(server_error=2)
    first = post_create(http, {"prompt": "x", "model": FAST})
    second = http.get("/v1/videos/task_x")
    assert first.status_code >= 500 and second.status_code >= 500
    assert first.json()["error"]["type"] == "server_error"
    stats = sim_thread.stats()
    assert (stats["creates"], stats["polls"], stats["counters"]["server_errors"]) == (0, {}, 2)


def test_rate_limit_answers_429_with_retry_after_and_holds_the_window(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    sim_thread.configure(rate_limit=3, rate_window=0.5)
    answers = [http.get("/v1/videos/task_x") for _ in range(8)]
    limited = [a for a in answers if a.status_code == 429]
    assert len(limited) == 5
    assert limited[0].headers["retry-after"] == "1"  # whole seconds, rounded up
    assert limited[0].json()["error"]["code"] == "rate_limit_exceeded"
    admitted = [r["t"] for r in sim_thread.stats()["requests"] if r["status"] != 429]
    assert max_in_window(admitted, 0.5) <= 3
    sim_thread.configure(retry_after_style="date", retry_after=5.0)
    dated = http.get("/v1/videos/task_x").headers["retry-after"]
    assert email.utils.parsedate_to_datetime(dated).timestamp() > time.time() + 3
    sim_thread.configure(retry_after_style="none")
    assert "retry-after" not in http.get("/v1/videos/task_x").headers
    assert sim_thread.stats()["counters"]["rate_limited"] == 7


def test_max_in_window() -> None:
    assert max_in_window([], 1.0) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert max_in_window([3.0, 0.0, 1.0, 2.0], 1.0) == 1


# -- counters and admin -----------------------------------------------------------------


def test_counters_find_duplicate_creates_and_count_polls(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    same = {"prompt": "x", "model": FAST}
    first = post_create(http, same, (PNG,)).json()["id"]
    post_create(http, same, (PNG,))
    post_create(http, same, (PNG + b"\x01",))  # other reference bytes: another request
    for _ in range(3):
        http.get(f"/v1/videos/{first}")
    http.get("/_sim/stats")
    stats = sim_thread.stats()
    assert stats["creates"] == 3 and stats["duplicate_creates"] == 1
    assert sorted(stats["creates_by_fingerprint"].values()) == [1, 2]
    assert stats["polls"] == {first: 3}
    assert stats["api_requests"] == 6 == len(stats["request_times"])  # /_sim is not counted


def test_admin_routes_change_knobs_queue_faults_and_reset(
    sim_thread: Simulator, http: httpx.Client
) -> None:
    admin = sim_thread.admin_url
    changed = httpx.post(f"{admin}/config", json={"p_5xx": 0.25, "vocabulary": "lower"})
    assert changed.status_code == 200
    assert (changed.json()["p_5xx"], changed.json()["vocabulary"]) == (0.25, "lower")
    assert sim_thread.config.p_5xx == 0.25
    assert httpx.post(f"{admin}/config", json={"p_5xx": 2}).status_code == 400
    assert httpx.post(f"{admin}/config", json={"no_such_knob": 1}).status_code == 400
    assert httpx.post(f"{admin}/inject", json={"meteor": 1}).status_code == 400
    assert httpx.post(f"{admin}/inject", json={"truncate": 2}).json() == {
        "pending_faults": {"truncate": 2}
    }
    new_task(http)
    stats = httpx.get(f"{admin}/stats").json()
    assert stats["config"]["api_key"] == "***"
    assert httpx.post(f"{admin}/reset").status_code == 200
    after = sim_thread.stats()
    assert after["creates"] == 0 and after["config"]["p_5xx"] == 0.0 and not after["pending_faults"]


def test_config_refuses_nonsense() -> None:
    for bad in ({"p_5xx": 1.5}, {"fail_rate": 0.7, "error_rate": 0.7}, {"vocabulary": "shouty"}):
        with pytest.raises(ValueError):
            SimConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown knob"):
        SimConfig().with_changes(speed=2)


# -- the video itself ----------------------------------------------------------------------


def decoded(path: Path) -> tuple[str, str, float, int] | None:
    """``(codec, "WxH", seconds, frames decoded)``, or ``None`` when the file does not
    decode: by ffprobe when installed (a decoder that is not batchvid's), else by PyAV
    directly (not through ``batchvid.media``), so the check always runs."""
    if shutil.which("ffprobe"):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
             "stream=codec_name,width,height,nb_read_frames:format=duration", "-of", "json",
             str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        found = json.loads(probe.stdout or "{}")
        if probe.returncode or not found.get("streams") or probe.stderr:
            return None
        s = found["streams"][0]
        size = f"{s['width']}x{s['height']}"
        return s["codec_name"], size, float(found["format"]["duration"]), int(s["nb_read_frames"])
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            size = f"{stream.codec_context.width}x{stream.codec_context.height}"
            seconds = (container.duration or 0) / av.time_base
            return stream.codec_context.name, size, round(seconds, 3), frames
    except (av.error.FFmpegError, IndexError):
        return None


def test_every_tasks_video_is_a_playable_distinct_mp4(
    sim_thread: Simulator, http: httpx.Client, tmp_path: Path
) -> None:
    digests = set()
    for n in range(2):
        _, url = finished_url(sim_thread, http)
        path = tmp_path / f"{n}.mp4"
        path.write_bytes(httpx.get(url).content)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
        found = decoded(path)
        assert found is not None
        codec, _, seconds, frames = found
        assert codec == "h264" and frames == round(seconds * 24) > 0
    assert len(digests) == 2


@pytest.mark.parametrize(
    ("fields", "rendered"),
    [
        ({"model": "doubao-seedance-2-0", "size": "1920x1080", "seconds": "4"}, "1280x720"),
        ({"model": "doubao-seedance-1-5-pro", "resolution": "1080p", "seconds": "6"}, "1280x720"),
        ({"model": "doubao-seedance-1-0-pro", "resolution": "1080p", "size": "9:16"}, "1088x1920"),
        ({"model": FAST, "resolution": "480p", "size": "21:9", "seconds": "4"}, "992x432"),
    ],
)
def test_a_task_renders_the_size_and_length_the_docs_say(
    http: httpx.Client, tmp_path: Path, fields: dict[str, str], rendered: str
) -> None:
    response = post_create(http, {"prompt": "a pier", **fields})
    assert response.status_code == 200, response.text
    task_id = response.json()["id"]
    path = tmp_path / "v.mp4"
    path.write_bytes(httpx.get(wait_done(http, task_id)[-1]["video_url"]).content)
    found = decoded(path)
    assert found is not None and found[1:3] == (rendered, float(fields.get("seconds", 5)))
    assert http.get("/_sim/stats").json()["tasks"][task_id]["rendered"] == rendered


def test_a_corrupt_video_arrives_whole_but_does_not_decode(
    sim_thread: Simulator, http: httpx.Client, tmp_path: Path
) -> None:
    sim_thread.inject(corrupt=1)
    task_id, url = finished_url(sim_thread, http)
    cut, whole = httpx.get(url), httpx.get(url)  # the fault is one-shot
    assert int(cut.headers["content-length"]) == len(cut.content) < len(whole.content)
    (tmp_path / "cut.mp4").write_bytes(cut.content)
    (tmp_path / "whole.mp4").write_bytes(whole.content)
    assert decoded(tmp_path / "cut.mp4") is None
    whole_found = decoded(tmp_path / "whole.mp4")
    assert whole_found is not None and whole_found[1:3] == ("1280x720", 5.0)
    assert sim_thread.stats()["counters"]["corrupt_served"] == 1
    sim_thread.configure(corrupt_rate=1.0)
    task_id, url = finished_url(sim_thread, http)
    assert sim_thread.stats()["tasks"][task_id]["corrupt"] is True
    assert len(httpx.get(url).content) < sim_thread.stats()["tasks"][task_id]["size_bytes"]


# -- the command ---------------------------------------------------------------------------


def test_simulator_help_explains_every_knob() -> None:
    result = CliRunner().invoke(simulator_command, ["--help"], catch_exceptions=False)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for knob in KNOB_HELP:
        flag = (
            "--video-url / --no-video-url" if knob == "video_url" else "--" + knob.replace("_", "-")
        )
        assert flag in text, flag
    for flag in ("--host", "--port", "--cdn-port", "/_sim/stats", "/_sim/inject"):
        assert flag in text


def test_simulator_refuses_bad_knob_values() -> None:
    result = CliRunner().invoke(simulator_command, ["--p-5xx", "2"])
    assert result.exit_code == 2
    conflict = CliRunner().invoke(simulator_command, ["--fail-rate", "0.8", "--error-rate", "0.8"])
    assert conflict.exit_code == 2 and "must not exceed 1" in conflict.output


def test_simulator_command_serves_until_interrupted() -> None:
    code = "from batchvid.cli.simulator import simulator; simulator()"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--api-key", "cli-key"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            banner = [process.stdout.readline() for _ in range(6)]
            base_url = banner[0].split()[-1]
            assert base_url.startswith("http://127.0.0.1:")
            assert "cli-key" in banner[1] and "/_sim/stats" in banner[3]
            content_type, body = encode_multipart({"prompt": '"x"', "model": f'"{FAST}"'}, [])
            created = httpx.post(
                f"{base_url}/v1/videos",
                content=body,
                headers={"Content-Type": content_type, "Authorization": "Bearer cli-key"},
            )
            assert created.status_code == 200
        finally:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert "simulator stopped" in out
