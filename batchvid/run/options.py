"""What a run is asked to do, and what it tells: options, progress snapshots, the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..manifest.model import Retries
from ..states import JobState
from .policy import AttemptPolicy
from .poll_policy import PollPolicy

__all__ = ["DEFAULT_MAX_WAIT", "RunOptions", "RunReport", "Snapshot"]

#: DESIGN's default ``max_wait``: the stall ceiling before render times are learned.
DEFAULT_MAX_WAIT: Final = 2 * 3600.0

S = JobState


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How hard to push. Every duration is in real seconds, multiplied by ``time_scale``."""

    rate_per_minute: float | None = 60.0
    concurrency: int = 8
    max_active: int = 32
    #: The least time between two polls of one task (the docs suggest 10-20 s).
    poll_interval: float = 10.0
    #: Give up on a task still running after this long.  ``None``: learn a ceiling
    #: from render times (see ``poll_policy``), with DEFAULT_MAX_WAIT until there is history.
    max_wait: float | None = None
    download: bool = True
    #: False: only poll and download what is already paid for; submit nothing new.
    submit: bool = True
    #: < 1 for a simulator whose renders run faster than real time.
    time_scale: float = 1.0
    #: Download tries per job per run before it is left ``completed`` for the next run.
    download_attempts: int = 5
    budget_usd: float | None = None
    #: Automatic new attempts per kind of outcome (the manifest's ``retry:``).
    retry: Retries = field(default_factory=Retries)
    #: Probe every downloaded file (it must decode; its size is compared) and make posters.
    probe: bool = True

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def poll_policy(self) -> PollPolicy:
        """The poll schedule and stall rule these options ask for."""
        return PollPolicy(
            floor_s=self.poll_interval,
            max_wait_s=DEFAULT_MAX_WAIT if self.max_wait is None else self.max_wait,
            fixed_max_wait=self.max_wait is not None,
            scale=self.time_scale,
        )

    def attempt_policy(self) -> AttemptPolicy:
        """The new attempts these options allow (none when nothing is submitted)."""
        return AttemptPolicy(self.retry, scale=self.time_scale, enabled=self.submit)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Progress at one instant, for a live display."""

    batch: str
    counts: dict[str, int]
    in_flight: int
    finished_this_run: int
    elapsed_s: float
    recent_failures: tuple[str, ...]
    #: Why ``counts`` are the last ones read, not current ("" when current).
    stale: str = ""

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(slots=True)
class RunReport:
    """How a run ended (the CLI turns it into DESIGN.md's exit code)."""

    batch: str
    counts: dict[str, int]
    #: Where the videos are: a folder, or an ``s3://`` URI.
    output_dir: Path | str
    elapsed_s: float
    interrupted: bool = False
    recovered_in_doubt: int = 0
    budget_blocked: bool = False
    download: bool = True
    submitted: bool = True
    finished_this_run: int = 0
    failures: list[str] = field(default_factory=list)
    #: How often the dispatcher looked for work: about a few per job, never a spin.
    dispatch_rounds: int = 0
    #: Why the run stopped with work left that it could not do (a full disk, a ledger
    #: it cannot write): nothing was marked failed; run again once it is fixed.
    halted: str | None = None
    #: The batch's automatic new attempts so far, per kind of outcome: (how many, est. USD).
    retries: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: Earlier attempts kept beside their jobs (stalled, then retried), per state.
    extras: dict[str, int] = field(default_factory=dict)
    #: Downloaded videos the API rendered otherwise than asked, per way (see ``status``).
    normalised: dict[str, int] = field(default_factory=dict)

    @property
    def all_done(self) -> bool:
        """Every job of the batch is downloaded (or completed, when not downloading)."""
        total = sum(self.counts.values())
        done = self.counts.get(S.DOWNLOADED, 0)
        if not self.download:
            done += self.counts.get(S.COMPLETED, 0)
        return bool(total) and done == total
