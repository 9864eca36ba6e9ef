"""The job state machine, as data: transitions, event chains, poll moves."""

from __future__ import annotations

import pytest

from batchvid.errors import IllegalTransition
from batchvid.states import JobState, chain_problem, poll_state

S = JobState


def test_chain_problem() -> None:
    assert chain_problem(S.PENDING, []) is None
    assert chain_problem(S.QUEUED, [("pending", "submitting"), ("submitting", "queued")]) is None
    assert "starts at" in (chain_problem(S.QUEUED, [("submitting", "queued")]) or "")
    assert "illegal" in (chain_problem(S.DOWNLOADED, [("pending", "downloaded")]) or "")
    assert "unknown" in (chain_problem(S.PENDING, [("pending", "nowhere")]) or "")


def test_poll_state_refuses_jobs_that_are_not_polled() -> None:
    with pytest.raises(IllegalTransition):
        poll_state(S.COMPLETED, S.IN_PROGRESS)
    assert poll_state(S.QUEUED, None) is S.QUEUED  # a status neither doc version lists


def test_state_groups_are_consistent() -> None:
    from batchvid.states import (
        ACTIVE_STATES,
        FAILED_STATES,
        PAID_UNFINISHED_STATES,
        POLLING_STATES,
        RENDERED_STATES,
        TERMINAL_STATES,
        TRANSITIONS,
        UNFINISHED_STATES,
    )

    assert POLLING_STATES < ACTIVE_STATES < PAID_UNFINISHED_STATES
    assert not TERMINAL_STATES & (UNFINISHED_STATES | {S.COMPLETED})
    assert FAILED_STATES < TERMINAL_STATES and S.DOWNLOADED in RENDERED_STATES
    # Terminal states are left only by a user's retry (to pending or polling again).
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] <= {S.PENDING, S.QUEUED, S.IN_PROGRESS}
