"""The protocol's pure parts: statuses, task bodies, error bodies, classification, forms."""

from __future__ import annotations

import email.utils
import json
import random
from typing import Any

import httpx
import pytest

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
from batchvid.remote.download import (
    TransferInterrupted,
    download_problem,
    error_document,
    parse_content_range,
    plan_write,
)
from batchvid.remote.protocol import (
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
from batchvid.remote.urls import url_expiry
from batchvid.sim.requests import parse_multipart

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
        assert error.message == "Bad Gateway"  # the page's words, not its markup
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
    assert isinstance(download_problem(404, b"NoSuchKey"), UrlExpired)  # gone: re-query
    plain = download_problem(400, b"InvalidArgument")
    assert type(plain) is DownloadError
    assert "HTTP 400" in str(plain)


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


# -- gaps against the docs: every shape an independent server may send ---------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Success", TaskStatus.COMPLETED),
        ("In_Progress", TaskStatus.IN_PROGRESS),
        ("in progress", TaskStatus.IN_PROGRESS),
        ("IN-PROGRESS", TaskStatus.IN_PROGRESS),
        ("Submitted", TaskStatus.QUEUED),
        ("QUEUED", TaskStatus.QUEUED),
        ("Completed", TaskStatus.COMPLETED),
        ("Failed", TaskStatus.FAILED),
        ("Error", TaskStatus.ERROR),
    ],
)
def test_mixed_case_statuses_normalise_and_keep_their_raw_word(
    raw: str, expected: TaskStatus
) -> None:
    task = parse_task({"id": "t", "status": raw})
    assert task.status is expected
    assert task.raw_status == raw


@pytest.mark.parametrize("raw", ["Processing ", "RUNNING", "pending_review", "cancelled"])
def test_an_unknown_status_word_is_kept_verbatim(raw: str) -> None:
    task = parse_task({"id": "t", "status": raw})
    assert (task.status, task.raw_status) == (TaskStatus.UNKNOWN, raw)
    assert not task.status.terminal


@pytest.mark.parametrize(
    ("body", "progress"),
    [
        (b'{"id": "t", "progress": 45}', 45),
        (b'{"id": "t", "progress": "45"}', 45),
        (b'{"id": "t", "progress": " 45 "}', 45),
        (b'{"id": "t", "progress": 45.7}', 45),
        (b'{"id": "t", "progress": "45.5"}', 45),
        (b'{"id": "t", "progress": null}', None),
        (b'{"id": "t"}', None),
        (b'{"id": "t", "progress": true}', None),
        (b'{"id": "t", "progress": "soon"}', None),
        (b'{"id": "t", "progress": -3}', 0),
        # Python's json accepts these; they must not break the whole answer.
        (b'{"id": "t", "progress": NaN}', None),
        (b'{"id": "t", "progress": Infinity}', None),
        (b'{"id": "t", "progress": "1e999"}', None),
    ],
)
def test_progress_in_every_loose_form(body: bytes, progress: int | None) -> None:
    assert parse_task(body).progress == progress


def test_completed_at_null_missing_or_odd_is_none() -> None:
    assert parse_task({"id": "t", "completed_at": None}).completed_at is None
    assert parse_task({"id": "t"}).completed_at is None
    assert parse_task({"id": "t", "completed_at": "2026-01-01T00:00:00Z"}).completed_at is None
    assert parse_task(b'{"id": "t", "created_at": 1e400}').created_at is None
    assert parse_task({"id": "t", "completed_at": 1776567700}).completed_at == 1776567700


@pytest.mark.parametrize(
    "body",
    [
        {"id": "task_1", "status": "SUBMITTED"},
        {"task_id": "task_1", "status": "queued"},
        {"id": "task_1", "task_id": "task_1", "status": "queued"},
        {"id": "", "task_id": "task_1"},
        {"id": None, "task_id": "task_1"},
        {"id": {"odd": True}, "task_id": "task_1"},
        {"id": " task_1 ", "extra": {"unknown": [1, 2]}, "usage": 3},
    ],
)
def test_create_answers_with_id_task_id_or_both(body: dict[str, object]) -> None:
    task = parse_task(body)
    assert task.id == "task_1"
    assert task.status in (TaskStatus.QUEUED, TaskStatus.UNKNOWN)
    assert not task.status.terminal


def test_unknown_fields_are_kept_in_raw() -> None:
    task = parse_task({"id": "t", "status": "queued", "seed": 42, "metadata": {"a": 1}})
    assert task.raw["seed"] == 42 and task.raw["metadata"] == {"a": 1}
    assert task.error_detail is None


def test_video_url_is_stripped() -> None:
    assert parse_task({"id": "t", "video_url": "  https://cdn/x.mp4\n"}).video_url == (
        "https://cdn/x.mp4"
    )
    assert parse_task({"id": "t", "video_url": 7}).video_url is None


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        ({"error": "content policy violation"}, "FAILED", "content policy violation"),
        ({"error": {}, "fail_reason": "worker died"}, "FAILED", "worker died"),
        ({"error": {"message": "no code here"}}, "FAILED", "no code here"),
        ({"error": {"code": 1301, "msg": "sensitive"}}, "1301", "sensitive"),
        ({"message": "quota exhausted"}, "FAILED", "quota exhausted"),
    ],
)
def test_failure_reason_takes_any_documented_or_usual_shape(
    extra: dict[str, object], code: str, message: str
) -> None:
    task = parse_task({"id": "t", "status": "FAILED", **extra})
    assert failure_reason(task) == (code, message)
    assert task.error_detail is not None


def test_a_failure_under_an_unknown_key_is_kept_too() -> None:
    task = parse_task(
        {"id": "t", "status": "error", "model": "m", "progress": 30, "why": {"gpu": "oom"}}
    )
    assert task.error_detail is not None
    assert json.loads(task.error_detail) == {"why": {"gpu": "oom"}}
    assert failure_reason(task) == ("error", '{"why": {"gpu": "oom"}}')
    # On a task that did not fail, unknown keys are not mistaken for a reason.
    assert parse_task({"id": "t", "status": "SUCCESS", "why": "x"}).error_detail is None


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (OPENAI, "InvalidParameter", "duration out of range"),
        (FLAT, "InvalidParameter", "duration out of range"),
        (b'{"error": "invalid size"}', None, "invalid size"),
        (
            b'{"error": {"message": "bad", "type": "invalid_request_error"}}',
            "invalid_request_error",
            "bad",
        ),
        (b'{"code": 400, "message": "bad"}', "400", "bad"),
        (b'{"detail": "bad"}', None, "bad"),
        (
            b"<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>"
            b"<center><h1>400 Bad Request</h1></center><hr><center>nginx</center>"
            b"</body>\r\n</html>\r\n",
            None,
            "400 Bad Request 400 Bad Request nginx",
        ),
        (b"", None, "(empty body)"),
        (b"   \r\n", None, "(empty body)"),
        (b"plain words\n", None, "plain words"),
        (b"\xff\xfe not utf-8", None, "\ufffd\ufffd not utf-8"),
    ],
)
def test_every_error_body_shape_gives_a_code_and_readable_message(
    body: bytes, code: str | None, message: str
) -> None:
    error = parse_error(400, body, {})
    assert type(error) is RejectedError
    assert (error.code, error.message) == (code, message)


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "TASK_NOT_EXIST"}}',
        b'{"code": "Task_Not_Exist", "message": "?"}',
        b'{"error": "task not exist"}',
        b'{"error": {"message": "task_not_exist", "type": "invalid_request_error"}}',
    ],
)
def test_task_not_exist_in_any_case_or_spelling(body: bytes) -> None:
    assert isinstance(parse_error(400, body, {}), TaskNotFound)
    assert isinstance(parse_error(404, body, {}), TaskNotFound)


def test_a_404_that_does_not_say_task_not_exist_is_no_task_not_found() -> None:
    error = parse_error(404, b"<html>404 Not Found</html>", {})
    assert type(error) is RejectedError


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "Invalid token", "type": "authentication_error"}}',
        b'{"code": "Unauthorized", "message": "Invalid token"}',
        b"",
        b"<html>401 Authorization Required</html>",
    ],
)
def test_401_is_auth_error_in_every_shape(body: bytes) -> None:
    error = parse_error(401, body, {})
    assert isinstance(error, AuthError)
    assert error.status == 401


def test_a_redirect_answer_names_its_target_without_the_query() -> None:
    error = parse_error(
        302, b"", {"Location": "https://elsewhere.example/v1/videos?token=sk-k"}, secrets=["sk-k"]
    )
    assert type(error) is RejectedError
    assert "https://elsewhere.example/v1/videos" in error.message
    assert "token" not in error.message
    assert "redirect" in str(parse_error(301, b"", {"Location": "::not a url::"}))


def test_retry_after_that_is_not_finite_is_unreadable() -> None:
    for value in ("1e999", "inf", "-inf", "Infinity"):
        assert parse_retry_after(value) is None, value
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # long past
    limited = parse_error(429, b"", {"retry-after": "1e999"})
    assert isinstance(limited, RateLimited) and limited.retry_after is None


def test_an_undecodable_answer_is_in_doubt_for_a_create_and_retryable_for_a_get() -> None:
    exc = httpx.DecodingError("Error -3 while decompressing data", request=REQUEST)
    assert not never_sent(exc)
    doubt = error_from_transport(exc, idempotent=False)
    assert isinstance(doubt, InDoubtError) and "decoded" in str(doubt)
    assert type(error_from_transport(exc, idempotent=True)) is RetryableError


@pytest.mark.parametrize(
    ("content_type", "document"),
    [
        ("application/json", "application/json"),
        ("application/json; charset=utf-8", "application/json"),
        ("application/problem+json", "application/problem+json"),
        ("text/html; charset=UTF-8", "text/html"),
        ("video/mp4", None),
        ("application/octet-stream", None),
        ("binary/octet-stream", None),
        ("", None),
    ],
)
def test_a_2xx_json_or_html_body_is_an_error_document(
    content_type: str, document: str | None
) -> None:
    headers = httpx.Headers({"content-type": content_type} if content_type else {})
    assert error_document(headers) == document


def test_download_5xx_and_429_carry_the_servers_retry_after() -> None:
    limited = download_problem(429, b"slow down", httpx.Headers({"retry-after": "4"}))
    assert isinstance(limited, TransferInterrupted) and limited.retry_after == 4.0
    busy = download_problem(503, b"", httpx.Headers({}))
    assert isinstance(busy, TransferInterrupted) and busy.retry_after is None
    assert isinstance(download_problem(200, b'{"error": "url expired"}'), UrlExpired)
    assert type(download_problem(200, b'{"error": "nope"}')) is DownloadError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://cdn.example/v.mp4?Expires=1900000000&Signature=x", 1900000000),
        ("https://cdn.example/v.mp4?exp=1900000000000", 1900000000),
        ("http://127.0.0.1:8788/v/t.mp4?expires=1795271106.5&sig=b8", 1795271106.5),
        ("https://cdn.example/v.mp4?expires=inf", None),
        ("https://s3.example/v.mp4?X-Amz-Date=20261121T000000Z&X-Amz-Expires=3600", 1795222800),
        ("https://blob.example/v.mp4?se=2026-11-21T01:00:00Z&sig=x", 1795222800),
        ("https://cdn.example/v.mp4", None),
        ("https://cdn.example/v.mp4?expires=soon", None),
    ],
)
def test_url_expiry(url: str, expected: float | None) -> None:
    assert url_expiry(url) == expected
