"""What a video file is called, and where it may go: pure functions."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Final

from ..catalogue import short_name

__all__ = ["job_filename", "safe_destination", "slug"]


_SLUG_DROP: Final = re.compile(r"[^a-z0-9]+")


def slug(text: str, max_len: int = 40) -> str:
    """Lowercase ASCII words joined by '-', at most ``max_len`` characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = _SLUG_DROP.sub("-", ascii_text.lower()).strip("-")
    if len(words) > max_len:
        words = words[:max_len].rsplit("-", 1)[0] or words[:max_len]
    return words.strip("-") or "video"


def job_filename(
    index: int,
    prompt_id: str | None,
    prompt: str,
    model: str,
    size: str,
    take: int,
    key: str,
    *,
    extra_attempt: int | None = None,
) -> str:
    """``0007-lighthouse-seedance-2-0-fast-16x9-t2-3f9a1c2e.mp4``: sortable, readable, one a job.

    The job key's first eight hex digits make the name the job's own: an edited
    manifest can give another job the same index, prompt and size (with other
    seconds, say), never the same key.  An extra take (an earlier attempt of
    the job, kept) ends in its attempt: ``...-3f9a1c2e-a1.mp4``.
    """
    name = slug(prompt_id, 40) if prompt_id else slug(prompt, 40)
    model_part = slug(short_name(model), 30)
    size_part = slug(size.replace(":", "x"), 12)
    attempt = f"-a{extra_attempt}" if extra_attempt is not None else ""
    return f"{index:04d}-{name}-{model_part}-{size_part}-t{take}-{slug(key, 8)}{attempt}.mp4"


def safe_destination(output_dir: Path, filename: str) -> Path:
    """``output_dir / filename``, refusing anything that would land outside ``output_dir``."""
    root = output_dir.resolve()
    dest = (root / filename).resolve()
    if dest.parent != root or not filename or "/" in filename or "\\" in filename:
        raise ValueError(f"refusing a file name that leaves the output folder: {filename!r}")
    return dest
