"""The protocol's pure parts: statuses, task bodies, error bodies, classification, forms."""

from __future__ import annotations

import email.utils
import json
import random
from typing import Any

import httpx
import pytest

from batchvid.api import (
    FilePart,
    RetryPolicy,
    TaskStatus,
    backoff_hint,
    encode_multipart,
    error_from_transport,
    failure_reason,
    never_sent,
    normalise_status,
    parse_error,
    parse_retry_after,
    parse_task,
)
from batchvid.download import (
    TransferInterrupted,
    download_problem,
    parse_content_range,
    plan_write,
)
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
from batchvid.sim_requests import parse_multipart

# -- statuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("upper", "lower", "expected"),
    [
        ("SUBMITTED", "queued", TaskStatus.QUEUED),
        ("IN_PROGRESS", "in_progress", TaskStatus.IN_PROGRESS),
        ("SUCCESS", "completed", TaskStatus.COMPLETED),
        ("FAILED", "failed", TaskStatus.FAILED),
        ("ERROR", "error", TaskStatus.ERROR),
    ],
)
def test_both_vocabularies_map_to_one_status(upper: str, lower: str, expected: TaskStatus) -> None:
    assert normalise_status(upper) is expected
    assert normalise_status(lower) is expected
    assert normalise_status(f" {lower.title()} ") is expected


def test_only_success_failure_and_error_are_terminal() -> None:
    terminal = {s for s in TaskStatus if s.terminal}
    assert terminal == {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.ERROR}


@pytest.mark.parametrize("raw", ["PAUSED", "succeeded", "", None, 3])
def test_unknown_status_is_kept_and_not_terminal(raw: object) -> None:
    task = parse_task({"id": "t1", "status": raw})
    assert task.status is TaskStatus.UNKNOWN
    assert not task.status.terminal
    assert task.raw_status == (raw if isinstance(raw, str) else "")


# -- task bodies ---------------------------------------------------------------


def test_parse_task_reads_the_documented_create_answer() -> None:
    body = (
        b'{"id": "task_abc123", "task_id": "task_abc123", "object": "video",'
        b' "model": "doubao-seedance-2-0-fast", "status": "SUBMITTED",'
        b' "progress": 0, "created_at": 1776681149}'
    )
    task = parse_task(body)
    assert (task.id, task.status, task.raw_status) == (
        "task_abc123",
        TaskStatus.QUEUED,
        "SUBMITTED",
    )
    assert (task.progress, task.created_at, task.completed_at) == (0, 1776681149, None)
    assert task.video_url is None and task.error_detail is None
    assert task.raw["model"] == "doubao-seedance-2-0-fast"


def test_parse_task_accepts_task_id_alone_and_loose_numbers() -> None:
    task = parse_task(
        {"task_id": "t9", "status": "completed", "progress": "45%", "video_url": "https://c/x"}
    )
    assert task.id == "t9"
    assert task.progress == 45
    assert task.video_url == "https://c/x"
    assert parse_task({"id": 17, "progress": 250.0}).progress == 100
    assert parse_task({"id": "t", "video_url": ""}).video_url is None


@pytest.mark.parametrize(
    ("extra", "kept"),
    [
        (
            {"error": {"code": "Sensitive", "message": "no"}},
            {"error": {"code": "Sensitive", "message": "no"}},
        ),
        ({"fail_reason": "worker died"}, {"fail_reason": "worker died"}),
        ({"reason": ["odd", 1]}, {"reason": ["odd", 1]}),
    ],
)
def test_failure_details_are_kept_verbatim_whatever_their_shape(
    extra: dict[str, object], kept: dict[str, object]
) -> None:
    task = parse_task({"id": "t", "status": "FAILED", **extra})
    assert task.status is TaskStatus.FAILED
    assert task.error_detail is not None
    assert json.loads(task.error_detail) == kept


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"status": "queued"}', b'{"id": ""}'])
def test_parse_task_refuses_bodies_without_a_task_id(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"JSON|task id"):
        parse_task(body)


# -- error bodies ------------------------------------------------------------

OPENAI = (
    b'{"error": {"message": "duration out of range",'
    b' "type": "invalid_request_error", "code": "InvalidParameter"}}'
)
FLAT = b'{"code": "InvalidParameter", "message": "duration out of range"}'


@pytest.mark.parametrize("body", [OPENAI, FLAT], ids=["openai", "flat"])
def test_both_error_shapes_read_the_same(body: bytes) -> None:
    error = parse_error(400, body, {})
    assert type(error) is RejectedError
    assert (error.status, error.code, error.message) == (
        400,
        "InvalidParameter",
        "duration out of range",
    )
    assert "HTTP 400" in str(error) and "duration out of range" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "task_not_exist", "type": "invalid_request_error"}}',
        b'{"code": "task_not_exist", "message": "the task does not exist"}',
        b"task_not_exist",
    ],
)
def test_task_not_exist_is_task_not_found(body: bytes) -> None:
    error = parse_error(400, body, {})
    assert isinstance(error, TaskNotFound)
    assert isinstance(error, RejectedError)


def test_error_classes_by_status() -> None:
    assert isinstance(parse_error(401, b"{}", {}), AuthError)
    assert type(parse_error(403, FLAT, {})) is RejectedError
    for status in (500, 502, 503, 504, 408):
        error = parse_error(status, b"<html>Bad Gateway</html>", {})
        assert type(error) is RetryableError, status
        assert error.message == "<html>Bad Gateway</html>"
    limited = parse_error(429, b"", {"Retry-After": "7"})
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 7.0
    assert limited.message == "(empty body)"
    unavailable = parse_error(503, b"", httpx.Headers({"retry-after": "2"}))
    assert isinstance(unavailable, RetryableError)
    assert unavailable.retry_after == 2.0


def test_error_messages_never_echo_the_key() -> None:
    body = b'{"error": {"message": "invalid token sk-secret-123", "code": "sk-secret-123"}}'
    error = parse_error(401, body, {}, secrets=["sk-secret-123"])
    assert "sk-secret-123" not in str(error)
    assert "sk-secret-123" not in repr(error)
    assert error.message == "invalid token ***"


def test_retry_after_seconds_and_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("3", now=now) == 3.0
    assert parse_retry_after(" 1.5 ", now=now) == 1.5
    assert parse_retry_after("-4", now=now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    for unreadable in (None, "", "soon", "nan"):
        assert parse_retry_after(unreadable, now=now) is None


# -- classification ----------------------------------------------------------

REQUEST = httpx.Request("POST", "https://api.example/v1/videos")


@pytest.mark.parametrize("kind", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_unsent_requests_are_retryable_even_for_create(kind: type[httpx.TransportError]) -> None:
    exc = kind("boom", request=REQUEST)
    assert never_sent(exc)
    assert type(error_from_transport(exc, idempotent=False)) is RetryableError


@pytest.mark.parametrize(
    "kind",
    [
        httpx.ReadTimeout,
        httpx.ReadError,
        httpx.RemoteProtocolError,
        httpx.WriteError,
        httpx.WriteTimeout,
        httpx.LocalProtocolError,
    ],
)
def test_sent_create_without_answer_is_in_doubt_but_a_get_is_retryable(
    kind: type[httpx.TransportError],
) -> None:
    exc = kind("lost", request=REQUEST)
    assert not never_sent(exc)
    assert isinstance(error_from_transport(exc, idempotent=False), InDoubtError)
    assert type(error_from_transport(exc, idempotent=True)) is RetryableError


def test_backoff_hint_honours_retry_after_as_a_floor() -> None:
    policy = RetryPolicy(wait_jitter=1.0, max_retry_after=60)
    rng = random.Random(1)
    assert backoff_hint(RejectedError("no"), policy, rng) is False
    assert backoff_hint(InDoubtError("?"), policy, rng) is False
    assert backoff_hint(AuthError("key"), policy, rng) is False
    assert backoff_hint(RetryableError("5xx"), policy, rng) is True
    waits = [backoff_hint(RateLimited("429", retry_after=5.0), policy, rng) for _ in range(50)]
    assert all(isinstance(w, float) and 5.0 <= w <= 5.5 for w in waits)
    assert len(set(waits)) > 1  # jittered
    assert backoff_hint(RateLimited("429", retry_after=61.0), policy, rng) is False


# -- the create form ---------------------------------------------------------


def test_create_form_is_multipart_with_plain_values_and_ordered_typed_files() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    jpeg = b"\xff\xd8\xff\xe0" + b"--\r\n" * 100
    fields = {
        "prompt": 'a "quoted"\r\nprompt [Image 1]',
        "model": "doubao-seedance-2-0",
        "seconds": "5",
    }
    content_type, body = encode_multipart(
        fields,
        [
            FilePart("input_reference", 'b"2.png', "image/png", png),
            FilePart("input_reference", "a.jpg", "image/jpeg", jpeg),
        ],
    )
    parsed_fields, uploads = parse_multipart(content_type, body)
    assert parsed_fields == fields
    assert [(u.filename, u.content_type, u.content) for u in uploads] == [
        ("b%222.png", "image/png", png),
        ("a.jpg", "image/jpeg", jpeg),
    ]
    assert b'name="model"\r\n\r\ndoubao-seedance-2-0\r\n' in body  # plain, not the docs' "quoted"


def test_create_form_without_files_is_still_multipart() -> None:
    content_type, body = encode_multipart({"prompt": "x", "model": "m"}, [])
    assert content_type.startswith("multipart/form-data; boundary=")
    assert parse_multipart(content_type, body) == ({"prompt": "x", "model": "m"}, [])


# -- download decisions ------------------------------------------------------


def test_content_range_parsing() -> None:
    assert parse_content_range("bytes 100-199/1000") == (100, 199, 1000)
    assert parse_content_range("bytes 0-9/*") == (0, 9, None)
    assert parse_content_range("bytes */1000") is None
    assert parse_content_range(None) is None


def test_plan_write_restarts_on_200_and_continues_exactly_on_206() -> None:
    assert plan_write(200, httpx.Headers({"content-length": "500"}), offset=120).start == 0
    plan = plan_write(206, httpx.Headers({"content-range": "bytes 120-499/500"}), offset=120)
    assert (plan.start, plan.total) == (120, 500)
    with pytest.raises(TransferInterrupted, match="resume at byte 120"):
        plan_write(206, httpx.Headers({"content-range": "bytes 0-499/500"}), offset=120)
    with pytest.raises(TransferInterrupted):
        plan_write(206, httpx.Headers({}), offset=120)


def test_download_problem_classification() -> None:
    assert isinstance(download_problem(403, b"<Error>AccessDenied</Error>"), UrlExpired)
    assert isinstance(download_problem(410, b""), UrlExpired)
    assert isinstance(download_problem(400, b"Request has expired"), UrlExpired)
    assert isinstance(download_problem(503, b"busy"), TransferInterrupted)
    assert isinstance(download_problem(429, b""), TransferInterrupted)
    plain = download_problem(404, b"NoSuchKey")
    assert type(plain) is DownloadError
    assert "HTTP 404" in str(plain)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"status": "FAILED", "error": {"code": "Sensitive", "message": "flagged"}},
            ("Sensitive", "flagged"),
        ),
        ({"status": "error", "fail_reason": "GPU fell over"}, ("error", "GPU fell over")),
        ({"status": "FAILED"}, ("FAILED", "the provider reported FAILED with no reason")),
        ({"status": "FAILED", "error": {"type": "x"}}, ("x", '{"error": {"type": "x"}}')),
    ],
)
def test_failure_reason_reads_every_shape(body: dict[str, Any], expected: tuple[str, str]) -> None:
    assert failure_reason(parse_task({"id": "t", **body})) == expected
