"""Posters: one small JPEG per video, beside the videos, for galleries and contact sheets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["POSTERS_DIR", "POSTER_WIDTH", "poster_path", "save_poster"]

#: Posters are this wide (height keeps the video's aspect ratio).
POSTER_WIDTH: Final = 320
#: The folder beside the videos that holds their posters.
POSTERS_DIR: Final = "posters"


def poster_path(video: Path) -> Path:
    """Where the poster of ``video`` goes: ``posters/<video name>.jpg`` beside it."""
    return video.parent / POSTERS_DIR / f"{video.stem}.jpg"


def save_poster(image: Image, dest: Path) -> Path:
    """Write ``image`` as a JPEG at ``dest``, whole or not at all (a scratch file, renamed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = dest.with_name(f".{dest.name}.tmp")
    image.convert("RGB").save(scratch, "JPEG", quality=80, optimize=True)
    os.replace(scratch, dest)
    return dest
