"""Probing a video file: its facts, proof that it decodes, and a poster frame.

:func:`inspect` opens the file with PyAV, reads the video stream's size,
frame rate and codec, the container's length and whether it has audio, then
decodes the keyframes of its first second (frames in between are skipped: a
keyframe is a whole picture, so this proves the stream decodes at a fifth of
the cost of every frame): a file that opens but does not decode is not a
video.  The poster is the last keyframe at or before a second in (for most
videos, the first frame).  It bounds its own work (how much FFmpeg may read to
find the streams, how many frames it decodes), so a hostile file costs little;
the caller still runs it off the event loop with a timeout.
"""

from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

import av
import av.error

from ..errors import Undecodable
from ..video import VideoFacts

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["POSTER_AT_S", "Inspection", "inspect"]

#: The poster is the last keyframe this far in (or half-way through a shorter video).
POSTER_AT_S: Final = 1.0
#: Keyframes decoded at most while looking for it.
MAX_FRAMES: Final = 30
#: How much of the file FFmpeg may read to find its streams (bytes, microseconds).
_OPEN_OPTIONS: Final = {"probesize": "5000000", "analyzeduration": "5000000"}
#: FFmpeg errors that are the machine's fault, not the file's (another try may do).
_THE_MACHINES: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO, errno.EINTR}
)
#: FFmpeg's demuxers for single pictures (besides every ``*_pipe`` one): not videos.
_STILL_FORMATS: Final = frozenset({"image2", "webp", "gif", "apng"})


class Inspection(NamedTuple):
    """What :func:`inspect` found: the file's facts, and its poster frame (when asked)."""

    facts: VideoFacts
    poster: Image | None


def inspect(path: Path, *, poster_width: int | None = None) -> Inspection:
    """Probe ``path``; with ``poster_width``, also take its poster frame at that width.

    Raises :class:`~batchvid.errors.Undecodable` with a reason a person can act on
    when the file is at fault, and ``OSError`` when the machine is (out of file
    handles or memory, the file unreadable): that is worth trying again.
    """
    try:
        with av.open(str(path), options=_OPEN_OPTIONS) as container:
            if not container.streams.video:
                raise Undecodable("no video stream in the file")
            if container.format.name in _STILL_FORMATS or container.format.name.endswith("_pipe"):
                raise Undecodable(f"a still image ({container.format.name}), not a video")
            stream = container.streams.video[0]
            facts = _facts(container, stream)
            frame = _poster_frame(container, stream, facts.duration_s, keyframes=True)
            if frame is None:  # no frame marked as a keyframe: decode them all from the start
                container.seek(0)
                frame = _poster_frame(container, stream, facts.duration_s, keyframes=False)
            if frame is None:
                raise Undecodable("the video stream has no frames that decode")
            image = None
            if poster_width is not None:
                height = max(2, round(frame.height * poster_width / frame.width / 2) * 2)
                image = frame.to_image(width=poster_width, height=height)  # type: ignore[no-untyped-call]
            return Inspection(facts, image)
    except Undecodable:
        raise
    except av.error.FFmpegError as exc:
        if exc.errno in _THE_MACHINES:
            raise OSError(exc.errno, f"cannot probe the file: {_reason(exc)}") from exc
        raise Undecodable(f"not a playable video: {_reason(exc)}") from exc
    except ValueError as exc:
        raise Undecodable(f"not a playable video: {_reason(exc)}") from exc
    except MemoryError as exc:
        raise OSError(errno.ENOMEM, "out of memory while probing the file") from exc


def _facts(container: av.container.InputContainer, stream: av.VideoStream) -> VideoFacts:
    context = stream.codec_context
    if not context.width or not context.height:
        raise Undecodable("the video stream has no frame size")
    duration = None
    if container.duration and container.duration > 0:
        duration = container.duration / av.time_base
    elif stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    rate = stream.average_rate
    fps = float(rate) if rate and math.isfinite(float(rate)) and float(rate) > 0 else None
    return VideoFacts(
        width=context.width,
        height=context.height,
        duration_s=None if duration is None else round(duration, 3),
        fps=None if fps is None else round(fps, 3),
        codec=context.name,
        has_audio=bool(container.streams.audio),
    )


def _poster_frame(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    duration: float | None,
    *,
    keyframes: bool,
) -> av.VideoFrame | None:
    """The last (key)frame at or before :data:`POSTER_AT_S`, decoding from the start
    (no seek: a seek would trust the index we are checking); ``None``: none decoded."""
    target = POSTER_AT_S if duration is None else min(POSTER_AT_S, duration / 2)
    stream.codec_context.skip_frame = "NONKEY" if keyframes else "DEFAULT"
    chosen = None
    for n, frame in enumerate(container.decode(stream)):
        if chosen is not None and frame.time is not None and frame.time > target:
            break
        chosen = frame
        if n + 1 >= MAX_FRAMES:
            break
    return chosen


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words (``Invalid data found when processing input``), without the path."""
    return str(getattr(exc, "strerror", None) or exc or type(exc).__name__)
