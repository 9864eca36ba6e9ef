"""`batchvid ledger copy`: a batch moves SQLite -> PostgreSQL -> SQLite whole, or not at all.

A batch driven through every state (failures, an extra take, downloads with probe
facts) is copied both ways; status, every job's fields but its id, and every
event (by job key) must come back the same.  Refusals leave the destination as it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import run_cli
from report_ledgers import (
    MATRIX_OUTCOMES,
    Clock,
    Outcome,
    add_batch,
    bytes_video,
    drive_all,
    matrix_plan,
)

from batchvid.errors import LedgerError
from batchvid.ledger import Ledger
from batchvid.ledger.copy import copy_batches
from batchvid.ledger.lock import batch_lock
from batchvid.ledger.rows import AutoRetry
from batchvid.states import JobState

T0 = 1_770_000_000.0


def make_batch(path: Path, out: Path) -> str:
    """A finished matrix batch with failures, in doubt, a stall split off as an extra take."""
    clock = Clock(T0)
    with Ledger(path, clock=clock) as ledger:
        batch = add_batch(ledger, matrix_plan(), out)
        drive_all(
            ledger, clock, batch, {**MATRIX_OUTCOMES, 1: Outcome("pending")}, bytes_video(out)
        )
        # One more: a stalled attempt kept as an extra take, its job pending again.
        job = ledger.reads.jobs_in_states(batch, [JobState.PENDING])[0]
        ledger.moves.begin_submit(job.id)
        ledger.moves.record_submitted(job.id, "task-extra", "SUBMITTED", T0 + 30)
        retry = AutoRetry("stalled", T0 + 60, "retry.stalled = 1")
        assert ledger.moves.record_stalled(job.id, "ran long", retry=retry) is not None
        return batch


def picture(ledger: Ledger, batch: str) -> dict[str, Any]:
    """Everything a user can see of a batch, with ids replaced by job keys."""
    jobs = list(ledger.reads.jobs(batch))
    key_of = {j.id: j.key for j in jobs}
    rows = []
    for job in jobs:
        fields = job._asdict()
        fields.pop("id")
        fields["extra_of"] = key_of.get(job.extra_of) if job.extra_of else None
        events = [
            (e.from_state, e.to_state, e.at_utc, e.detail) for e in ledger.reads.events(job.id)
        ]
        rows.append((job.key, fields, events))
    return {
        "batch": dataclasses.asdict(ledger.reads.get_batch(batch)),  # type: ignore[arg-type]
        "status": ledger.reads.status(batch),
        "jobs": sorted(rows, key=lambda r: r[0]),
        "verify": ledger.reads.verify(),
    }


def test_a_batch_goes_to_postgresql_and_back_unchanged(tmp_path: Path, pg_url: str) -> None:
    laptop = tmp_path / "laptop.db"
    batch = make_batch(laptop, tmp_path / "out")
    with Ledger(laptop) as source:
        before = picture(source, batch)
    assert before["status"]["extra_takes"] and before["verify"] == []
    heard: list[int] = []
    with Ledger(laptop) as source, Ledger(pg_url) as team:
        add_batch(team, "already-there", tmp_path / "other")  # ids there go on from its own
        copied = copy_batches(source, team, progress=lambda b, n: heard.append(n))
        assert [(c.batch, c.jobs) for c in copied] == [(batch, len(before["jobs"]))]
        assert copied[0].events == sum(len(j[2]) for j in before["jobs"]) and heard
        assert picture(team, batch) == before
    back = tmp_path / "back.db"
    with Ledger(pg_url) as team, Ledger(back) as again:
        copy_batches(team, again, [batch])
        assert picture(again, batch) == before
        assert [b.name for b in again.reads.batches()] == [batch]


def test_refusals_write_nothing(tmp_path: Path, pg_url: str) -> None:
    laptop = tmp_path / "laptop.db"
    batch = make_batch(laptop, tmp_path / "out")
    with Ledger(laptop) as source, Ledger(pg_url) as team:
        with pytest.raises(LedgerError, match="no batch named 'nope'"):
            copy_batches(source, team, [batch, "nope"])
        with pytest.raises(LedgerError, match="same ledger"):
            copy_batches(source, source)
        copy_batches(source, team)
        with pytest.raises(LedgerError, match="never merges"):
            copy_batches(source, team)
        # A batch being run by a worker with a live lease is not copied from.
        worker = team.leases.join(batch, 60)
        with pytest.raises(LedgerError, match="being run at"):
            copy_batches(team, Ledger(tmp_path / "elsewhere.db"))
        team.leases.leave(worker)
        assert len(copy_batches(team, Ledger(tmp_path / "elsewhere.db"))) == 1
        assert [b.name for b in team.reads.batches()] == [batch]  # the copy only read it


def test_the_command_copies_and_refuses_a_batch_a_run_holds(tmp_path: Path, pg_url: str) -> None:
    laptop = tmp_path / "laptop.db"
    batch = make_batch(laptop, tmp_path / "out")
    with batch_lock(laptop, batch):  # a run of it, on SQLite, holds this
        code, said = run_cli(tmp_path, "ledger", "copy", str(laptop), pg_url)
        assert code == 2 and "already being run" in said
    code, said = run_cli(tmp_path, "ledger", "copy", str(laptop), pg_url, "--batch", batch)
    assert code == 0, said
    assert f"{batch}: " in said and "jobs" in said and "events" in said
    assert "batchvid run" in said and "--ledger" in said  # where to go on
    code, said = run_cli(tmp_path, "status", batch, "--ledger", pg_url)
    assert code == 0 and "downloaded" in said
    code, said = run_cli(tmp_path, "ledger", "copy", str(tmp_path / "missing.db"), pg_url)
    assert code == 2 and "no ledger at" in said
    assert not (tmp_path / "missing.db").exists()
