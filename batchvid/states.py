"""The job state machine, as data: states, legal transitions, and pure checks on them.

::

    pending      -> submitting
    submitting   -> queued | in_progress | rejected | in_doubt
                  | pending          (the create provably never left)
    in_doubt     -> pending          (retry --in-doubt: a duplicate may be billed)
                  | queued | in_progress   (its task id, recovered, is recorded)
    queued       -> in_progress | completed | failed | stalled
    in_progress  -> completed | failed | stalled
    completed    -> downloaded
                  | failed           (the task vanished upstream before the download)
    failed       -> pending          (retry --failed, or the retry policy: a new, billed attempt)
    stalled      -> queued | in_progress   (retry --stalled: the same task, polled again)
                  | pending          (the retry policy: a new attempt; the stalled
                                      task is split off into an extra take, still watched)
    downloaded, rejected: final

The table :data:`TRANSITIONS` is the single source of truth; the ledger checks
every state change against it (inside the write transaction), and
:func:`chain_problem` replays a job's event history against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from .errors import IllegalTransition

__all__ = [
    "ACTIVE_STATES",
    "FAILED_STATES",
    "PAID_UNFINISHED_STATES",
    "POLLING_STATES",
    "RENDERED_STATES",
    "TASK_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "UNFINISHED_STATES",
    "JobState",
    "chain_problem",
    "check_transition",
    "is_legal",
    "poll_state",
]


class JobState(StrEnum):
    """Where one job stands (the ledger's ``jobs.state``); see DESIGN.md."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    IN_DOUBT = "in_doubt"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    DOWNLOADED = "downloaded"
    FAILED = "failed"
    REJECTED = "rejected"
    STALLED = "stalled"


S = JobState

#: Every legal ``from -> {to}``.  Anything else raises :class:`IllegalTransition`.
TRANSITIONS: Final[Mapping[JobState, frozenset[JobState]]] = MappingProxyType(
    {
        S.PENDING: frozenset({S.SUBMITTING}),
        # The create answered (queued / in_progress / rejected), its answer was
        # lost (in_doubt), or it provably never left (pending again).
        S.SUBMITTING: frozenset({S.QUEUED, S.IN_PROGRESS, S.REJECTED, S.IN_DOUBT, S.PENDING}),
        # pending: only by the user's explicit choice (a duplicate may be billed);
        # queued/in_progress: the task id was found after all (the recovery file).
        S.IN_DOUBT: frozenset({S.PENDING, S.QUEUED, S.IN_PROGRESS}),
        S.QUEUED: frozenset({S.IN_PROGRESS, S.COMPLETED, S.FAILED, S.STALLED}),
        S.IN_PROGRESS: frozenset({S.COMPLETED, S.FAILED, S.STALLED}),
        # failed: the task vanished upstream before the video could be fetched.
        S.COMPLETED: frozenset({S.DOWNLOADED, S.FAILED}),
        S.DOWNLOADED: frozenset(),
        # retry --failed or the retry policy: a new attempt (a new task, billed again).
        S.FAILED: frozenset({S.PENDING}),
        S.REJECTED: frozenset(),
        # retry --stalled: resume polling the same task; pending: a new attempt by the
        # retry policy (the stalled task goes on, split off as an extra take).
        S.STALLED: frozenset({S.QUEUED, S.IN_PROGRESS, S.PENDING}),
    }
)

# State groups: each is defined here, and only here.

#: Jobs that hold a slot of ``max_active_tasks``: a create in flight or a live task.
ACTIVE_STATES: Final = frozenset({S.SUBMITTING, S.QUEUED, S.IN_PROGRESS})
#: Jobs whose remote task is polled.
POLLING_STATES: Final = frozenset({S.QUEUED, S.IN_PROGRESS})
#: Jobs that always carry a task id.
TASK_STATES: Final = frozenset(
    {S.QUEUED, S.IN_PROGRESS, S.COMPLETED, S.DOWNLOADED, S.FAILED, S.STALLED}
)
#: Jobs whose task may already be paid for and is not on disk yet: a run finishes
#: these even when the manifest has become invalid.
PAID_UNFINISHED_STATES: Final = frozenset({S.SUBMITTING, S.QUEUED, S.IN_PROGRESS, S.COMPLETED})
#: Nothing more happens to these without a user's ``retry``.
TERMINAL_STATES: Final = frozenset({S.DOWNLOADED, S.FAILED, S.REJECTED, S.STALLED, S.IN_DOUBT})
#: Not terminal and not rendered yet: a run is under way, or was interrupted.
UNFINISHED_STATES: Final = frozenset({S.PENDING, S.SUBMITTING, S.QUEUED, S.IN_PROGRESS})
#: The video exists upstream (and maybe on disk).
RENDERED_STATES: Final = frozenset({S.COMPLETED, S.DOWNLOADED})
#: The attempt ended without a video: the API failed it or refused it.
FAILED_STATES: Final = frozenset({S.FAILED, S.REJECTED})

BILLABLE_NOTE: Final = (
    "a create request may have reached the server: retrying may create (and bill) a duplicate task"
)


def is_legal(src: JobState, dst: JobState) -> bool:
    """Whether the state machine connects ``src`` to ``dst`` in one step."""
    return dst in TRANSITIONS[src]


def check_transition(src: JobState, dst: JobState, *, job: object = None) -> None:
    """Raise :class:`IllegalTransition` unless ``src -> dst`` is in the table."""
    if not is_legal(src, dst):
        who = f"job {job}: " if job is not None else ""
        raise IllegalTransition(f"{who}illegal transition {src} -> {dst}")


def poll_state(current: JobState, seen: JobState | None) -> JobState:
    """Where a non-terminal poll answer moves a polled job: never backwards.

    ``seen`` is the job state the answer's status means (``None``: a status
    neither version of the docs lists).  ``queued`` becomes ``in_progress``
    when the server says so; an ``in_progress`` job stays there even if a
    stale answer says ``queued``; anything else changes nothing.  Terminal
    answers are not a poll update (see ``Ledger.record_completed`` /
    ``record_failed``): they raise ``ValueError``.
    """
    if current not in POLLING_STATES:
        raise IllegalTransition(f"a {current} job is not polled")
    if seen in (S.COMPLETED, S.FAILED):
        raise ValueError(f"a {seen} answer is terminal: record it as such")
    return S.IN_PROGRESS if seen is S.IN_PROGRESS else current


def chain_problem(current: JobState, steps: Iterable[tuple[str, str]]) -> str | None:
    """Replay a job's ``(from_state, to_state)`` events; describe the first inconsistency.

    A job starts ``pending``; each event must start where the previous one
    ended, follow a legal edge, and the last must end in ``current``.
    """
    expected = S.PENDING
    for n, (src, dst) in enumerate(steps, 1):
        if src != expected:
            return f"event {n} starts at {src}, but the job was {expected}"
        try:
            src_state, dst_state = JobState(src), JobState(dst)
        except ValueError:
            return f"event {n} names an unknown state ({src} -> {dst})"
        if not is_legal(src_state, dst_state):
            return f"event {n} is illegal ({src} -> {dst})"
        expected = dst_state
    if expected != current:
        return f"events end at {expected}, but the job is {current}"
    return None
