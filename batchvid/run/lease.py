"""A worker's lease on a shared ledger: kept alive, and trusted only while it surely holds.

On a shared ledger (PostgreSQL) this run is one worker among any number (see
:mod:`batchvid.ledger.leases`).  Its lease ends ``length`` seconds after the
database last renewed it; :func:`keep_lease` renews it every third of that.
The database renewed it *after* the renewal was sent, so the lease surely
holds until ``sent + length`` on this process's own clock, whatever the
network did: :class:`Lease` counts from there.

Creates are the one thing that must never outlive the lease: a worker
whose lease ended may already have had its jobs taken over, and a create it
sent then would be one the others cannot know about.  So a create leaves only
while two thirds of the lease are still ahead (:meth:`Lease.may_create`): one
renewal may fail without stopping anything, and a create in flight always
reaches the server well before the lease could end.  A worker cut off from
the database thus stops creating on its own, before any other can take its
jobs.  A renewal that finds the lease already ended stops the run
(:attr:`Lease.lost`).

Each renewal also ends the database sessions of workers whose leases ended
(a worker cut off mid-statement would otherwise hold its row locks), and
finds the creates they left in flight, and makes them ``in_doubt`` (never
resent blindly).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio

from ..errors import LedgerError
from ..ledger.port import RunLedger

__all__ = ["DEFAULT_LEASE_S", "Lease", "keep_lease"]

log = logging.getLogger(__name__)

#: ``--lease``: seconds a worker's jobs stay its own after its last heartbeat.
DEFAULT_LEASE_S: Final = 60.0
#: Renewals per lease length.
BEATS: Final = 3
#: The share of a lease that must still be ahead for a create to leave.
CREATE_SHARE: Final = 2 / 3


@dataclass(slots=True)
class Lease:
    """This worker's lease as this process knows it (times on the run's clock)."""

    worker: str
    length: float
    #: When the last renewal that succeeded was sent (the lease holds until + length).
    confirmed_at: float
    #: The database found the lease ended: others may have taken this worker's jobs.
    lost: bool = False

    @property
    def every(self) -> float:
        """How often to renew it."""
        return self.length / BEATS

    def holds_until(self) -> float:
        return self.confirmed_at + self.length

    def may_create(self, now: float) -> bool:
        """Whether a create may leave now: the lease surely holds for a good while yet."""
        return not self.lost and now < self.confirmed_at + self.length * CREATE_SHARE

    def renewed(self, sent_at: float) -> None:
        self.confirmed_at = max(self.confirmed_at, sent_at)


async def keep_lease(
    ledger: RunLedger,
    lease: Lease,
    batch: str,
    clock: Callable[[], float],
    on_lost: Callable[[], None],
    on_taken_over: Callable[[int], None],
) -> None:
    """Renew ``lease`` every :attr:`Lease.every` seconds until cancelled (or lost).

    A renewal that does not get through within a beat is let go: the lease
    grows older, and creates stop once too little of it is surely left.  One
    that finds it ended calls ``on_lost`` and returns.  After each renewal,
    creates left in flight by workers whose leases ended become ``in_doubt``
    (``on_taken_over`` hears how many, when any).
    """
    while True:
        await anyio.sleep(lease.every)
        sent = clock()
        try:
            held = await ledger.call_within(lease.every, ledger.leases.renew, lease.worker)
        except LedgerError as exc:
            log.warning("the lease of worker %s could not be renewed: %s", lease.worker, exc)
            continue
        if not held:
            lease.lost = True
            on_lost()
            return
        lease.renewed(sent)
        try:
            await ledger.call(ledger.leases.end_gone)  # their sessions, and row locks, end
            found = await ledger.call(ledger.plans.recover_interrupted, batch)
        except LedgerError as exc:
            log.warning("could not look for creates left in flight: %s", exc)
            continue
        if found:
            on_taken_over(found)
