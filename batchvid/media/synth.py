"""Test videos: real, playable H.264 MP4s of a given size and length, made once each.

The simulator serves these: a render of the size and length the docs say the
model renders, labelled with both so a poster shows them.  One second of a
still frame is encoded with x264's fastest preset (one keyframe, then frames
that repeat it) and that second's packets are muxed again for each further
second, every repeat starting on its own keyframe: a 720p 5 s video is about
40 KB and takes under 0.1 s of CPU to make, once per process (callers in
several threads wait for the one encode rather than each making it).
"""

from __future__ import annotations

import io
import threading
from fractions import Fraction
from typing import Final

import av
from PIL import Image, ImageDraw, ImageFont

__all__ = ["FPS", "made_video", "make_video"]

#: Frames per second of every test video (Seedance renders 24).
FPS: Final = 24
_TIME_BASE: Final = Fraction(1, FPS)
_X264: Final = {"preset": "ultrafast", "crf": "45", "g": str(FPS), "bf": "0", "threads": "1"}

_guard = threading.Lock()
_making: dict[tuple[int, int, int], threading.Lock] = {}
#: Every video made, by (width, height, seconds): bounded by the docs' size tables.
_made: dict[tuple[int, int, int], bytes] = {}


def made_video(width: int, height: int, seconds: int) -> bytes | None:
    """The video :func:`make_video` made for these, or ``None`` if not made yet (cheap:
    for callers that would otherwise hop to a thread to ask)."""
    return _made.get(_key(width, height, seconds))


def make_video(width: int, height: int, seconds: int) -> bytes:
    """An MP4 of ``width`` x ``height`` (made even, as H.264 4:2:0 needs) lasting ``seconds``."""
    key = _key(width, height, seconds)
    if (video := _made.get(key)) is not None:
        return video
    with _guard:
        lock = _making.setdefault(key, threading.Lock())
    with lock:
        if key not in _made:
            _made[key] = _encode(*key)
        return _made[key]


def _key(width: int, height: int, seconds: int) -> tuple[int, int, int]:
    return max(2, width - width % 2), max(2, height - height % 2), max(1, seconds)


def _encode(width: int, height: int, seconds: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(_X264)
        picture = av.VideoFrame.from_image(_still(width, height, seconds))  # type: ignore[no-untyped-call]
        frame = picture.reformat(format="yuv420p")
        second: list[av.Packet[av.VideoStream]] = []
        for n in range(FPS):
            frame.pts, frame.time_base = n, _TIME_BASE
            second += stream.encode(frame)
        second += stream.encode()
        for repeat in range(seconds):
            for packet in second:
                copy = av.Packet(bytes(packet))
                copy.stream, copy.time_base = stream, packet.time_base
                copy.is_keyframe = packet.is_keyframe
                copy.pts = None if packet.pts is None else packet.pts + repeat * FPS
                copy.dts = None if packet.dts is None else packet.dts + repeat * FPS
                out.mux(copy)
    return buffer.getvalue()


def _still(width: int, height: int, seconds: int) -> Image.Image:
    """A dusk-sky gradient labelled, in its middle, with the video's size and length."""
    mask = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(
        Image.new("RGB", (width, height), (242, 150, 72)),
        Image.new("RGB", (width, height), (24, 44, 96)),
        mask,
    )
    font = ImageFont.load_default(size=max(10, min(width, height) // 7))
    ImageDraw.Draw(image).multiline_text(
        (width // 2, height // 2),
        f"{width}x{height}\n{seconds} s",
        fill=(255, 255, 255),
        font=font,
        anchor="mm",
        align="center",
    )
    return image
