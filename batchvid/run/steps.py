"""One piece of work on one job (a create, a poll or a download), start to recorded outcome.

The dispatcher starts a step and forgets it; :meth:`Steps.run` does the
requests (:mod:`batchvid.run.workers`), has the outcome recorded
(:mod:`batchvid.run.record`, :mod:`batchvid.run.creates`), and decides what
an error means: for the whole run (a refused key, a full ledger disk, a ledger
out of reach), for nobody (the job was taken over by another worker), or for
this job alone (a surprise: it sits out the rest of the run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import anyio

from ..errors import AuthError, LedgerBusy, LedgerFull, LostClaim, ServiceRefused
from ..ledger.port import RunLedger
from ..ledger.rows import JobRow
from ..outputs import S3Outputs
from .creates import Creates
from .files import job_filename, safe_destination
from .keep import Keeper
from .poll_policy import Combo
from .record import Recorder, combo_of
from .workers import Workers

__all__ = ["Kind", "Steps", "destination"]

log = logging.getLogger(__name__)

Kind = Literal["download", "poll", "submit"]


class Steps:
    """Runs the steps of one run's jobs (see the module docstring)."""

    def __init__(
        self,
        ledger: RunLedger,
        workers: Workers,
        record: Recorder,
        output_dir: Path,
        clock: Callable[[], float],
        store: S3Outputs | None = None,
    ) -> None:
        self._ledger = ledger
        self._workers = workers
        # With a store (``s3://``) ``output_dir`` is the spool: the keeper puts videos away.
        keeper = Keeper(store, workers, output_dir) if store is not None else None
        self._fetch = keeper.download if keeper is not None else workers.download
        #: Where the videos are, for people: the folder, or the store's URI.
        self.videos_at: Path | str = store.target.uri if store is not None else output_dir
        self._record = record
        self._creates = Creates(record)
        self._output_dir = output_dir
        self._clock = clock
        #: Kinds of render whose history earlier runs recorded is loaded.
        self._kinds: set[Combo] = set()

    async def run(self, kind: Kind, job: JobRow) -> None:
        """Do ``kind`` work on ``job`` and record how it went; never raises but to cancel."""
        tally, faults = self._record.tally, self._record.faults
        try:
            await self._know(combo_of(job))
            if kind == "submit":
                await self._submit(job)
            elif kind == "poll":
                asked_at = self._clock()
                await self._record.polled(job, await self._workers.poll(job), asked_at)
            else:
                dest = destination(self._output_dir, job)
                await self._record.downloaded(job, await self._fetch(job, dest))
        except (AuthError, ServiceRefused) as exc:
            tally.stop_everything(exc)
        except LostClaim as exc:  # another worker has it now (this one's lease had ended)
            log.info("%s of job %s: %s", kind, job.id, exc)
        except LedgerBusy as exc:  # not the job's fault: it is tried again after a wait
            faults.ledger_was_busy(tally, self._clock(), exc)
        except LedgerFull as exc:
            tally.halt = tally.halt or f"{exc}: stopped; free some space and run again"
        except Exception as exc:  # a bug, or the ledger changed under us (a `retry` meanwhile)
            # One job's surprise must not end an overnight batch, nor repeat in a
            # tight loop: the job sits out the rest of this run, with the reason.
            log.exception("%s of job %s failed", kind, job.id)
            tally.quarantined.add(job.id)
            tally.note(job, f"{kind} stopped for this run: {type(exc).__name__}: {exc}")
        else:
            faults.ledger_busy.clear()  # its outcome was recorded: the ledger answers

    async def _know(self, combo: Combo) -> None:
        """Load what earlier runs recorded about renders of this kind, once per kind."""
        if combo not in self._kinds:
            samples = await self._ledger.call(self._ledger.reads.render_samples, *combo)
            self._record.renders.load(combo, samples)
            self._kinds.add(combo)

    async def _submit(self, job: JobRow) -> None:
        # Decided before the request leaves: nothing may stand between a create's
        # answer and recording its task id.
        intent = self._creates.intent(job)
        try:
            first_poll = self._record.renders.first_poll_delay(combo_of(job))
            outcome = await self._workers.submit(job, intent)
        except BaseException:
            # Cancelled (a stop after the grace period), the ledger failing, or a bug:
            # the request may be out (in doubt), or not.
            with anyio.CancelScope(shield=True):
                await self._creates.lost_create(job, intent)
            raise
        await self._creates.submitted(job, intent, outcome, first_poll)


def destination(output_dir: Path, job: JobRow) -> Path:
    """Where a job's video goes: its own name (see :func:`batchvid.run.files.job_filename`)."""
    extra = job.attempts if job.extra_of is not None else None
    name = job_filename(
        job.idx, job.prompt_id, job.prompt, job.model, job.size, job.take, job.key,
        extra_attempt=extra,
    )  # fmt: skip
    return safe_destination(output_dir, name)
