"""The workers against stand-in clients: every way a create, a poll or a download can end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchvid.errors import (
    AuthError,
    DownloadError,
    InDoubtError,
    RejectedError,
    RetryableError,
    ServiceRefused,
    TaskNotFound,
)
from batchvid.ledger import JobRow, Ledger, NewJob
from batchvid.remote.protocol import Task, TaskStatus
from batchvid.run.workers import (
    DownloadOutcome,
    Intent,
    PollOutcome,
    SubmitOutcome,
    Withdrawn,
    Workers,
)

pytestmark = pytest.mark.anyio


class StandIn:
    """A client whose create/retrieve/download do what the test says."""

    def __init__(self, create: Callable[..., Any] | None = None, **methods: Any) -> None:
        self._create = create
        self.methods = methods

    async def create(self, request: Any, *, before_send: Callable[[], Any]) -> Task:
        assert self._create is not None
        return await self._create(before_send)  # type: ignore[no-any-return]

    async def retrieve(self, task_id: str) -> Task:
        return self.methods["retrieve"](task_id)  # type: ignore[no-any-return]

    async def download(self, source: Task, dest: Path, check: Any = None) -> Any:
        return self.methods["download"](source, dest)


@pytest.fixture
def job(tmp_path: Path) -> JobRow:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.plans.upsert_batch("b", manifest_path="m", manifest_sha256="0", output_dir="out")
        ledger.plans.upsert_jobs("b", [NewJob("k", 1, "a prompt", "doubao-seedance-2-0")])
        return next(ledger.reads.jobs("b"))._replace(task_id="task_1")


def sent_then(error: BaseException) -> Callable[[Callable[[], Any]], Any]:
    async def create(before_send: Callable[[], Any]) -> Task:
        await before_send()
        raise error

    return create


def raise_(error: BaseException) -> Callable[..., Any]:
    def fail(*args: Any) -> Any:
        raise error

    return fail


def fails_before_sending(error: BaseException) -> Callable[..., Any]:
    async def create(before_send: Callable[[], Any]) -> Task:
        raise error

    return create


def answers(task: Task) -> Callable[[Callable[[], Any]], Any]:
    async def create(before_send: Callable[[], Any]) -> Task:
        await before_send()
        return task

    return create


async def submit(
    job: JobRow, create: Callable[..., Any], *, withdraw: Withdrawn | None = None
) -> tuple[Any, Intent]:
    committed: list[bool] = []

    async def commit() -> None:
        if withdraw is not None:
            raise withdraw
        committed.append(True)

    intent = Intent(commit)
    outcome = await Workers(StandIn(create)).submit(job, intent)  # type: ignore[arg-type]
    assert intent.sent == bool(committed)
    return outcome, intent


async def test_an_unexpected_os_error_after_the_create_left_is_in_doubt(job: JobRow) -> None:
    outcome, intent = await submit(job, sent_then(ConnectionResetError("reset by peer")))
    assert intent.sent and outcome.kind == "in_doubt"
    assert "create failed unexpectedly" in outcome.reason


async def test_an_unexpected_error_before_the_create_left_is_not_sent(job: JobRow) -> None:
    outcome, intent = await submit(job, fails_before_sending(OSError("disk")))
    assert not intent.sent and outcome.kind == "not_sent" and outcome.unexpected


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RejectedError("duration out of range", status=400), "rejected"),
        (InDoubtError("no answer"), "in_doubt"),
        (RetryableError("503", status=503, retry_after=7.0), "not_sent"),
        (AuthError("bad key", status=401), "refused"),
        (ServiceRefused("payment required", status=402), "refused"),
    ],
)
async def test_create_outcomes(job: JobRow, error: Exception, kind: str) -> None:
    outcome, _ = await submit(job, sent_then(error))
    assert outcome.kind == kind
    if kind == "not_sent":
        assert outcome.retry_after == 7.0 and not outcome.unexpected
    if kind == "refused":
        assert outcome.refusal is error


async def test_a_create_that_answers_is_created(job: JobRow) -> None:
    task = Task("task_9", TaskStatus.QUEUED, "SUBMITTED")
    outcome, intent = await submit(job, answers(task))
    assert intent.sent and outcome == SubmitOutcome("created", task=task)


@pytest.mark.parametrize("budget", [False, True])
async def test_a_create_withdrawn_before_it_left_sends_nothing(job: JobRow, budget: bool) -> None:
    """A shared limit reached (or a lease not sure) as the intent is recorded: nothing left."""
    task = Task("task_9", TaskStatus.QUEUED, "SUBMITTED")
    withdraw = Withdrawn("max_active_tasks reached over every worker", budget=budget)
    outcome, intent = await submit(job, answers(task), withdraw=withdraw)
    assert not intent.sent
    assert outcome == SubmitOutcome("withdrawn", reason=str(withdraw), budget=budget)


async def test_poll_outcomes(job: JobRow) -> None:
    task = Task("task_1", TaskStatus.IN_PROGRESS, "IN_PROGRESS", progress=40)
    answered = await Workers(StandIn(retrieve=lambda _: task)).poll(job)  # type: ignore[arg-type]
    assert answered == PollOutcome("answered", task=task)
    gone = StandIn(retrieve=raise_(TaskNotFound("task_not_exist", status=400)))
    assert (await Workers(gone).poll(job)).kind == "vanished"  # type: ignore[arg-type]
    busy = StandIn(retrieve=raise_(RetryableError("502", status=502)))
    assert (await Workers(busy).poll(job)).kind == "no_answer"  # type: ignore[arg-type]
    refused = StandIn(retrieve=raise_(AuthError("revoked", status=401)))
    with pytest.raises(AuthError):
        await Workers(refused).poll(job)  # type: ignore[arg-type]


async def test_download_outcomes(job: JobRow, tmp_path: Path) -> None:
    failing = StandIn(download=raise_(DownloadError("CDN 503", fresh_url="https://cdn/v?e=2")))
    outcome = await Workers(failing).download(job, tmp_path / "v.mp4")  # type: ignore[arg-type]
    assert outcome == DownloadOutcome("failed", reason="CDN 503", fresh_url="https://cdn/v?e=2")
    gone = StandIn(download=raise_(TaskNotFound("task_not_exist", status=400)))
    vanished = await Workers(gone).download(job, tmp_path / "v.mp4")  # type: ignore[arg-type]
    assert vanished.kind == "vanished"
