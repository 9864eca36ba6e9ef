"""The store through obstore, against a real S3-compatible server (moto, 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from s3_server import S3Server, strict_server

from batchvid.errors import OutputError, StoreUnreachable
from batchvid.outputs import S3Outputs, output_target, s3
from batchvid.outputs.s3 import Taken


def test_a_conditional_put_never_replaces_and_the_object_says_what_it_is(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3Outputs(output_target(f"s3://{s3_bucket}/night"))
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"the first video")
    second.write_bytes(b"another video")

    async def main() -> None:
        store.check()
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
    def check(uri: str) -> None:
        S3Outputs(output_target(uri)).check()

    with pytest.raises(OutputError, match="the bucket 'no-such-bucket-here' does not exist"):
        check("s3://no-such-bucket-here/x")
    with strict_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        with pytest.raises(OutputError, match="refused the credentials") as refused:
            check(f"s3://{s3_bucket}/x")
        assert not isinstance(refused.value, StoreUnreachable)
        assert "test-secret" not in str(refused.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(StoreUnreachable, match="cannot be used"):
        check(f"s3://{s3_bucket}/x")


def test_a_large_video_streams_in_parts_and_is_copied_into_place_only_if_the_name_is_free(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the single-put size a video goes up in parts to a staging name, then is
    copied to its name only if that holds nothing; its metadata waits beside it."""
    monkeypatch.setattr(s3, "SINGLE_PUT_MAX", 1024 * 1024)
    store = S3Outputs(output_target(f"s3://{s3_bucket}/big"))
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(os.urandom(12 * 1024 * 1024))  # two parts: 8 and 4 MiB
    second.write_bytes(os.urandom(6 * 1024 * 1024))
    ours = {"batchvid-task": "t1", "batchvid-sha256": "a"}

    async def main() -> None:
        etag = await store.put_new("a.mp4", first, ours)
        found = await store.find("a.mp4")
        assert found is not None and found[1]["e_tag"] == etag
        assert found[0]["batchvid-task"] == "t1" and found[1]["size"] == 12 * 1024 * 1024
        with pytest.raises(Taken):  # another video's metadata: refused before any upload
            await store.put_new("a.mp4", second, {"batchvid-task": "t2"})
        with pytest.raises(Taken):  # the same metadata, the name taken: the copy refuses
            await store.put_new("a.mp4", second, ours)

    anyio.run(main)
    assert s3_server.body(s3_bucket, "big/a.mp4") == first.read_bytes()  # never replaced
    assert not [k for k in s3_server.etags(s3_bucket) if k.startswith("big/.batchvid/incoming/")]


def test_a_run_killed_mid_multipart_upload_leaves_nothing_under_the_name(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """SIGKILL while the parts of a large video are going up: the name holds nothing
    (the parts sit in an unfinished upload), and the next try puts the video there."""
    video = tmp_path / "video.mp4"
    video.write_bytes(os.urandom(48 * 1024 * 1024))
    script = (
        "import anyio, sys; from pathlib import Path\n"
        "from batchvid.outputs import s3, output_target\n"
        "s3.SINGLE_PUT_MAX = 1024 * 1024\n"
        "store = s3.S3Outputs(output_target(sys.argv[1]))\n"
        "anyio.run(store.put_new, 'v.mp4', Path(sys.argv[2]), {'batchvid-task': 't'})\n"
    )
    client = s3_server.client()
    uploader = subprocess.Popen([sys.executable, "-c", script, f"s3://{s3_bucket}/k", str(video)])
    deadline = time.monotonic() + 60
    while not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads"):
        assert uploader.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    uploader.send_signal(signal.SIGKILL)
    uploader.wait()
    assert "k/v.mp4" not in s3_server.etags(s3_bucket)  # nothing half-written under its name
    store = S3Outputs(output_target(f"s3://{s3_bucket}/k"))
    anyio.run(store.put_new, "v.mp4", video, {"batchvid-task": "t"})  # the next try
    assert s3_server.body(s3_bucket, "k/v.mp4") == video.read_bytes()
