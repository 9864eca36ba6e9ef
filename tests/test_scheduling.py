"""Poll cadence, signed-URL expiry and file naming: pure functions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from batchvid.scheduling import (
    DOCS_FIRST_POLL_S,
    first_poll_delay,
    job_filename,
    next_poll_delay,
    safe_destination,
    slug,
    url_expiry,
)


def test_first_poll_uses_history_else_the_docs_minute() -> None:
    assert first_poll_delay(None) == DOCS_FIRST_POLL_S
    assert first_poll_delay(None, scale=0.01) == pytest.approx(DOCS_FIRST_POLL_S * 0.01)
    assert first_poll_delay(40.0) > 40.0


def test_next_poll_is_jittered_around_the_interval() -> None:
    rng = random.Random(1)
    delays = [next_poll_delay(10.0, rng=rng) for _ in range(500)]
    assert min(delays) >= 8.0 and max(delays) <= 12.0
    assert len({round(d, 3) for d in delays}) > 100  # really spread out


def test_progress_brings_the_next_poll_forward_but_not_below_a_floor() -> None:
    rng = random.Random(2)
    # 90% after 180 s: ~20 s left, sooner than the 60 s interval
    assert next_poll_delay(60.0, elapsed_s=180, progress=90, rng=rng) == pytest.approx(21.0)
    # 99% done: the floor (a quarter of the interval) holds
    assert next_poll_delay(60.0, elapsed_s=99, progress=99, rng=rng) == pytest.approx(15.0)
    # no progress information: plain interval
    assert 48 <= next_poll_delay(60.0, elapsed_s=5, progress=0, rng=rng) <= 72


def test_retry_after_is_a_minimum() -> None:
    assert next_poll_delay(10.0, retry_after_s=30, rng=random.Random(3)) == 30


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


def test_file_names_are_slugged_and_stay_inside(tmp_path: Path) -> None:
    name = job_filename(
        7, None, "Ünïcode / ../../etc/passwd <b>", "doubao-seedance-2-0-fast", "16:9", 2
    )
    assert name == "0007-unicode-etc-passwd-b-seedance-2-0-fast-16x9-t2.mp4"
    assert job_filename(1, "../x", "p", "doubao-seedance-1-0-pro", "1280x720", 1) == (
        "0001-x-seedance-1-0-pro-1280x720-t1.mp4"
    )
    assert safe_destination(tmp_path, name).parent == tmp_path.resolve()
    for bad in ("../x.mp4", "a/b.mp4", "", ".."):
        with pytest.raises(ValueError):
            safe_destination(tmp_path, bad)
    assert slug("!!!") == "video"
    assert len(slug("word " * 50)) <= 40
