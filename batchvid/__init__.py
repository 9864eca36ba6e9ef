"""batchvid: bulk Seedance video generation on CometAPI, from a YAML manifest.

The library comes first; the ``batchvid`` command is a thin layer over it.
Names are imported on first use (PEP 562), so ``batchvid status`` does not pay
for YAML, the manifest machinery or httpx.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        ServiceRefused,
        TaskNotFound,
        UrlExpired,
    )
    from .expand import JobSpec
    from .plan import Plan, load_plan
    from .request import VideoRequest

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "MODELS": "catalogue",
    "ModelSpec": "catalogue",
    "ApiError": "errors",
    "AuthError": "errors",
    "BatchvidError": "errors",
    "DownloadError": "errors",
    "IllegalTransition": "errors",
    "InDoubtError": "errors",
    "Issue": "errors",
    "LedgerError": "errors",
    "ManifestError": "errors",
    "RateLimited": "errors",
    "RejectedError": "errors",
    "RetryableError": "errors",
    "ServiceRefused": "errors",
    "TaskNotFound": "errors",
    "UrlExpired": "errors",
    "JobSpec": "expand",
    "Plan": "plan",
    "load_plan": "plan",
    "VideoRequest": "request",
}

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
    "ServiceRefused",
    "TaskNotFound",
    "UrlExpired",
    "VideoRequest",
    "__version__",
    "load_plan",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'batchvid' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> list[str]:
    return __all__
