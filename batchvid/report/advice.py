"""What to do next about jobs that did not succeed: one text, for reports and the run summary.

Pure: from a batch's name, its manifest and how many jobs are in each state,
the steps that apply, in the order a user should take them.  The report lists
each step's jobs; ``batchvid run`` prints the steps under its summary.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from ..states import UNFINISHED_STATES, JobState

__all__ = ["Step", "next_steps"]

S = JobState


@dataclass(frozen=True, slots=True)
class Step:
    """A situation that needs the user, and the command that deals with it."""

    states: frozenset[JobState]
    title: str
    why: str
    command: str


def next_steps(batch: str, manifest: str, counts: Mapping[JobState, int]) -> list[Step]:
    """The steps for every kind of job present in ``counts`` that did not succeed."""
    name, path = shlex.quote(batch), shlex.quote(manifest)
    table = (
        Step(
            frozenset({S.IN_DOUBT}),
            "in doubt",
            "the create request was sent but its answer was lost: a task may exist and "
            "may have been billed",
            f"`batchvid retry {name} --in-doubt` resubmits them (possibly paying twice)",
        ),
        Step(
            frozenset({S.STALLED}),
            "stalled",
            "the task was still running past its limit: the manifest's max_wait, or far past "
            "the render times learned for its kind while later tasks finished",
            f"`batchvid retry {name} --stalled` polls the same task again (no new charge)",
        ),
        Step(
            frozenset({S.FAILED}),
            "failed",
            "the API reported the render failed (or, `undecodable`, its video fetched twice "
            "did not decode: the bytes are kept as NAME.mp4.undecodable beside the videos)",
            f"`batchvid retry {name} --failed` submits them again (a new, billed attempt)",
        ),
        Step(
            frozenset({S.REJECTED}),
            "rejected",
            "the API refused the request itself",
            f"fix the manifest, then `batchvid run {path}` submits the corrected jobs",
        ),
        Step(
            frozenset({S.COMPLETED}),
            "rendered, not downloaded",
            "the video is ready upstream but not on disk yet",
            f"`batchvid run {path}` downloads it (asking for a fresh link if it expired)",
        ),
        Step(
            UNFINISHED_STATES,
            "unfinished",
            "a run is under way, or was interrupted",
            f"`batchvid run {path}` resumes it",
        ),
    )
    return [step for step in table if any(counts.get(s, 0) for s in step.states)]
