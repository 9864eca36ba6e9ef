"""Signed-URL expiry and file naming: pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchvid.scheduling import job_filename, safe_destination, slug, url_expiry


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
