"""``batchvid init``: a starter batch that validates as written, runs on the simulator,
and never overwrites a file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from batchvid.cli.main import cli
from batchvid.manifest.model import PROMPT_KEYS, TOP_KEYS
from batchvid.manifest.plan import load_plan
from batchvid.manifest.prompt_files import ROW_FIELDS


def init(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["init", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_init_writes_a_manifest_and_a_prompt_file_that_validate(tmp_path: Path) -> None:
    code, out = init(str(tmp_path / "first"))
    assert code == 0, out
    manifest = tmp_path / "first" / "manifest.yaml"
    assert f"batchvid run {manifest} --simulate" in out
    plan = load_plan(manifest)
    assert plan.warnings == [] and plan.totals.jobs == 8
    assert {j.prompt_id for j in plan.jobs} == {"lighthouse", "pier", "market", "harbour"}
    # The comments teach every field: each top-level key and each column is explained.
    text = manifest.read_text()
    assert all(f"{key}:" in text for key in TOP_KEYS)
    assert all(key in text for key in (*PROMPT_KEYS, *ROW_FIELDS))


def test_init_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "prompts.csv").write_text("mine\n")
    code, out = init(str(tmp_path))
    assert code == 2 and "prompts.csv already exists: nothing was written" in out
    assert (tmp_path / "prompts.csv").read_text() == "mine\n"
    assert not (tmp_path / "manifest.yaml").exists()


def test_the_starter_batch_runs_on_the_simulator(tmp_path: Path) -> None:
    assert init(str(tmp_path / "b"))[0] == 0
    done = subprocess.run(
        [sys.executable, "-m", "batchvid", "run", str(tmp_path / "b" / "manifest.yaml"),
         "--simulate"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, "BATCHVID_LEDGER": str(tmp_path / "state" / "batchvid.db")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "downloaded=8" in done.stdout
    videos = sorted((tmp_path / "state" / "videos" / "my-first-batch").glob("*.mp4"))
    assert len(videos) == 8
