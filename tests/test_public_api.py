"""The public library API: what ``import batchvid`` offers, pinned (as httpx pins its own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import batchvid

PUBLIC = [
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


def test_the_public_names_are_pinned() -> None:
    assert sorted(batchvid.__all__) == sorted(PUBLIC)
    assert dir(batchvid) == sorted(batchvid.__all__)


def test_every_public_name_resolves() -> None:
    for name in PUBLIC:
        assert getattr(batchvid, name) is not None, name
    assert batchvid.render_report is batchvid.report.render


def test_importing_batchvid_loads_nothing_heavy() -> None:
    """Names load on first use: ``import batchvid`` pays for neither YAML nor httpx."""
    code = "import sys, batchvid; print(sorted(m for m in ('yaml', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.anyio
async def test_a_batch_planned_run_and_reported_from_code(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\nbatch: notebook\ndefaults: {model: doubao-seedance-2-0-fast}\n"
        'prompts: ["a paper boat on a calm lake", "a tram at night"]\n'
    )
    plan = batchvid.load_plan(manifest)
    assert [j.prompt for j in plan.jobs] == ["a paper boat on a calm lake", "a tram at night"]
    ledger_path = tmp_path / "ledger.db"
    options = batchvid.RunOptions(time_scale=0.001, rate_per_minute=None)
    report = await batchvid.run_manifest(manifest, ledger_path=ledger_path, options=options)
    assert report.all_done and report.counts["downloaded"] == 2
    with batchvid.Ledger(ledger_path, read_only=True) as ledger:
        data = batchvid.load_report(ledger, "notebook")
    assert "downloaded" in batchvid.render_report(data, "text")
