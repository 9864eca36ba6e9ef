"""What a downloaded video holds, and how it compares with what was asked.

:class:`VideoFacts` is what probing a file found (:mod:`batchvid.media` reads
it, the ledger keeps it, reports show it).  :func:`mismatch` names what the
API changed: the docs say an exact ``WxH`` "can normalize to another size",
and a ratio-only request to 1.5 Pro renders the 720p row even when 1080p was
asked.  A mismatch is a flag, never a failure: the API normalises by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .catalogue import render_size

__all__ = ["DURATION_SLACK_S", "VideoFacts", "mismatch"]

#: A render this close to the seconds asked is the length asked (containers round).
DURATION_SLACK_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class VideoFacts:
    """What a video file holds, as probed (``None``: the file does not say)."""

    width: int
    height: int
    duration_s: float | None
    fps: float | None
    codec: str
    has_audio: bool

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def mismatch(
    model: str, size: str, resolution: str, seconds: int, rendered: VideoFacts
) -> str | None:
    """How the rendered video differs from the request, for people; ``None``: it does not.

    ``asked 1920x1080, rendered 1280x720 (normalised by the API)``: the size
    asked is the exact ``WxH`` sent, or the documented size of the ratio at the
    resolution; the length asked is ``seconds``, give or take
    :data:`DURATION_SLACK_S`.
    """
    problems = []
    asked = render_size(model, size, resolution)
    if rendered.size != asked:
        problems.append(f"asked {asked}, rendered {rendered.size}")
    took = rendered.duration_s
    if took is not None and abs(took - seconds) > DURATION_SLACK_S:
        problems.append(f"asked {seconds} s, rendered {took:.1f} s")
    return f"{'; '.join(problems)} (normalised by the API)" if problems else None
