"""The one clock a run schedules by: unix seconds that never step back or leap ahead.

Polls, back-offs and stall limits are all "so many seconds after that"; read off
the wall clock they break when NTP steps it or a laptop's clock is set, and a
step forward past ``max_wait`` would stall every job at once.  A
:class:`SteadyClock` reads the wall clock once, when a run starts, then adds
monotonic time: times it gives are unix seconds (so they can be stored, shown
and compared with the next run's), and within a run they only move forward, at
the rate of real time.  Time a machine spends asleep does not count (the
monotonic clock stops), so a sleeping laptop never wakes to a wall of stalls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["SteadyClock"]


class SteadyClock:
    """Unix seconds anchored to the wall clock at creation, advancing monotonically."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self._offset = wall() - monotonic()

    def __call__(self) -> float:
        return self._offset + self._monotonic()
