"""batchvid: bulk Seedance video generation on CometAPI, from a YAML manifest.

The library comes first; the ``batchvid`` command is a thin layer over it.
What a Python user needs to plan, run, inspect and report a batch is here::

    import anyio, batchvid

    plan = batchvid.load_plan("lookbook.yaml")            # validated; ManifestError if not
    report = anyio.run(batchvid.run_manifest, "lookbook.yaml")   # simulator by default
    with batchvid.Ledger("state/batchvid.db", read_only=True) as ledger:
        data = batchvid.load_report(ledger, plan.batch)
        print(batchvid.render_report(data, "text"))

The layout (see each subpackage's docstring for what it owns and may import):
``manifest`` (YAML to a plan), ``ledger`` (SQLite: the only SQL), ``remote``
(the API over HTTP), ``run`` (policies, workers, the dispatcher), ``report``,
``sim`` (the simulator), ``cli`` (the only code that prints or exits); shared
vocabulary at the top: ``errors``, ``catalogue``, ``states``, ``request``, ``text``.

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
        DiskFull,
        DownloadError,
        IllegalTransition,
        InDoubtError,
        Issue,
        LedgerBusy,
        LedgerError,
        LedgerFull,
        ManifestError,
        RateLimited,
        RejectedError,
        RetryableError,
        ServiceRefused,
        TaskNotFound,
        UrlExpired,
    )
    from .ledger import DEFAULT_LEDGER, BatchRow, Event, JobRow, Ledger, open_ledger
    from .manifest import JobSpec, Manifest, Plan, load_plan
    from .remote import CometClient, RateLimiter, Task, TaskStatus
    from .report import FORMATS, ReportData, load_report
    from .report import render as render_report
    from .request import VideoRequest
    from .run import (
        Endpoint,
        Prepared,
        Runner,
        RunOptions,
        RunReport,
        batch_lock,
        prepare,
        run_batch,
        run_manifest,
    )
    from .sim import SimConfig, Simulator, SimulatorThread, serve_simulator
    from .states import TERMINAL_STATES, JobState

__version__ = "0.1.0"

_ERRORS = (
    "ApiError AuthError BatchvidError DiskFull DownloadError IllegalTransition InDoubtError "
    "Issue LedgerBusy LedgerError LedgerFull ManifestError RateLimited RejectedError "
    "RetryableError ServiceRefused TaskNotFound UrlExpired"
)
#: Public name -> (the module that defines it, its name there).
_EXPORTS: dict[str, tuple[str, str]] = {
    **{name: ("catalogue", name) for name in ("MODELS", "ModelSpec")},
    **{name: ("errors", name) for name in _ERRORS.split()},
    **{
        name: ("ledger", name)
        for name in ("DEFAULT_LEDGER", "BatchRow", "Event", "JobRow", "Ledger", "open_ledger")
    },
    **{name: ("manifest", name) for name in ("JobSpec", "Manifest", "Plan", "load_plan")},
    **{name: ("remote", name) for name in ("CometClient", "RateLimiter", "Task", "TaskStatus")},
    **{name: ("report", name) for name in ("FORMATS", "ReportData", "load_report")},
    "render_report": ("report", "render"),
    "VideoRequest": ("request", "VideoRequest"),
    **{
        name: ("run", name)
        for name in (
            "Endpoint",
            "Prepared",
            "RunOptions",
            "RunReport",
            "Runner",
            "batch_lock",
            "prepare",
            "run_batch",
            "run_manifest",
        )
    },
    **{
        name: ("sim", name)
        for name in ("SimConfig", "Simulator", "SimulatorThread", "serve_simulator")
    },
    **{name: ("states", name) for name in ("TERMINAL_STATES", "JobState")},
}

__all__ = [
    "DEFAULT_LEDGER",
    "FORMATS",
    "MODELS",
    "TERMINAL_STATES",
    "ApiError",
    "AuthError",
    "BatchRow",
    "BatchvidError",
    "CometClient",
    "DiskFull",
    "DownloadError",
    "Endpoint",
    "Event",
    "IllegalTransition",
    "InDoubtError",
    "Issue",
    "JobRow",
    "JobSpec",
    "JobState",
    "Ledger",
    "LedgerBusy",
    "LedgerError",
    "LedgerFull",
    "Manifest",
    "ManifestError",
    "ModelSpec",
    "Plan",
    "Prepared",
    "RateLimited",
    "RateLimiter",
    "RejectedError",
    "ReportData",
    "RetryableError",
    "RunOptions",
    "RunReport",
    "Runner",
    "ServiceRefused",
    "SimConfig",
    "Simulator",
    "SimulatorThread",
    "Task",
    "TaskNotFound",
    "TaskStatus",
    "UrlExpired",
    "VideoRequest",
    "__version__",
    "batch_lock",
    "load_plan",
    "load_report",
    "open_ledger",
    "prepare",
    "render_report",
    "run_batch",
    "run_manifest",
    "serve_simulator",
]


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'batchvid' has no attribute {name!r}")
    module, attribute = where
    value = getattr(import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> list[str]:
    return __all__
