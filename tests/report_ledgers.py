"""Ledgers for report tests, filled through the ledger's real transitions on a fake clock.

Shared by ``test_report.py`` and ``test_report_browser.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from batchvid.catalogue import normalised_size
from batchvid.ledger import Ledger
from batchvid.ledger.rows import JobRow, NewJob
from batchvid.manifest.plan import Plan, load_plan
from batchvid.media import POSTER_WIDTH, inspect, poster_path, save_poster, synth
from batchvid.run.batch import ledger_jobs
from batchvid.states import JobState
from batchvid.video import mismatch

ROOT: Final = Path(__file__).resolve().parent.parent
MATRIX: Final = ROOT / "manifests" / "matrix.yaml"
T0: Final = 1_800_000_000.0


class Clock:
    """A settable unix clock."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where to take a job: a state name, and for failures the reason."""

    state: str
    render: float = 60.0
    code: str | None = None
    message: str = ""


DOWNLOADED: Final = Outcome("downloaded")
#: Writes a downloaded job's file and returns its path (default: a few bytes under ``dir``).
VideoMaker = Callable[[JobRow], Path]


def add_batch(ledger: Ledger, plan_or_name: Plan | str, output_dir: Path) -> str:
    if isinstance(plan_or_name, str):
        ledger.plans.upsert_batch(
            plan_or_name,
            manifest_path=f"{plan_or_name}.yaml",
            manifest_sha256="ab" * 32,
            output_dir=output_dir,
            endpoint="simulator",
        )
        return plan_or_name
    plan = plan_or_name
    ledger.plans.upsert_batch(
        plan.batch,
        manifest_path=plan.manifest.path,
        manifest_sha256="ab" * 32,
        output_dir=output_dir,
        pricing=plan.manifest.pricing,
        budget_usd=plan.manifest.budget_usd,
        endpoint="simulator",
    )
    ledger.plans.upsert_jobs(plan.batch, ledger_jobs(plan))
    return plan.batch


def matrix_plan() -> Plan:
    """The shipped 48-job matrix example."""
    return load_plan(MATRIX)


def bytes_video(directory: Path) -> VideoMaker:
    def make(job: JobRow) -> Path:
        path = directory / f"{job.idx:03d}-{job.key[:8]}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not really a video " + job.key.encode())
        return path

    return make


def real_video(directory: Path) -> VideoMaker:
    """Writes the H.264 video the API renders for the job (size and length as the docs
    say, normalisations included), as the simulator serves it."""

    def make(job: JobRow) -> Path:
        path = directory / f"{job.idx:03d}-{job.key[:8]}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        width, height = normalised_size(job.model, job.size, job.resolution).split("x")
        path.write_bytes(synth.make_video(int(width), int(height), job.seconds))
        return path

    return make


def probed(job: JobRow, path: Path) -> dict[str, Any]:
    """What a run records beside a downloaded video: its facts, how they differ from the
    request, its poster."""
    found = inspect(path, poster_width=POSTER_WIDTH)
    assert found.poster is not None
    return {
        "facts": found.facts,
        "normalised": mismatch(job.model, job.size, job.resolution, job.seconds, found.facts),
        "poster": save_poster(found.poster, poster_path(path)),
    }


def drive(
    ledger: Ledger,
    clock: Clock,
    job: JobRow,
    outcome: Outcome,
    make_video: VideoMaker,
    *,
    probe: bool = False,
) -> None:
    """Take a pending ``job`` to ``outcome.state`` the way a run would (``probe``: and
    probe its video, as ``run`` does, which needs a real one: :func:`real_video`)."""
    target = outcome.state
    if target == "pending":
        return
    ledger.moves.begin_submit(job.id)
    clock.advance(1)
    if target == "submitting":
        return
    if target == "rejected":
        ledger.moves.record_rejected(job.id, outcome.code, outcome.message)
        return
    if target == "in_doubt":
        ledger.moves.record_in_doubt(
            job.id, outcome.message or "read timeout after the request left"
        )
        return
    ledger.moves.record_submitted(job.id, f"task-{job.id}", "SUBMITTED", clock() + 30)
    if target == "queued":
        return
    clock.advance(outcome.render / 2)
    ledger.moves.record_poll(job.id, "IN_PROGRESS", 50, clock() + 30, seen=JobState.IN_PROGRESS)
    if target == "in_progress":
        return
    if target == "stalled":
        clock.advance(7200)
        ledger.moves.record_stalled(job.id)
        return
    clock.advance(outcome.render / 2)
    if target == "failed":
        ledger.moves.record_failed(job.id, outcome.code, outcome.message, remote_status="FAILURE")
        return
    ledger.moves.record_completed(job.id, f"https://cdn.invalid/{job.id}.mp4", clock() + 3600)
    if target == "completed":
        return
    assert target == "downloaded", target
    path = make_video(job)
    data = path.read_bytes()
    facts = probed(job, path) if probe else {}
    ledger.moves.record_downloaded(
        job.id, path, len(data), hashlib.sha256(data).hexdigest(), **facts
    )


def drive_all(
    ledger: Ledger,
    clock: Clock,
    batch: str,
    outcomes: Mapping[int, Outcome],
    make_video: VideoMaker,
    default: Outcome | None = DOWNLOADED,
    *,
    probe: bool = False,
) -> None:
    """Drive every job of ``batch``: ``outcomes[idx]``, else ``default`` (None: leave pending).

    Downloaded jobs without an outcome of their own render in ``30 + 5 * idx`` seconds.
    """
    for job in list(ledger.reads.jobs(batch)):
        outcome = outcomes.get(job.idx)
        if outcome is None and default is not None:
            outcome = Outcome(default.state, render=30.0 + 5 * job.idx)
        if outcome is not None:
            drive(ledger, clock, job, outcome, make_video, probe=probe)
            clock.advance(2)


#: The finished-with-failures scenario of the matrix example (by job index).
MATRIX_OUTCOMES: Final = {
    3: Outcome("failed", 90, "OutputModeration", "the output was flagged by moderation"),
    10: Outcome("failed", 80, "OutputModeration", "the output was flagged by moderation"),
    17: Outcome("failed", 70, "InternalError", "render worker lost"),
    29: Outcome("failed", 70, "OutputModeration", "the output was flagged by moderation"),
    30: Outcome("failed", 70, "OutputModeration", "the output was flagged by moderation"),
    22: Outcome("rejected", code="InvalidParameter", message="duration out of range"),
    5: Outcome("in_doubt", message="read timeout after the request left"),
    40: Outcome("stalled"),
    44: Outcome("completed", 45),
}


def simple_jobs(prompts: Mapping[str, str], model: str = "doubao-seedance-2-0") -> list[NewJob]:
    """One job per ``key -> prompt``, no matrix axes."""
    return [
        NewJob(key=key, index=i, prompt=prompt, model=model, prompt_id=None)
        for i, (key, prompt) in enumerate(prompts.items(), 1)
    ]
