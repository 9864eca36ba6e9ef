"""A real S3-compatible server for the tests: moto's server mode on 127.0.0.1.

``S3Server`` starts ``ThreadedMotoServer`` on a free port, for the session;
each test gets its own bucket (:meth:`S3Server.bucket`) and the standard AWS
environment pointing at the server (``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``...),
which obstore, and the ``batchvid`` processes a test starts, read.
``strict_server`` starts one in another process that refuses every
credential (moto's IAM checks on from the first request).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Credentials moto takes (it checks none unless told to).
KEY_ID, SECRET, REGION = "test-key", "test-secret", "us-east-1"


class S3Server:
    """moto's S3 on 127.0.0.1 (see the module docstring); a context manager."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request, else
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def __enter__(self) -> S3Server:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The AWS environment for this server (or ``endpoint``: a proxy in front of it)."""
        return {
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self) -> Any:
        """A boto3 client, to look at the bucket from outside batchvid."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )

    def bucket(self) -> str:
        """A new, empty bucket of the caller's own."""
        name = f"bv-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, dict[str, Any]]:
        """Every object in ``bucket``: key -> its ETag, size and batchvid metadata."""
        client = self.client()
        found: dict[str, dict[str, Any]] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                head = client.head_object(Bucket=bucket, Key=item["Key"])
                found[item["Key"]] = {
                    "etag": head["ETag"],
                    "size": head["ContentLength"],
                    "meta": head.get("Metadata", {}),
                }
        return found

    def etags(self, bucket: str) -> dict[str, str]:
        """Every object's ETag, by key (one listing: cheap enough to watch a bucket)."""
        found: dict[str, str] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            found.update({item["Key"]: item["ETag"] for item in page.get("Contents", [])})
        return found

    def body(self, bucket: str, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())


@contextmanager
def strict_server() -> Iterator[str]:
    """moto in another process, checking credentials from the first request (so it
    refuses any): its endpoint."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
