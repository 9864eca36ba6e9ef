"""Where videos go: a folder, or ``s3://BUCKET/PREFIX``; any other URL refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchvid.errors import OutputError
from batchvid.outputs import output_target


def test_a_folder_or_a_bucket_and_prefix() -> None:
    assert output_target("videos", Path("/m")).path == Path("/m/videos")
    target = output_target("s3://bv-out//night/one/")
    assert (target.bucket, target.prefix, target.uri) == (
        "bv-out",
        "night/one",
        "s3://bv-out/night/one",
    )
    assert target.object_uri("a.mp4") == "s3://bv-out/night/one/a.mp4"
    assert output_target("s3://bv-out").uri == "s3://bv-out"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("gs://bucket/x", "not to gs://"),
        ("https://example.com/videos", "not to https://"),
        ("s3://Bad_Bucket/x", "is not an S3 bucket name"),
        ("s3://bv-out/../x", "'.' or '..'"),
    ],
)
def test_what_is_refused_is_named(text: str, said: str) -> None:
    with pytest.raises(OutputError, match=said.replace(".", r"\.").replace("'", "'")):
        output_target(text)
