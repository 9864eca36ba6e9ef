"""Video files: what one holds (probe), its poster frame, and test videos to serve.

Owns: opening a downloaded file with PyAV (FFmpeg, shipped in its wheels) to
read its size, length, frame rate, codec and audio, proving it decodes, and
taking a small poster frame (``probe``); writing posters (``poster``); and the
simulator's videos, encoded once per size and length (``synth``).  Blocking
calls: run them off the event loop.

May import: the shared vocabulary (``batchvid.errors``, ``video``), PyAV and
Pillow.  Nothing else in batchvid.
"""

from __future__ import annotations

from .poster import POSTER_WIDTH, poster_path, save_poster
from .probe import Inspection, inspect

__all__ = ["POSTER_WIDTH", "Inspection", "inspect", "poster_path", "save_poster"]
