"""When to poll, when a signed URL expires, and what a video file is called.

Pure functions, no I/O: the runner asks them and does the waiting.

Polling is one shared budget.  A task's first poll is set from the render time
this ledger has seen for the same model, seconds and resolution (the docs'
"1-3 minutes" before there is any history); later polls are spaced by the
poll interval with jitter, brought forward only when the task's own progress
says it is nearly done.  Nothing ever polls in a tight loop.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "DOCS_FIRST_POLL_S",
    "first_poll_delay",
    "job_filename",
    "next_poll_delay",
    "safe_destination",
    "slug",
    "url_expiry",
]

#: Before any history: the docs say most jobs finish in 1-3 minutes.
DOCS_FIRST_POLL_S: Final = 60.0
#: Poll a little after the typical render time, so most tasks are done at the first look.
HISTORY_MARGIN: Final = 1.15
#: Never poll one task more often than this fraction of the poll interval.
MIN_INTERVAL_FRACTION: Final = 0.25


def first_poll_delay(history_s: float | None, *, scale: float = 1.0) -> float:
    """Seconds from submission to the first poll.

    ``history_s`` is the typical render time learned from this ledger (already
    in the clock the runner lives in); without it, the docs' first minute,
    multiplied by ``scale`` (the simulator's time scale, 1.0 for the real API).
    """
    if history_s is not None and history_s > 0:
        return history_s * HISTORY_MARGIN
    return DOCS_FIRST_POLL_S * scale


def next_poll_delay(
    interval_s: float,
    *,
    elapsed_s: float | None = None,
    progress: int | None = None,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the next poll of a task that is not finished yet.

    The poll interval with ±20% jitter (so a batch's polls spread out), brought
    forward when the task's progress predicts an earlier finish, but never
    below a quarter of the interval, and never before a server's Retry-After.
    """
    rng = rng or random.Random()
    delay = interval_s * rng.uniform(0.8, 1.2)
    if elapsed_s is not None and progress is not None and 0 < progress < 100 and elapsed_s > 0:
        remaining = elapsed_s * (100 - progress) / progress
        delay = min(delay, max(remaining * 1.05, interval_s * MIN_INTERVAL_FRACTION))
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


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
