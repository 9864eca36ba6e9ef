"""What the run's end-to-end tests share: a manifest, options, one run against a simulator."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from batchvid.ledger import Ledger
from batchvid.manifest import Retries
from batchvid.manifest.plan import Plan
from batchvid.run.batch import Endpoint, Prepared, prepare, run_batch
from batchvid.run.options import RunOptions, RunReport
from batchvid.sim.server import Simulator

SCALE = 0.002  # a 60 s render takes 0.12 s


def matrix_manifest(
    tmp_path: Path, *, prompts: int = 5, extra: str = "", batch: str = "e2e"
) -> Path:
    """prompts x 2 models x 5 sizes = 10 jobs per prompt, in batch ``batch``."""
    lines = "\n".join(f'  - "shot {i}: waves on a pier, {{style}}"' for i in range(prompts))
    path = tmp_path / "batch.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            version: 1
            batch: {batch}
            output_dir: out
            defaults: {seconds: 5, resolution: 480p}
            matrix:
              model: [doubao-seedance-2-0-fast, doubao-seedance-1-0-pro]
              size: ["16:9", "9:16", "1:1", "4:3", "21:9"]
              style: [noir]
            prompts:
            """
        ).replace("{batch}", batch)
        + lines
        + "\n"
        + extra
    )
    return path


#: No automatic new attempts: every FAILED, ERROR, vanished or stalled task ends its job.
NO_RETRIES = Retries(error=0, failed=0, vanished=0, stalled=0)

OPTIONS = RunOptions(
    rate_per_minute=None, concurrency=8, max_active=64, poll_interval=10, time_scale=SCALE
)


async def run_once(
    tmp_path: Path,
    sim: Simulator,
    plan: Plan,
    options: RunOptions = OPTIONS,
    *,
    key: str | None = None,
) -> tuple[RunReport, Prepared]:
    endpoint = Endpoint(sim.base_url, key or sim.api_key)
    ledger_path = tmp_path / "ledger.db"
    with Ledger(ledger_path) as ledger:
        prepared = prepare(ledger, plan, endpoint)
        report = await run_batch(ledger, prepared, endpoint, options)
    return report, prepared


def ledger_jobs(tmp_path: Path) -> list[Any]:
    with Ledger(tmp_path / "ledger.db") as ledger:
        return list(ledger.reads.jobs("e2e"))
