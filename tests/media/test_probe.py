"""Probing files: the simulator's videos read back as made; anything else is a clear reason.

Bad input never crashes and never hangs: each case runs in a thread that must end.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import av
import pytest
from PIL import Image

from batchvid.errors import Undecodable
from batchvid.media import POSTER_WIDTH, inspect, poster_path, save_poster
from batchvid.media.synth import FPS, make_video
from batchvid.video import VideoFacts, mismatch


@pytest.mark.parametrize(
    ("width", "height", "seconds"), [(1280, 720, 5), (496, 864, 6), (1920, 1088, 10), (640, 640, 4)]
)
def test_a_made_video_probes_as_made_and_gives_a_poster(
    tmp_path: Path, width: int, height: int, seconds: int
) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(make_video(width, height, seconds))
    found = inspect(path, poster_width=POSTER_WIDTH)
    assert found.facts == VideoFacts(width, height, float(seconds), float(FPS), "h264", False)
    assert found.poster is not None
    assert found.poster.width == POSTER_WIDTH
    assert abs(found.poster.height - POSTER_WIDTH * height / width) <= 2
    poster = save_poster(found.poster, poster_path(path))
    assert poster == tmp_path / "posters" / "v.jpg"
    with Image.open(poster) as image:
        assert image.format == "JPEG" and image.width == POSTER_WIDTH
    assert not list(poster.parent.glob(".*"))  # no scratch file left


def test_probing_without_a_poster_width_decodes_but_makes_no_picture(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(make_video(864, 496, 5))
    assert inspect(path).poster is None


def test_each_made_video_is_made_once() -> None:
    assert make_video(864, 496, 3) is make_video(864, 496, 3)
    assert make_video(864, 496, 3) != make_video(864, 496, 4)


def test_a_mismatch_names_the_asked_and_the_rendered_size_and_length() -> None:
    facts = VideoFacts(1280, 720, 5.0, 24.0, "h264", False)
    model = "doubao-seedance-2-0"
    assert mismatch(model, "1920x1080", "720p", 5, facts) == (
        "asked 1920x1080, rendered 1280x720 (normalised by the API)"
    )
    assert mismatch(model, "16:9", "720p", 5, facts) is None
    assert mismatch(model, "1280x720", "720p", 5, facts) is None
    assert mismatch(model, "16:9", "720p", 10, facts) == (
        "asked 10 s, rendered 5.0 s (normalised by the API)"
    )
    # 1.5 Pro renders a ratio at 720p: asked 1080p's row, rendered 720p's.
    assert mismatch("doubao-seedance-1-5-pro", "16:9", "1080p", 5, facts) == (
        "asked 1920x1080, rendered 1280x720 (normalised by the API)"
    )


# -- bad input -----------------------------------------------------------------------------


def _good() -> bytes:
    return make_video(1280, 720, 5)


def _boxes(data: bytes) -> dict[bytes, int]:
    """Top-level MP4 boxes: type -> offset."""
    found, at = {}, 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        found[kind] = at
        if size < 8:
            break
        at += size
    return found


def _claiming(box: bytes, offset: int, value: int) -> bytes:
    """The good video with a 32-bit field ``offset`` bytes into ``box`` set to ``value``."""
    data = bytearray(_good())
    at = data.index(box) - 4
    data[at + offset : at + offset + 4] = struct.pack(">I", value)
    return bytes(data)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(out, "PNG")
    return out.getvalue()


def _no_frames() -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return out.getvalue()


BAD: dict[str, Callable[[], bytes]] = {
    "empty file": lambda: b"",
    "text": lambda: b"<Error><Code>AccessDenied</Code></Error>\n" * 4,
    "a still image": _png,
    "truncated: the moov index cut off": lambda: _good()[: len(_good()) * 3 // 5],
    "a stream with no frames": _no_frames,
    "an mdat claiming 4 GB": lambda: _claiming(b"mdat", 0, 0xFFFFFFF0),
    "a sample table claiming 2^31 entries": lambda: _claiming(b"stts", 12, 0x7FFFFFFF),
    "a header then noise": lambda: _good()[:40] + bytes(range(256)) * 100,
}


@pytest.mark.parametrize("make", BAD.values(), ids=BAD.keys())
def test_a_file_that_is_not_a_playable_video_is_undecodable_with_a_reason(
    tmp_path: Path, make: Callable[[], bytes]
) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(make())
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            inspect(path, poster_width=POSTER_WIDTH)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(120)  # a hang guard, not a speed limit
    assert not worker.is_alive(), "the probe hung"
    assert isinstance(outcome[0], Undecodable), outcome
    reason = str(outcome[0])
    assert reason and str(tmp_path) not in reason  # says why, not where


def test_a_stream_without_marked_keyframes_is_decoded_frame_by_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When skipping to keyframes yields nothing, the probe decodes every frame instead."""
    from batchvid.media import probe

    real = probe._poster_frame
    calls: list[bool] = []

    def no_keyframes(*args: object, keyframes: bool) -> object:
        calls.append(keyframes)
        return None if keyframes else real(*args, keyframes=keyframes)  # type: ignore[arg-type]

    monkeypatch.setattr(probe, "_poster_frame", no_keyframes)
    path = tmp_path / "v.mp4"
    path.write_bytes(make_video(640, 640, 3))
    found = inspect(path, poster_width=POSTER_WIDTH)
    assert calls == [True, False] and found.poster is not None
    assert found.facts.size == "640x640"


def test_a_file_the_machine_cannot_open_is_its_fault_not_the_files(tmp_path: Path) -> None:
    """Not "undecodable" (which would discard a paid video): an OSError, tried again later."""
    with pytest.raises(OSError) as raised:
        inspect(tmp_path / "missing.mp4")
    assert not isinstance(raised.value, Undecodable)
