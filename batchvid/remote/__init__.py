"""The remote API: CometAPI's Seedance endpoints as the docs describe them, over HTTP.

Owns: the protocol as plain functions (both status vocabularies, both error
shapes, what each failure means: ``protocol``), the async client (``client``),
the one download path, URL refreshes and the ``/content`` route included
(``download``), the check a file passes before its final name, with a
deadline (``check``), and the rate limiter every API request passes
(``ratelimit``).
Nothing here writes the ledger: calls return what they learned.

May import: the shared vocabulary (``batchvid.errors``, ``request``), httpx,
anyio and stamina.  Nothing else in batchvid.
"""

from __future__ import annotations

from .client import CometClient
from .download import DownloadResult
from .protocol import Task, TaskStatus
from .ratelimit import RateLimiter

__all__ = ["CometClient", "DownloadResult", "RateLimiter", "Task", "TaskStatus"]
