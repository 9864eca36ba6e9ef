"""What every role of the ledger shares: the open engine, the clock, and how a job moves.

A :class:`Context` is one open ledger: its :class:`~.engine.Engine`, the clock
every write stamps by, and (on a shared ledger) the worker this process is.
:class:`Mover` is the one way a job's state changes (:meth:`Mover._step`):
checked against :data:`batchvid.states.TRANSITIONS` inside a write
transaction (read the state, conditional ``UPDATE ... WHERE state = <that
state>``, append the ``events`` row, commit), so a kill at any instant leaves
all of it or none.

On a shared ledger a job a worker has taken carries its id (``claimed_by``):
a step that ends the work clears it, and a step on a job another worker has
taken since is refused (:class:`~batchvid.errors.LostClaim`): no two workers
ever move one job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import IllegalTransition, LedgerError, LostClaim
from ..states import JobState, check_transition
from .engine import Engine, Tx
from .rows import utc_iso

__all__ = ["Context", "Mover", "as_json"]

S = JobState


class Context:
    """One open ledger, shared by its roles: the engine, the clock, this process's worker id."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        #: Unix seconds for every time the ledger writes.  A run puts its steady
        #: clock here (see :class:`batchvid.run.clock.SteadyClock`), so the times it
        #: schedules by and the times the ledger stamps agree, whatever the wall
        #: clock does meanwhile.
        self.clock = clock
        #: The worker this process is on a shared ledger while it runs a batch
        #: (see :mod:`batchvid.ledger.leases`); ``None``: it takes no work.
        self.worker: str | None = None

    def stamp(self) -> dict[str, Any]:
        now = self.clock()
        return {"now": utc_iso(now), "now_at": now}


class Role:
    """A part of the ledger: it reads and writes through the shared :class:`Context`."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._engine = context.engine

    @property
    def clock(self) -> Callable[[], float]:
        return self._context.clock


class Mover(Role):
    """The one way a job's state changes; see the module docstring."""

    def _move(self, job_id: int, *step: Any, durable: bool = False, **named: Any) -> JobState:
        """One job's state change (or same-state update) and its event, in a transaction
        of its own (``durable``: fsynced); the arguments are :meth:`_step`'s."""
        with self._engine.write(durable=durable) as tx:
            return self._step(tx, job_id, *step, **named)

    def _step(
        self,
        tx: Tx,
        job_id: int,
        action: str,
        sources: Iterable[JobState],
        target: JobState | Callable[[JobState], JobState],
        sets: str = "",
        params: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None,
        *,
        ends_work: bool = True,
    ) -> JobState:
        """Apply one job's state change (or same-state update) and its event, inside the
        write transaction ``tx`` (several steps may share one commit).

        ``sources`` are the states ``action`` applies to; ``target`` is the new
        state, or a function of the current one.  A change of state must be in
        the transition table and writes an ``events`` row; staying put does not.
        ``ends_work``: the worker is done with the job (its claim is released).
        """
        row = tx.one(
            f"SELECT state, claimed_by FROM jobs WHERE id = ?{self._engine.dialect.lock}",
            (job_id,),
        )
        if row is None:
            raise LedgerError(f"no job with id {job_id}")
        current = JobState(row[0])
        if row[1] is not None and row[1] != self._context.worker and self._alive(tx, row[1]):
            raise LostClaim(f"job {job_id}: another worker ({row[1]}) has taken it over")
        if current not in frozenset(sources):
            raise IllegalTransition(f"job {job_id}: cannot {action} a {current} job")
        new = target(current) if callable(target) else target
        if new != current:
            check_transition(current, new, job=job_id)
        values = {"id": job_id, "src": current.value, "dst": new.value, **self._context.stamp()}
        values.update(params or {})
        release = ", claimed_by = NULL" if ends_work and row[1] is not None else ""
        updated = tx.execute(
            "UPDATE jobs SET state = :dst, updated_utc = :now"
            + (f", {sets}" if sets else "")
            + release
            + " WHERE id = :id AND state = :src",
            values,
        )
        if updated != 1:  # cannot happen while the row is locked
            raise IllegalTransition(f"job {job_id}: changed under us during {action}")
        if new != current:
            tx.execute(
                "INSERT INTO events (job_id, from_state, to_state, at_utc, detail_json)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, current.value, new.value, values["now"], as_json(detail)),
            )
        return new

    def _alive(self, tx: Tx, worker: str) -> bool:
        """Whether ``worker``'s lease still holds (a job it claimed is still its own)."""
        now = self._engine.dialect.db_now
        return (
            tx.one(f"SELECT 1 FROM workers WHERE id = ? AND lease_until > {now}", (worker,))
            is not None
        )

    def _move_all(
        self,
        tx: Tx,
        rows: Iterable[tuple[int, JobState, JobState, str, Mapping[str, Any] | None]],
    ) -> int:
        """Several jobs' changes of state, each ``(id, src, dst, sets, detail)`` with the
        columns ``sets`` sets (SQL; ``:now`` and ``:now_at`` are the time), and their
        events, in the transaction ``tx``.  A job no longer in ``src`` is left alone
        (another writer moved it first).  Returns how many moved."""
        stamp = self._context.stamp()
        moved = 0
        for job_id, src, dst, sets, detail in rows:
            check_transition(src, dst, job=job_id)
            values = {"id": job_id, "src": src.value, "dst": dst.value, **stamp}
            if tx.execute(
                f"UPDATE jobs SET state = :dst, updated_utc = :now, {sets}"
                " WHERE id = :id AND state = :src",
                values,
            ):
                tx.execute(
                    "INSERT INTO events (job_id, from_state, to_state, at_utc, detail_json)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (job_id, src.value, dst.value, stamp["now"], as_json(detail)),
                )
                moved += 1
        return moved


def as_json(value: Mapping[str, Any] | None) -> str | None:
    """An event's detail as the ``events.detail_json`` text."""
    return None if value is None else json.dumps(dict(value), sort_keys=True)
