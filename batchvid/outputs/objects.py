"""What an object of a video carries, and what it is called when its name is taken.

Every video object carries its own proof in its metadata: the task it is the
video of, its sha256 and what probing it found, and its poster's name.  So a
run that crashed between the upload and the ledger's record finds the object
on its next run, sees that it is this task's video, and records it from the
metadata: nothing downloaded again, nothing created again.

Names are the same as a folder's (``run/files``).  A name another task's video
holds already (a bucket shared by two batches, a manifest edited since) is
never replaced: the video takes ``<stem>.<task>.<ext>`` instead.  Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, Final

from ..video import VideoFacts
from .target import OutputTarget

__all__ = [
    "POSTERS",
    "Stored",
    "object_attributes",
    "object_name",
    "poster_name",
    "stored_from",
]

#: Posters go beside the videos, under this part of the prefix.
POSTERS: Final = "posters"
#: The metadata keys (``x-amz-meta-...`` on S3).
TASK: Final = "batchvid-task"
SHA256: Final = "batchvid-sha256"
FACTS: Final = "batchvid-facts"
POSTER: Final = "batchvid-poster"
BYTES: Final = "batchvid-bytes"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Stored:
    """A video kept in the store: its object, what it holds, and its poster's URI."""

    uri: str
    name: str
    size: int
    sha256: str
    etag: str | None
    facts: VideoFacts | None = None
    poster_uri: str | None = None


def object_name(filename: str, task_id: str, *, taken: bool) -> str:
    """The object a video goes to: its file name, or (``taken`` by another task's
    video) the same with the task's id before the extension."""
    if not taken:
        return filename
    path = PurePosixPath(filename)
    tag = _UNSAFE.sub("-", task_id).strip("-")[-40:] or "task"
    return f"{path.stem}.{tag}{path.suffix}"


def poster_name(video_name: str) -> str:
    """Where a video's poster goes, beside the videos."""
    return f"{POSTERS}/{PurePosixPath(video_name).stem}.jpg"


def object_attributes(
    task_id: str, sha256: str, size: int, facts: VideoFacts | None, poster: str | None
) -> dict[str, str]:
    """What a video object carries: its type, and the metadata that proves it."""
    attributes = {"Content-Type": "video/mp4", TASK: task_id, SHA256: sha256, BYTES: str(size)}
    if facts is not None:
        attributes[FACTS] = json.dumps(asdict(facts), separators=(",", ":"))
    if poster is not None:
        attributes[POSTER] = poster
    return attributes


def stored_from(
    target: OutputTarget,
    name: str,
    task_id: str,
    attributes: Mapping[str, str],
    meta: Mapping[str, Any],
) -> Stored | None:
    """The video ``name`` holds, if it is ``task_id``'s, says what it holds, and is as
    long as it says (``None``: another task's video, or an object batchvid did not
    write, or one cut short)."""
    if attributes.get(TASK) != task_id or not attributes.get(SHA256):
        return None
    if attributes.get(BYTES) != str(meta.get("size")):
        return None
    facts = None
    if attributes.get(FACTS):
        try:
            facts = VideoFacts(**json.loads(attributes[FACTS]))
        except (TypeError, ValueError):
            facts = None  # the video stands; what it holds is probed no more
    poster = attributes.get(POSTER)
    return Stored(
        uri=target.object_uri(name),
        name=name,
        size=int(meta["size"]),
        sha256=attributes[SHA256],
        etag=meta.get("e_tag"),
        facts=facts,
        poster_uri=target.object_uri(poster) if poster else None,
    )
