"""The store through obstore, against a real S3-compatible server (moto, 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from s3_server import S3Server, strict_server

from batchvid.errors import OutputError, StoreUnreachable
from batchvid.outputs import S3Outputs, output_target
from batchvid.outputs.s3 import Taken


def test_a_conditional_put_never_replaces_and_the_object_says_what_it_is(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3Outputs(output_target(f"s3://{s3_bucket}/night"))
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"the first video")
    second.write_bytes(b"another video")

    async def main() -> None:
        await store.check()
        etag = await store.put_new("a.mp4", first, {"batchvid-task": "t1"})
        with pytest.raises(Taken):
            await store.put_new("a.mp4", second, {"batchvid-task": "t2"})
        found = await store.find("a.mp4")
        assert found is not None
        attributes, meta = found
        assert attributes["batchvid-task"] == "t1" and meta["e_tag"] == etag
        assert await store.find("b.mp4") is None
        uri = f"s3://{s3_bucket}/night/a.mp4"
        assert await store.read_all([uri, f"s3://{s3_bucket}/night/gone.jpg"]) == {
            uri: b"the first video"
        }

    anyio.run(main)
    assert s3_server.body(s3_bucket, "night/a.mp4") == b"the first video"  # never replaced
    link = store.presigned([f"s3://{s3_bucket}/night/a.mp4", "s3://elsewhere/x.mp4"])
    assert list(link) == [f"s3://{s3_bucket}/night/a.mp4"]  # only this prefix's objects
    answer = httpx.get(next(iter(link.values())))
    assert answer.status_code == 200 and answer.content == b"the first video"


def test_a_bucket_that_does_not_exist_a_dead_endpoint_and_refused_keys_are_told_apart(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def check(uri: str) -> None:
        await S3Outputs(output_target(uri)).check()

    with pytest.raises(OutputError, match="the bucket 'no-such-bucket-here' does not exist"):
        anyio.run(check, "s3://no-such-bucket-here/x")
    with strict_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        with pytest.raises(OutputError, match="refused the credentials") as refused:
            anyio.run(check, f"s3://{s3_bucket}/x")
        assert not isinstance(refused.value, StoreUnreachable)
        assert "test-secret" not in str(refused.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(StoreUnreachable, match="cannot be used"):
        anyio.run(check, f"s3://{s3_bucket}/x")
