"""Putting a batch together: options from limits and flags, and the one-run-per-batch lock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batchvid.errors import LedgerError
from batchvid.ledger import Ledger
from batchvid.manifest import Limits, load_plan
from batchvid.run.batch import Endpoint, batch_lock, options_for, prepare
from batchvid.run.options import RunOptions


def test_options_come_from_the_manifest_and_flags_win() -> None:
    limits = Limits(rate_per_minute=30, concurrency=4, max_wait=600.0)
    options = options_for(limits, {"concurrency": 2, "max_active": None})
    assert (options.rate_per_minute, options.concurrency) == (30, 2)
    assert options.max_active == RunOptions().max_active  # neither said: the default
    assert options.max_wait == 600.0
    assert options_for(Limits(), {}).max_wait is None  # learned from render times


def test_one_batch_runs_in_one_process_at_a_time(tmp_path: Path) -> None:
    ledger = tmp_path / "l.db"
    with batch_lock(ledger, "b"):
        with pytest.raises(LedgerError, match="already being run"):  # noqa: SIM117
            with batch_lock(ledger, "b"):
                pass
        with batch_lock(ledger, "other"):  # another batch of the same ledger is free
            pass
        holder = subprocess.run(
            [sys.executable, "-c", LOCK_AGAIN, str(ledger)], capture_output=True, text=True
        )
        assert "already being run" in holder.stdout, holder.stderr
    with batch_lock(ledger, "b"):  # released with the first holder
        pass


LOCK_AGAIN = """
import sys
from pathlib import Path
from batchvid.errors import LedgerError
from batchvid.run.batch import batch_lock
try:
    with batch_lock(Path(sys.argv[1]), "b"):
        print("got it")
except LedgerError as exc:
    print(exc)
"""


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


def test_a_symlinked_ledger_is_the_same_batch_for_the_lock(tmp_path: Path) -> None:
    real = tmp_path / "state" / "l.db"
    real.parent.mkdir()
    real.touch()
    alias = tmp_path / "alias.db"
    alias.symlink_to(real)
    with batch_lock(real, "b"), pytest.raises(LedgerError, match="already being run"):  # noqa: SIM117
        with batch_lock(alias, "b"):
            pass


def test_a_hard_link_or_another_path_to_the_ledger_meets_the_same_lock(tmp_path: Path) -> None:
    """The lock is the database file's own, not its name's: through a hard link in
    another folder (or a bind mount) the batch is still held, and the ledger still
    takes writes while it is."""
    ledger = tmp_path / "state" / "batchvid.db"
    ledger.parent.mkdir()
    with Ledger(ledger) as made:
        made.plans.upsert_batch("b", manifest_path="m", manifest_sha256="0", output_dir="out")
    elsewhere = tmp_path / "other" / "same.db"
    elsewhere.parent.mkdir()
    os.link(ledger, elsewhere)
    with batch_lock(ledger, "b"):
        holder = subprocess.run(
            [sys.executable, "-c", LOCK_AGAIN, str(elsewhere)], capture_output=True, text=True
        )
        assert "another path to the same ledger file" in holder.stdout, holder.stderr
        with batch_lock(elsewhere, "other"):  # another batch, through the link: free
            pass
        with Ledger(elsewhere) as through_link:  # SQLite's own locks are untouched
            through_link.plans.upsert_batch(
                "c", manifest_path="m", manifest_sha256="0", output_dir="out"
            )
    holder = subprocess.run(
        [sys.executable, "-c", LOCK_AGAIN, str(elsewhere)], capture_output=True, text=True
    )
    assert holder.stdout.strip() == "got it", holder.stderr  # released with its holder


def test_a_bind_mount_of_the_ledgers_folder_meets_the_same_lock(tmp_path: Path) -> None:
    """The same file through a bind mount (in a private mount namespace of the second
    process, so nothing outside this test sees the mount)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here to make a private bind mount with")
    ledger = tmp_path / "state" / "batchvid.db"
    ledger.parent.mkdir()
    with Ledger(ledger) as made:
        made.plans.upsert_batch("b", manifest_path="m", manifest_sha256="0", output_dir="out")
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    probe = subprocess.run(
        ["unshare", "--mount", "mount", "--bind", str(ledger.parent), str(mounted)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"bind mounts need root (or CAP_SYS_ADMIN): {probe.stderr.strip()}")
    script = (
        f"mount --bind {ledger.parent} {mounted} && "
        f"{sys.executable} -c '{LOCK_AGAIN}' {mounted / 'batchvid.db'}"
    )
    with batch_lock(ledger, "b"):
        holder = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True
        )
    assert "another path to the same ledger file" in holder.stdout, holder.stderr
