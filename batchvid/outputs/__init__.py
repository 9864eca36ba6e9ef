"""Where a batch's videos go: a local folder (the default) or an S3-compatible store.

Owns: what an output may be (``target``: a folder, or ``s3://BUCKET/PREFIX``;
anything else that looks like a URL is refused by name), what an object of a
video carries and what it is called when its name is taken (``objects``,
pure), and the store itself through obstore (``s3``: check, conditional put,
find, presigned links, reads).  The run spools each video locally, checks it,
and keeps it here (``batchvid.run.keep``).

May import: the shared vocabulary (``batchvid.errors``, ``video``), anyio, and
obstore (imported only when a store is used).
"""

from __future__ import annotations

from .objects import Stored, object_attributes, object_name, stored_from
from .s3 import S3Outputs
from .target import OutputTarget, output_target

__all__ = [
    "OutputTarget",
    "S3Outputs",
    "Stored",
    "object_attributes",
    "object_name",
    "output_target",
    "stored_from",
]
