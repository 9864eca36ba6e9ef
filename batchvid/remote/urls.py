"""Download URLs: making a ``video_url`` usable, and reading when its signature expires.

Pure functions over strings; the client and the download path use them.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import httpx

__all__ = ["resolve_url", "url_expiry"]

#: A URL never contains these unescaped.
_UNSAFE_URL: Final = re.compile(r"[\x00-\x20\x7f]")


def resolve_url(root: str, url: str | None) -> str | None:
    """An absolute http(s) download URL, or ``None`` (use ``/content`` instead).

    A relative (``/files/x.mp4``) or scheme-relative (``//cdn/x.mp4``)
    ``video_url`` is resolved against the API root ``root``; one with another
    scheme, with spaces or control characters, or that cannot be parsed, is no
    usable URL.
    """
    if url is None:
        return None
    url = url.strip()
    if not url or _UNSAFE_URL.search(url):
        return None
    if url.startswith(("https://", "http://")):
        # The usual case, a signed CDN URL: already absolute. urlsplit checks it
        # for a fraction of what building an httpx.URL costs (once per task).
        try:
            return url if urlsplit(url).hostname else None
        except ValueError:
            return None
    try:
        absolute = httpx.URL(root + "/").join(url)
    except httpx.InvalidURL:
        return None
    if absolute.scheme not in ("http", "https") or not absolute.host:
        return None
    return str(absolute)


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
