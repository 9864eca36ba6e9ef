"""Putting a batch together: options from limits and flags, and the one-run-per-batch lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchvid.ledger import Ledger
from batchvid.manifest import Limits, load_plan
from batchvid.run.batch import Endpoint, options_for, prepare
from batchvid.run.options import RunOptions


def test_options_come_from_the_manifest_and_flags_win() -> None:
    limits = Limits(rate_per_minute=30, concurrency=4, max_wait=600.0)
    options = options_for(limits, {"concurrency": 2, "max_active": None})
    assert (options.rate_per_minute, options.concurrency) == (30, 2)
    assert options.max_active == RunOptions().max_active  # neither said: the default
    assert options.max_wait == 600.0
    assert options_for(Limits(), {}).max_wait is None  # learned from render times


def test_the_expanders_jobs_are_recorded_with_their_axes_and_cost(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\nbatch: b\ndefaults: {model: doubao-seedance-2-0}\n"
        "matrix:\n  size: ['16:9', '9:16']\n  style: [noir, pastel]\n"
        "prompts: ['a {style} shot']\npricing: {doubao-seedance-2-0: 0.1}\n"
    )
    plan = load_plan(manifest)
    path = tmp_path / "l.db"
    with Ledger(path) as ledger:
        prepared = prepare(ledger, plan, Endpoint(simulate=True))
        rows = list(ledger.reads.jobs("b"))
    assert prepared.new_jobs == 4
    assert [r.axes for r in rows] == [j.axes for j in plan.jobs]
    assert rows[0].axes == (("size", "16:9"), ("style", "noir"))
    assert [r.est_cost_usd for r in rows] == [pytest.approx(0.5)] * 4  # 5 s at $0.10
