"""batchvid: bulk Seedance video generation on CometAPI, from a YAML manifest.

The library comes first; the ``batchvid`` command is a thin layer over it.
"""

from __future__ import annotations

from .catalogue import MODELS, ModelSpec
from .errors import (
    ApiError,
    AuthError,
    BatchvidError,
    DownloadError,
    IllegalTransition,
    InDoubtError,
    Issue,
    LedgerError,
    ManifestError,
    RateLimited,
    RejectedError,
    RetryableError,
    TaskNotFound,
    UrlExpired,
)
from .expand import JobSpec
from .plan import Plan, load_plan
from .request import VideoRequest

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "ApiError",
    "AuthError",
    "BatchvidError",
    "DownloadError",
    "IllegalTransition",
    "InDoubtError",
    "Issue",
    "JobSpec",
    "LedgerError",
    "ManifestError",
    "ModelSpec",
    "Plan",
    "RateLimited",
    "RejectedError",
    "RetryableError",
    "TaskNotFound",
    "UrlExpired",
    "VideoRequest",
    "__version__",
    "load_plan",
]
