"""One process per batch on an SQLite ledger: the lock, however the ledger is reached."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batchvid.errors import LedgerError
from batchvid.ledger import Ledger
from batchvid.ledger.lock import batch_lock

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


def test_a_symlinked_ledger_is_the_same_batch_for_the_lock(tmp_path: Path) -> None:
    real = tmp_path / "state" / "l.db"
    real.parent.mkdir()
    real.touch()
    alias = tmp_path / "alias.db"
    alias.symlink_to(real)
    with batch_lock(real, "b"), pytest.raises(LedgerError, match="already being run"):  # noqa: SIM117
        with batch_lock(alias, "b"):
            pass


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
