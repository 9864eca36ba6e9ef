"""A job's create as named writes: the intent, and how the create ended.

Every method is one state change and its event, atomic (see
:mod:`batchvid.ledger.core`).  Cost is counted per attempt:
``billable_attempts`` is raised when a create intent is recorded and lowered
only when the request provably did no work (``release_unsent``) or was refused
(``record_rejected``).  So the committed cost
(:meth:`~batchvid.ledger.queue.WorkQueue.committed_cost`) is
``sum(est_cost_usd * billable_attempts)``: in-flight, in-doubt, finished and
failed-then-retried attempts all count.

On a shared ledger the intent is also where a create is admitted against the
batch's limits over every worker (:class:`Admission`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import IllegalTransition, LedgerError, LimitReached, LostClaim
from ..states import ACTIVE_STATES, JobState
from .core import Mover, as_json
from .engine import Tx
from .rows import utc_iso

__all__ = ["Admission", "SubmitMoves"]

S = JobState
_ACTIVE: Final = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES))


@dataclass(frozen=True, slots=True)
class Admission:
    """The limits a create is admitted against on a shared ledger, over every worker:
    ``batch``'s live tasks at most ``max_active``, its committed cost at most ``budget_usd``."""

    batch: str
    max_active: int
    budget_usd: float | None = None


class SubmitMoves(Mover):
    """The writes a job's create makes: intent, task id, refusal, doubt, release."""

    def begin_submit(self, job_id: int, *, admit: Admission | None = None) -> None:
        """pending -> submitting: the intent, durable before the create request is sent."""
        self.begin_submit_many([job_id], admit=admit)

    def begin_submit_many(self, job_ids: Iterable[int], *, admit: Admission | None = None) -> None:
        """pending -> submitting for several jobs in one transaction (all or none).

        Raises ``attempts`` and ``billable_attempts`` by one each.  With
        ``admit``, the creates must fit the batch's limits as every worker's
        tasks and spend stand (the batch's admissions take turns, so workers
        admit one at a time), else :class:`~batchvid.errors.LimitReached`.
        """
        ids = sorted(set(job_ids))  # one order for every writer: row locks never deadlock
        if not ids:
            return
        now_at = self.clock()
        now = utc_iso(now_at)
        lock = self._engine.dialect.lock
        worker = self._context.worker
        # Durable: the intent must be on disk before the create can leave.
        with self._engine.write(durable=True) as tx:
            found = {
                i: tx.one(f"SELECT state, attempts, claimed_by FROM jobs WHERE id = ?{lock}", (i,))
                for i in ids
            }
            missing = [str(i) for i, row in found.items() if row is None]
            if missing:
                raise LedgerError(f"no job with id {', '.join(missing)}")
            taken = [str(i) for i, row in found.items() if row and row[2] not in (None, worker)]
            if taken:
                raise LostClaim(f"jobs taken over by another worker: {', '.join(taken)}")
            wrong = [f"{i} ({row[0]})" for i, row in found.items() if row and row[0] != S.PENDING]
            if wrong:
                raise IllegalTransition(f"only pending jobs can be submitted: {', '.join(wrong)}")
            if admit is not None:
                self._admit(tx, admit, ids)
            # Per-id statements: an IN-list can lead the planner to the state index.
            updated = tx.executemany(
                """UPDATE jobs SET state = 'submitting', attempts = attempts + 1,
                    billable_attempts = billable_attempts + 1, submitted_utc = :now,
                    sent_at = :now_at, error_code = NULL, error_message = NULL,
                    retry_at = NULL, updated_utc = :now
                WHERE id = :id AND state = 'pending'""",
                [{"id": i, "now": now, "now_at": now_at} for i in ids],
            )
            if updated != len(ids):  # cannot happen while the rows are locked
                raise IllegalTransition("jobs changed under us during submit")
            tx.executemany(
                "INSERT INTO events (job_id, from_state, to_state, at_utc, detail_json)"
                " VALUES (?, 'pending', 'submitting', ?, ?)",
                [(i, now, as_json(_intent(row[1] + 1, worker))) for i, row in found.items() if row],
            )

    def _admit(self, tx: Tx, admit: Admission, ids: list[int]) -> None:
        """Refuse creates that would pass the batch's shared limits (see ``begin_submit_many``)."""
        batch = admit.batch
        serialize = self._engine.dialect.serialize
        if serialize:  # the batch's admissions take turns (and never block its row)
            tx.one(serialize, (f"batchvid admission {batch}",))
        active = tx.one(
            f"""SELECT count(*) FROM jobs WHERE batch = ? AND state IN ({_ACTIVE})
            AND extra_of IS NULL""",
            (batch,),
        )
        assert active is not None
        if int(active[0]) + len(ids) > admit.max_active:
            raise LimitReached(
                f"{active[0]} tasks of batch {batch} are active, over every worker "
                f"(max_active_tasks {admit.max_active})",
                limit="active",
            )
        if admit.budget_usd is None:
            return
        spent = tx.one(
            "SELECT coalesce(sum(est_cost_usd * billable_attempts), 0.0) FROM jobs WHERE batch = ?",
            (batch,),
        )
        marks = ", ".join("?" * len(ids))
        cost = tx.one(
            f"SELECT coalesce(sum(est_cost_usd), 0.0) FROM jobs WHERE id IN ({marks})", ids
        )
        assert spent is not None and cost is not None
        if float(spent[0]) + float(cost[0]) > admit.budget_usd + 1e-9:
            raise LimitReached(
                f"budget ${admit.budget_usd:,.2f} reached (${float(spent[0]):,.2f} committed "
                "over every worker)",
                limit="budget",
            )

    def record_submitted(
        self,
        job_id: int,
        task_id: str,
        remote_status: str | None,
        next_poll_at: float,
        *,
        seen: JobState | None = None,
        server_created_at: float | None = None,
        recovered: bool = False,
    ) -> JobState:
        """submitting (or in_doubt) -> queued (or in_progress, if the server says so):
        the task exists.

        ``remote_status`` is kept as the server wrote it; ``seen`` is the job
        state it means (the caller's reading of it: ``None`` for a word it does
        not know).  ``server_created_at``: the task's ``created_at`` as sent.
        An ``in_doubt`` job takes the id too: it settles the doubt (the answer
        came late, after the job was found left in flight; or it comes from the
        recovery file, ``recovered``: see :mod:`batchvid.run.recovery`).
        """
        if not task_id:
            raise ValueError("task_id must not be empty")
        started = seen is S.IN_PROGRESS
        return self._move(
            job_id,
            "record a task for",
            {S.SUBMITTING, S.IN_DOUBT},
            S.IN_PROGRESS if started else S.QUEUED,
            """task_id = :task_id, remote_status = :remote_status, progress = 0,
               next_poll_at = :next_poll_at, watch_started_at = :now_at, queued_utc = :now,
               answered_at = :now_at, server_created_at = :server_created_at,
               error_message = NULL, finished_utc = NULL,
               started_utc = CASE WHEN :started THEN :now END""",
            {
                "task_id": task_id,
                "remote_status": remote_status,
                "next_poll_at": next_poll_at,
                "started": started,
                "server_created_at": server_created_at,
            },
            {
                "task_id": task_id,
                "remote_status": remote_status,
                "first_poll_in_s": round(next_poll_at - self.clock(), 3),
                **({"recovered": True} if recovered else {}),
            },
            durable=True,  # a paid task's id must survive a power cut
        )

    def record_rejected(self, job_id: int, code: str | None, message: str) -> None:
        """submitting -> rejected: the create was refused (400); no task, nothing billed."""
        self._move(
            job_id,
            "reject",
            {S.SUBMITTING},
            S.REJECTED,
            """billable_attempts = billable_attempts - 1, error_code = :code,
               error_message = :message, finished_utc = :now""",
            {"code": code, "message": message},
            {"code": code, "message": message},
        )

    def record_in_doubt(self, job_id: int, detail: str) -> None:
        """submitting -> in_doubt: the create was sent but its answer was lost."""
        self._move(
            job_id,
            "mark in doubt",
            {S.SUBMITTING},
            S.IN_DOUBT,
            "error_message = :reason, finished_utc = :now",
            {"reason": detail},
            {"reason": detail},
        )

    def release_unsent(self, job_id: int, detail: str) -> None:
        """submitting -> pending: the request provably never did any work (429, connect error)."""
        self._move(
            job_id,
            "release",
            {S.SUBMITTING},
            S.PENDING,
            """billable_attempts = billable_attempts - 1, submitted_utc = NULL,
               error_message = :reason""",
            {"reason": detail},
            {"reason": detail},
        )

    def release_unsent_intent(self, job_id: int, worker: str, attempt: int, detail: str) -> bool:
        """A create intent whose commit went unconfirmed (the ledger out of reach), and
        whose request was therefore never sent: its job is pending again if it still
        stands where that intent left it: ``submitting`` (or ``in_doubt`` since the
        worker's lease ended), no task, and its last intent that one (``worker``'s,
        attempt ``attempt``).  Whether it was (else the job has moved on: left alone)."""
        with self._engine.write() as tx:
            lock = self._engine.dialect.lock
            row = tx.one(f"SELECT state, task_id FROM jobs WHERE id = ?{lock}", (job_id,))
            if row is None or row[1] is not None:
                return False
            if row[0] not in (S.SUBMITTING.value, S.IN_DOUBT.value):
                return False
            last = tx.one(
                """SELECT detail_json FROM events WHERE job_id = ? AND to_state = 'submitting'
                ORDER BY id DESC LIMIT 1""",
                (job_id,),
            )
            said = json.loads(last[0]) if last and last[0] else {}
            if said.get("worker") != worker or said.get("attempt") != attempt:
                return False
            self._step(
                tx,
                job_id,
                "release",
                {S.SUBMITTING, S.IN_DOUBT},
                S.PENDING,
                """billable_attempts = billable_attempts - 1, submitted_utc = NULL,
                   finished_utc = NULL, error_message = :reason""",
                {"reason": detail},
                {"reason": detail, "unsent": True},
            )
        return True


def _intent(attempt: int, worker: str | None) -> dict[str, object]:
    """A create intent's event detail: its attempt, and on a shared ledger the worker
    that sends it (who sent which create, for a batch many workers ran)."""
    return {"attempt": attempt, **({"worker": worker} if worker else {})}
