"""The one request shape every layer shares: what a single create call sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .catalogue import DEFAULT_RESOLUTION, DEFAULT_SECONDS, DEFAULT_SIZE

__all__ = ["VideoRequest", "image_type"]

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
)


def image_type(head: bytes) -> str | None:
    """The content type of an image judged by its first bytes, or ``None``.

    Only the formats the API accepts are recognised: JPEG, PNG and WebP.
    ``head`` needs at least 12 bytes.
    """
    for magic, offset, ctype in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return ctype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True, slots=True)
class VideoRequest:
    """The fields of one ``POST /v1/videos``, already normalised and validated.

    ``references`` are local image files, sent in order as repeated
    ``input_reference`` parts (the prompt calls them [Image 1], [Image 2], ...).
    """

    prompt: str
    model: str
    seconds: int = DEFAULT_SECONDS
    size: str = DEFAULT_SIZE
    resolution: str = DEFAULT_RESOLUTION
    references: tuple[Path, ...] = field(default=())

    def form_fields(self) -> dict[str, str]:
        """The non-file multipart fields, as plain values (never the docs' quoted ones)."""
        return {
            "prompt": self.prompt,
            "model": self.model,
            "seconds": str(self.seconds),
            "size": self.size,
            "resolution": self.resolution,
        }
