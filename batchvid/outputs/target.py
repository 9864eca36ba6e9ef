"""Where a batch's videos go: a local folder, or ``s3://BUCKET/PREFIX``.

``output_dir`` in a manifest and ``--output-dir`` take either.  Anything else
that looks like a URL (``gs://``, ``https://``...) is refused by name: an
output is never a local folder named ``s3:`` or ``gs:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import OutputError

__all__ = ["S3_SCHEMES", "OutputTarget", "output_target"]

#: The URL schemes of an S3-compatible store (AWS, MinIO, Cloudflare R2, Backblaze B2).
S3_SCHEMES: Final = ("s3",)
_URL: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
#: S3's own rule for bucket names (3-63 lowercase letters, digits, dots, hyphens).
_BUCKET: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True, slots=True)
class OutputTarget:
    """A batch's output: ``path`` (a local folder) or ``bucket`` and ``prefix`` (a store)."""

    path: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @property
    def is_store(self) -> bool:
        return self.bucket is not None

    @property
    def uri(self) -> str:
        """How the ledger and the user see it: the folder, or ``s3://BUCKET/PREFIX``."""
        if self.bucket is None:
            return str(self.path)
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def object_uri(self, name: str) -> str:
        """The ``s3://`` URI of an object under the prefix."""
        return f"{self.uri.rstrip('/')}/{name}"

    def __str__(self) -> str:
        return self.uri


def output_target(text: str | Path, base: Path | None = None) -> OutputTarget:
    """Parse an output: ``s3://BUCKET[/PREFIX]`` or a folder (relative to ``base``)."""
    raw = str(text).strip()
    match = _URL.match(raw)
    if match is None:
        path = Path(raw).expanduser()
        return OutputTarget(path=(base / path) if base is not None else path)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in S3_SCHEMES:
        raise OutputError(
            f"{raw!r}: batchvid writes videos to a folder or to an S3-compatible store "
            f"(s3://BUCKET/PREFIX), not to {scheme}://"
        )
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise OutputError(
            f"{raw!r}: {bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, "
            "'.' or '-')"
        )
    prefix = "/".join(part for part in prefix.split("/") if part)
    if any(part in (".", "..") for part in prefix.split("/")):
        raise OutputError(f"{raw!r}: a prefix may not contain '.' or '..' parts")
    return OutputTarget(bucket=bucket, prefix=prefix)
