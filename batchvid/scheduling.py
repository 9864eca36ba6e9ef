"""When a signed URL expires, and what a video file is called: pure functions.

(When to poll is :mod:`batchvid.poll_policy`.)
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlsplit

__all__ = ["job_filename", "safe_destination", "slug", "url_expiry"]


# Query parameters that carry an expiry in the signed-URL schemes seen in the wild:
# CloudFront/GCS v2 and similar (unix seconds), S3/GCS v4 (start + lifetime), Azure SAS.
_UNIX_PARAMS: Final = ("expires", "expiry", "exp", "e", "x-expires")


def url_expiry(url: str) -> float | None:
    """The unix time a signed URL stops working, when its query string says so."""
    try:
        query = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
    except ValueError:
        return None
    for name in _UNIX_PARAMS:
        stamp = _number(query.get(name))
        if stamp is not None:
            return stamp / 1000 if stamp > 1e11 else stamp  # milliseconds, sometimes
    start, lifetime = (
        query.get("x-amz-date") or query.get("x-goog-date"),
        (query.get("x-amz-expires") or query.get("x-goog-expires")),
    )
    if start and lifetime and lifetime.isdigit():
        try:
            begun = datetime.strptime(start, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None
        return begun.timestamp() + float(lifetime)
    azure = query.get("se")
    if azure:
        try:
            return datetime.fromisoformat(azure.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


_SLUG_DROP: Final = re.compile(r"[^a-z0-9]+")


def slug(text: str, max_len: int = 40) -> str:
    """Lowercase ASCII words joined by '-', at most ``max_len`` characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = _SLUG_DROP.sub("-", ascii_text.lower()).strip("-")
    if len(words) > max_len:
        words = words[:max_len].rsplit("-", 1)[0] or words[:max_len]
    return words.strip("-") or "video"


def job_filename(
    index: int, prompt_id: str | None, prompt: str, model: str, size: str, take: int
) -> str:
    """``0007-lighthouse-seedance-2-0-fast-16x9-t2.mp4``: sortable, readable, unique per job."""
    name = slug(prompt_id, 40) if prompt_id else slug(prompt, 40)
    model_part = slug(model.removeprefix("doubao-"), 30)
    size_part = slug(size.replace(":", "x"), 12)
    return f"{index:04d}-{name}-{model_part}-{size_part}-t{take}.mp4"


def safe_destination(output_dir: Path, filename: str) -> Path:
    """``output_dir / filename``, refusing anything that would land outside ``output_dir``."""
    root = output_dir.resolve()
    dest = (root / filename).resolve()
    if dest.parent != root or not filename or "/" in filename or "\\" in filename:
        raise ValueError(f"refusing a file name that leaves the output folder: {filename!r}")
    return dest
