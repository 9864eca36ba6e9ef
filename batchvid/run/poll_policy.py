"""When to poll a task, and when to give up on it: pure policy over learned render times.

No I/O and no clock of its own: the runner passes elapsed seconds in and gets
delays back; tests drive it with a fake clock.

**The rule.**  Each poll of a task is placed where it pays: at the time ``t``
that minimises ``E[seconds a finished render waits unseen] + P(still running
at t) x V``, where ``V``, the price of a poll that finds the task still
running, is a share of the typical render (another poll, and the lag until it)
plus half the poll floor.  For a tight distribution that lands just after the
renders finish; for a wide one, earlier, on the bulk of the distribution,
never on its median times a margin.  Setting the derivative to zero gives
``F(t) - F(a) = V f(t)`` (``a``: the last time the task was seen running),
which has one root for a log-normal, found by bisection.

**Per task.**  The distribution is that of the task's model/seconds/resolution
(:class:`~batchvid.run.render_times.RenderModel`), narrowed by what the task's own
``progress`` predicts (:class:`~batchvid.run.render_times.ProgressCalibration`)
and conditioned on its still running.  Polls of one task are never closer
than the floor (the docs suggest 10-20 s) nor further apart than
``max_gap_s``.

**Probes.**  When a kind of render reports no server timestamps, a poll that
finds a task done only says "finished by now".  One task in ``probe_every``
then gets its first poll early (at three quarters of the 5th percentile), so
the model still sees renders that got faster.  With nothing learned about any
render yet, first polls come at the floor (the docs' own cadence), and the
task's progress places the next one.

**Stalls.**  Without a ``max_wait`` from the user, a task is stalled when it
has run ``stall_factor`` x the learned 99th percentile (never under the
docs' 3 minutes) *and* a task of its kind created after it has finished
since (so a slow service is waited out, and a hung task is let go).  The
fixed ``max_wait_s`` (2 h) is the ceiling before there is enough history.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from ..catalogue import POLL_EVERY_S, TYPICAL_RENDER_S
from ..ledger.rows import RenderSample
from ..text import span
from .render_times import DOCS_PRIOR, LogNormal, ProgressCalibration, RenderModel

__all__ = ["DOCS_POLL_FLOOR_S", "Combo", "PollPolicy", "RenderBook", "poll_time"]

#: A kind of render: model, seconds, resolution.
Combo = tuple[str, int, str]

#: The docs suggest polling one task every 10-20 s: no two polls of a task come closer.
DOCS_POLL_FLOOR_S: Final = POLL_EVERY_S[0]
#: The docs: "most jobs finish in 1-3 minutes"; nothing is stalled sooner than 3.
DOCS_LONGEST_S: Final = TYPICAL_RENDER_S[1]
#: A task this many standard deviations past the median has outrun what the model knows.
TAIL_Z: Final = 3.0
#: History needed before a learned ceiling replaces the fixed ``max_wait``.
STALL_MIN_WEIGHT: Final = 8.0


def poll_time(
    dist: LogNormal, *, running_at: float, earliest: float, latest: float, miss_price: float
) -> float:
    """The elapsed time of the next poll of a task last seen running at ``running_at``.

    Minimises the expected wait of a finished render plus ``miss_price`` times
    the chance the poll finds it still running, within ``[earliest, latest]``.
    A task already past the distribution's tail (a hung task, or renders that
    got much slower) is polled at a quarter of its age, within the same bounds.
    """
    earliest, latest = max(earliest, 1e-6), max(latest, earliest)
    z_running = dist.z(running_at)
    if z_running > TAIL_Z:
        return min(latest, max(earliest, 1.25 * running_at))
    right = z_running > 0  # compare survival functions there: they keep their precision
    done_before = dist.sf(running_at) if right else dist.cdf(running_at)

    def pays(t: float) -> bool:  # polling at t beats waiting longer
        if dist.z(t) < -30:  # far left: nothing has finished, both sides underflow
            return False
        newly_done = done_before - dist.sf(t) if right else dist.cdf(t) - done_before
        return newly_done > miss_price * dist.pdf(t)

    if pays(earliest):
        return earliest
    if not pays(latest):
        return latest
    lo, hi = math.log(earliest), math.log(latest)
    for _ in range(40):
        mid = (lo + hi) / 2
        if pays(math.exp(mid)):
            hi = mid
        else:
            lo = mid
    return math.exp(hi)


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """The policy's constants, every duration in real seconds times ``scale``."""

    #: Never poll one task more often (raised to the docs' 10 s if lower).
    floor_s: float = DOCS_POLL_FLOOR_S
    #: Never leave a live task unpolled longer than this.
    max_gap_s: float = 300.0
    #: The price of a poll that finds the task still running, as a share of the median render.
    miss_share: float = 0.2
    #: A learned ceiling is this many times the learned 99th percentile.
    stall_factor: float = 4.0
    #: The ceiling before there is history; with ``fixed_max_wait``, the only one.
    max_wait_s: float = 2 * 3600.0
    #: True: ``max_wait_s`` is the user's, applied as given (no learned ceiling).
    fixed_max_wait: bool = False
    #: Without server timestamps, one task in this many gets an early first poll.
    probe_every: int = 8
    #: For a simulator whose renders run faster than real time (1.0 for the real API).
    scale: float = 1.0

    @property
    def floor(self) -> float:
        """The least time between two polls of one task, on the caller's clock."""
        return max(self.floor_s, DOCS_POLL_FLOOR_S) * self.scale

    def miss_price(self, model: LogNormal) -> float:
        return self.miss_share * model.median + self.floor / 2

    def first_poll(self, model: LogNormal, *, probe: bool = False) -> float:
        """Seconds from a task's creation to its first poll."""
        at = poll_time(
            model,
            running_at=0.0,
            earliest=self.floor,
            latest=self.max_gap_s * self.scale,
            miss_price=self.miss_price(model),
        )
        return max(self.floor, min(at, 0.75 * model.quantile(0.05))) if probe else at

    def next_poll(self, task: LogNormal, model: LogNormal, elapsed: float) -> float:
        """Seconds from now until the next poll of a task running after ``elapsed`` seconds.

        ``task`` is this task's own distribution (progress taken into account),
        ``model`` that of its kind (it sets the price of a miss).
        """
        at = poll_time(
            task,
            running_at=elapsed,
            earliest=elapsed + self.floor,
            latest=elapsed + max(self.floor, self.max_gap_s * self.scale),
            miss_price=self.miss_price(model),
        )
        return at - elapsed

    def retry_delay(self, retry_after: float | None, draw: float) -> float:
        """Seconds until asking again after a poll got no usable answer.

        One to one and a half floors (``draw`` in [0, 1) spreads a crowd of
        them), and never before the server's ``Retry-After``.
        """
        delay = self.floor * (1.0 + 0.5 * draw)
        return delay if retry_after is None else max(delay, retry_after)

    def ceiling(self, model: RenderModel) -> float | None:
        """The learned stall ceiling for one kind (``None``: not enough history yet)."""
        if self.fixed_max_wait or model.weight < STALL_MIN_WEIGHT:
            return None
        learned = self.stall_factor * model.fit.quantile(0.99)
        return max(DOCS_LONGEST_S * self.scale, learned)


#: A kind leans on what other kinds taught until its own evidence weighs this much.
OWN_EVIDENCE: Final = 4.0
#: How far a kind's renders may sit from the others' (log scale): the docs' 1-3 minutes.
KIND_SPREAD: Final = 0.35


@dataclass(slots=True)
class _Kind:
    model: RenderModel
    created: int = 0
    #: Latest creation time (runner clock) of a task of this kind seen finished.
    newest_finished_start: float = -math.inf


@dataclass(slots=True)
class RenderBook:
    """Everything learned about render times in one run, per kind; the policy applied to it.

    ``history`` is asked once per kind for the samples earlier runs recorded
    (oldest first).  Delays come back in seconds on the caller's clock.
    """

    policy: PollPolicy = field(default_factory=PollPolicy)
    history: Callable[[Combo], Iterable[RenderSample]] | None = None
    progress: ProgressCalibration = field(default_factory=ProgressCalibration)
    _kinds: dict[Combo, _Kind] = field(default_factory=dict)

    def load(self, combo: Combo, samples: Iterable[RenderSample]) -> None:
        """What earlier runs recorded about renders of one kind (oldest first): given once,
        before the kind is first used, by a caller that reads it off the event loop."""
        if combo not in self._kinds:
            kind = _Kind(RenderModel(DOCS_PRIOR.scaled(self.policy.scale)))
            for sample in samples:
                kind.model.add(sample)
            self._kinds[combo] = kind

    def _kind(self, combo: Combo) -> _Kind:
        if combo not in self._kinds:
            self.load(combo, self.history(combo) if self.history else ())
        return self._kinds[combo]

    def _shared_prior(self, combo: Combo) -> LogNormal | None:
        """What the other kinds' renders suggest about this one (``None``: nothing learned).

        Renders of one service at one time resemble each other more than they
        resemble the docs' generic guess; how far one kind sits from another is
        unknown, so the prior stays wide.
        """
        fits = [
            k.model.fit
            for c, k in self._kinds.items()
            if c != combo and k.model.weight >= OWN_EVIDENCE / 2
        ]
        if not fits:
            return None
        mu = sum(f.mu for f in fits) / len(fits)
        spread = sum((f.mu - mu) ** 2 + f.sigma**2 for f in fits) / len(fits)
        return LogNormal(mu, math.sqrt(spread + KIND_SPREAD**2))

    def _fit(self, combo: Combo) -> LogNormal | None:
        """The kind's distribution; ``None`` when nothing at all has been learned yet."""
        model = self._kind(combo).model
        if model.weight < OWN_EVIDENCE:
            shared = self._shared_prior(combo)
            if shared is None and not model.samples:
                return None
            model.set_prior(shared or DOCS_PRIOR.scaled(self.policy.scale))
        return model.fit

    def model(self, combo: Combo) -> RenderModel:
        return self._kind(combo).model

    def first_poll_delay(self, combo: Combo) -> float:
        """Seconds from a new task's creation to its first poll.

        With nothing learned about any render yet, the docs' own cadence (the
        floor): the docs' 1-3 minutes are only a guess, and renders far shorter
        would otherwise sit unnoticed for a whole generation.
        """
        kind = self._kind(combo)
        kind.created += 1
        fit = self._fit(combo)
        if fit is None:
            return self.policy.floor
        probe = not kind.model.stamped and kind.created % self.policy.probe_every == 1
        return self.policy.first_poll(fit, probe=probe)

    def next_poll_delay(self, combo: Combo, elapsed: float, progress: int | None) -> float:
        """Seconds until the next poll of a task still running ``elapsed`` s after creation."""
        fit = self._fit(combo)
        predicted = self.progress.predict(progress, elapsed)
        if fit is None:  # nothing learned: the task's own progress, else the docs' guess
            task = model = predicted or DOCS_PRIOR.scaled(self.policy.scale)
        else:
            model = fit
            task = model if predicted is None else model.combined(predicted)
        return self.policy.next_poll(task, model, elapsed)

    def estimate(self, combo: Combo, sample: RenderSample) -> float:
        """The likeliest render time within what a task proved (for reports).

        A task found done at its first poll proved only "by then": the middle
        of that interval would halve it, the kind's distribution does not.
        """
        fit = self._fit(combo)
        return sample.mid if fit is None else fit.median_within(sample.lo, sample.hi)

    def learn(
        self,
        combo: Combo,
        sample: RenderSample,
        *,
        created_at: float,
        last_running: tuple[float, int | None] | None = None,
    ) -> None:
        """A task of ``combo`` created at ``created_at`` finished within ``sample``.

        ``last_running``: ``(elapsed, progress)`` of its last poll that saw it running.
        """
        kind = self._kind(combo)
        kind.model.add(sample)
        kind.newest_finished_start = max(kind.newest_finished_start, created_at)
        if last_running is not None and sample.hi - sample.lo <= 0.25 * sample.mid:
            self.progress.learn(last_running[1], last_running[0], sample.mid)

    def stall_reason(self, combo: Combo, *, watched_s: float, created_at: float) -> str | None:
        """Why a task watched for ``watched_s`` seconds should be given up on, or ``None``."""
        policy = self.policy
        if watched_s > policy.max_wait_s * policy.scale:
            source = "max_wait" if policy.fixed_max_wait else "the default max_wait"
            return f"still not finished after {source} ({span(policy.max_wait_s)})"
        kind = self._kind(combo)
        ceiling = policy.ceiling(kind.model)
        if ceiling is None or watched_s <= ceiling or kind.newest_finished_start <= created_at:
            return None
        p99 = kind.model.fit.quantile(0.99) / policy.scale
        return (
            f"still rendering after {span(watched_s / policy.scale)}: over "
            f"{policy.stall_factor:g}x the 99th percentile ({span(p99)}) learned for "
            f"{combo[0]} {combo[1]}s {combo[2]}, while later tasks of that kind finished"
        )
