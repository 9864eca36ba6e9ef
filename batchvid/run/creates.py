"""What a create's outcome means for its job, and the intent recorded before it leaves.

A create is the one request that costs money, so its steps are ordered with
care (see :mod:`batchvid.run.dispatcher`): the intent is recorded after the
rate limiter's grant and immediately before the request leaves
(:meth:`Creates.intent`); the answer's task id is recorded before anything
else (:meth:`Creates.submitted`); and a create that may have left but whose
answer was lost is ``in_doubt``, never resent blindly.  On a shared ledger a
create is also admitted against the batch's limits across every worker, and
leaves only while this worker's lease surely holds (:mod:`batchvid.run.lease`).
"""

from __future__ import annotations

from contextlib import suppress

import anyio

from ..errors import LedgerError, LedgerUnreachable, LimitReached, LostClaim
from ..ledger.rows import JobRow
from ..remote.protocol import Task
from ..text import clip
from .record import Recorder
from .recovery import keep_unrecorded, keep_unsent
from .workers import Intent, SubmitOutcome, Withdrawn

__all__ = ["Creates"]


class Creates:
    """Records the creates of a run, on the :class:`~batchvid.run.record.Recorder`'s ledger,
    budget and tally."""

    def __init__(self, record: Recorder) -> None:
        self._record = record

    def intent(self, job: JobRow) -> Intent:
        """The create's intent: durable before the request leaves; the claim is spent then.

        On a shared ledger the create is first admitted against the batch's
        limits across every worker, and leaves only while this worker's lease
        surely holds (see :mod:`batchvid.run.lease`); otherwise it is
        withdrawn, nothing sent.
        """
        record = self._record
        ledger = record.ledger

        async def commit() -> None:
            self._check_lease("no create is sent")
            try:
                await ledger.call(ledger.moves.begin_submit, job.id, admit=record.admission)
            except LimitReached as exc:
                raise Withdrawn(str(exc), budget=exc.limit == "budget") from exc
            except LostClaim as exc:
                raise Withdrawn(str(exc)) from exc
            except LedgerUnreachable as exc:  # recorded or not, who knows: it is not sent
                self._unsent(job, exc)
                raise
            except anyio.get_cancelled_exc_class():  # the run ended, the commit under way
                self._unsent(job, "the run stopped while the create intent was being recorded")
                raise
            try:
                self._check_lease("the create was not sent")
            except Withdrawn:
                # Recorded, but the lease aged meanwhile: the job goes back to pending.
                try:
                    await ledger.call(ledger.moves.release_unsent, job.id, "the lease ran short")
                except LedgerError as exc:  # left submitting, nothing sent: kept, to release
                    self._unsent(job, exc)
                raise
            record.budget.release(job.est_cost_usd)

        return Intent(commit)

    def _unsent(self, job: JobRow, exc: LedgerError | str) -> None:
        """An intent the ledger may hold, its create never sent: kept for the next run
        (and the job sits out this one: a second intent must never pass for this one)."""
        record = self._record
        record.tally.quarantined.add(job.id)
        if record.lease is not None:  # else (SQLite) a failed commit recorded nothing
            record.tally.note(job, keep_unsent(record.ledger.ledger, job, record.lease.worker, exc))

    def _check_lease(self, then: str) -> None:
        lease = self._record.lease
        if lease is not None and not lease.may_create(self._record.clock()):
            raise Withdrawn(f"this worker's lease on the ledger is not surely held: {then}")

    async def submitted(
        self, job: JobRow, intent: Intent, outcome: SubmitOutcome, first_poll: float
    ) -> None:
        """Record a create's outcome; ``first_poll`` was decided before it left."""
        record, ledger = self._record, self._record.ledger
        tally = record.tally
        match outcome.kind:
            case "created":
                assert outcome.task is not None
                await self._created(job, outcome.task, first_poll)
            case "rejected" if intent.sent:
                await ledger.call(
                    ledger.moves.record_rejected, job.id, outcome.code, outcome.reason
                )
                tally.note(job, f"rejected: {outcome.reason}")
            case "rejected":  # its own files cannot be sent: nothing left to try this run
                await self._unclaimed(job)
                tally.quarantined.add(job.id)
                tally.note(job, f"not submitted: {outcome.reason}")
            case "in_doubt":
                await ledger.call(ledger.moves.record_in_doubt, job.id, outcome.reason)
                tally.note(job, f"in doubt: {outcome.reason}")
            case "not_sent":
                await self._release(job, intent, outcome.reason)
                if outcome.unexpected:
                    tally.failures.append(f"#{job.idx}: {clip(outcome.reason, 160)}")
                record.pause.setback(record.clock(), outcome.retry_after)
            case "withdrawn":  # nothing was sent: a shared limit, or the lease
                await self._unclaimed(job)
                if outcome.budget and not record.budget.spent:
                    record.budget.spent = True
                    tally.failures.append(f"{outcome.reason}: no more submissions")
            case "refused":
                assert outcome.refusal is not None
                await self._release(job, intent, f"the API refused the create ({outcome.refusal})")
                tally.stop_everything(outcome.refusal)

    async def _created(self, job: JobRow, task: Task, first_poll: float) -> None:
        """A paid task: its id is recorded first, before anything else."""
        record, ledger = self._record, self._record.ledger
        try:
            await ledger.call(
                ledger.moves.record_submitted,
                job.id,
                task.id,
                task.raw_status or None,
                record.clock() + first_poll,
                seen=task.status.job_state,
                server_created_at=task.created_at,
            )
        except LostClaim as exc:
            # Its answer came after this worker's lease had ended and the job had moved on
            # (resubmitted by the user's `retry --in-doubt`): the task is kept in the
            # recovery file and named, never dropped in silence.
            record.tally.note(job, keep_unrecorded(ledger.ledger, job, task, exc))
        except LedgerError as exc:
            # The id of a paid task: to stderr and the recovery file; the run stops.
            record.tally.halt = keep_unrecorded(ledger.ledger, job, task, exc)
            raise
        else:
            record.pause.reset()

    async def lost_create(self, job: JobRow, intent: Intent) -> None:
        """The run stopped (or a bug struck) while a create may have been in flight."""
        if intent.sent:
            ledger = self._record.ledger
            reason = "the run stopped while the create was in flight"
            await ledger.call(ledger.moves.record_in_doubt, job.id, reason)
        else:
            await self._unclaimed(job)

    async def _release(self, job: JobRow, intent: Intent, reason: str) -> None:
        """No task was made: the job is pending again, unblamed."""
        if intent.sent:
            ledger = self._record.ledger
            await ledger.call(ledger.moves.release_unsent, job.id, reason)
            self._record.tally.look_for_pending = True
        else:
            await self._unclaimed(job)

    async def _unclaimed(self, job: JobRow) -> None:
        """A job picked for submission goes back, unsent (on a shared ledger, for any worker)."""
        record, ledger = self._record, self._record.ledger
        record.budget.release(job.est_cost_usd)
        record.tally.look_for_pending = True
        with suppress(LedgerError):  # else it goes back when this worker's lease ends
            await ledger.call(ledger.leases.release, [job.id])
