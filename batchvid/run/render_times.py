"""How long renders take: what one finished task proves, and the distribution learned from many.

Pure code, no I/O.  A render's true duration is never seen directly; each
finished task yields an **interval** that must contain it (:func:`observe`):

- the server's ``created_at`` / ``completed_at`` (whole unix seconds in the
  docs): the duration lies within a second or so of their difference, however
  late we looked, and the server's clock offset cancels out;
- our own looks: the last poll that saw the task running and the first that
  saw it done bracket the finish, so the duration lies between
  ``last running - create answered`` and ``seen done - create sent``.

The two are intersected.  A server stamp that contradicts our own looks (a
``completed_at`` equal to ``created_at`` from a coarse clock, say) is ignored,
never believed over what we saw.  Either way, the time at which we happened to
look is only ever a *bound*, never the figure itself: an estimate built from
"seen done - created" includes the poller's own delay and grows with every
generation of tasks.

:class:`RenderModel` fits a log-normal distribution to the recent intervals of
one model/seconds/resolution by interval-censored maximum likelihood (EM),
newest first (a half-life in samples), so it follows renders that get faster
as readily as renders that get slower.  Before any history it is the docs'
"most jobs finish in 1-3 minutes", held loosely.  :class:`ProgressCalibration`
learns what a task's ``progress`` says about its remaining time, since a
renderer's progress is rarely linear (and may be coarse or absent).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final

from ..catalogue import TYPICAL_RENDER_S
from ..ledger.rows import RenderSample

__all__ = [
    "DOCS_PRIOR",
    "LogNormal",
    "ProgressCalibration",
    "RenderModel",
    "observe",
]

_STD: Final = NormalDist()
_SQRT2: Final = math.sqrt(2.0)
_INV_SQRT_2PI: Final = 1.0 / math.sqrt(2.0 * math.pi)
#: No distribution is treated as narrower than this (log scale): constant renders
#: measured in whole seconds would otherwise collapse the fit to a point.
SIGMA_MIN: Final = 0.02


def _phi(z: float) -> float:
    return _INV_SQRT_2PI * math.exp(-0.5 * z * z)


def _Phi(z: float) -> float:
    return 0.5 * math.erfc(-z / _SQRT2)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """A render-time distribution: ``ln D ~ Normal(mu, sigma)``, D in seconds."""

    mu: float
    sigma: float

    @classmethod
    def from_range(cls, low: float, high: float, *, share: float = 0.8) -> LogNormal:
        """The log-normal that puts the middle ``share`` of renders between ``low`` and ``high``."""
        z = _STD.inv_cdf(0.5 + share / 2)
        return cls((math.log(low) + math.log(high)) / 2, math.log(high / low) / (2 * z))

    def scaled(self, factor: float) -> LogNormal:
        """Every duration multiplied by ``factor``."""
        return LogNormal(self.mu + math.log(factor), self.sigma)

    @property
    def median(self) -> float:
        return math.exp(self.mu)

    @property
    def mean(self) -> float:
        return math.exp(self.mu + self.sigma * self.sigma / 2)

    def z(self, t: float) -> float:
        """Standard deviations of ``ln t`` from ``mu``."""
        return -math.inf if t <= 0 else (math.log(t) - self.mu) / self.sigma

    def cdf(self, t: float) -> float:
        return 0.0 if t <= 0 else _Phi((math.log(t) - self.mu) / self.sigma)

    def sf(self, t: float) -> float:
        """``1 - cdf(t)``, precise in the right tail."""
        return 1.0 if t <= 0 else _Phi((self.mu - math.log(t)) / self.sigma)

    def pdf(self, t: float) -> float:
        if t <= 0:
            return 0.0
        return _phi((math.log(t) - self.mu) / self.sigma) / (t * self.sigma)

    def quantile(self, q: float) -> float:
        return math.exp(self.mu + self.sigma * _STD.inv_cdf(min(max(q, 1e-9), 1 - 1e-9)))

    def integrated_cdf(self, t: float) -> float:
        """``∫₀ᵗ F(s) ds``: the expected seconds by which a render is done before ``t``."""
        if t <= 0:
            return 0.0
        z = (math.log(t) - self.mu) / self.sigma
        return t * _Phi(z) - self.mean * _Phi(z - self.sigma)

    def median_within(self, lo: float, hi: float) -> float:
        """The median of this distribution restricted to ``[lo, hi]`` (its middle if empty)."""
        f_lo, f_hi = self.cdf(lo), self.cdf(hi)
        if f_hi - f_lo < 1e-9:
            return (lo + hi) / 2
        return min(hi, max(lo, self.quantile((f_lo + f_hi) / 2)))

    def combined(self, other: LogNormal) -> LogNormal:
        """Both as independent evidence about one render (precision-weighted on log scale)."""
        a, b = 1 / self.sigma**2, 1 / other.sigma**2
        return LogNormal((a * self.mu + b * other.mu) / (a + b), math.sqrt(1 / (a + b)))


#: The docs: "most jobs finish in 1-3 minutes", read loosely (the middle 60 % of renders)
#: as the prior before any history.
DOCS_PRIOR: Final = LogNormal.from_range(*TYPICAL_RENDER_S, share=0.6)


def observe(
    *,
    sent_at: float,
    answered_at: float,
    seen_done_at: float,
    last_running_at: float | None = None,
    server_created_at: float | None = None,
    server_completed_at: float | None = None,
) -> RenderSample | None:
    """What one task seen done proves about its render time (``None``: nothing usable).

    Local times are on one clock (the runner's); the server's two stamps on
    another (only their difference is used).  Whole-second stamps are taken
    to be truncated, so their difference is good to within one second.
    """
    lo = max(0.0, (last_running_at - answered_at) if last_running_at is not None else 0.0)
    hi = seen_done_at - sent_at
    if hi <= 0 or lo > hi:
        return None
    if server_created_at is not None and server_completed_at is not None:
        delta = server_completed_at - server_created_at
        whole = float(server_created_at).is_integer() and float(server_completed_at).is_integer()
        slack = 1.0 if whole else 0.01
        s_lo, s_hi = max(lo, delta - slack), min(hi, delta + slack)
        if delta > 0 and s_lo <= s_hi:
            # "stamped": the server's stamps told more than our own looks did.
            return RenderSample(s_lo, s_hi, stamped=s_hi - s_lo < hi - lo)
    return RenderSample(lo, hi)


class RenderModel:
    """The render-time distribution of one model/seconds/resolution, learned from samples.

    Keeps the last ``capacity`` samples; sample ``k`` back from the newest
    weighs ``0.5 ** (k / half_life)``.  The prior weighs ``prior_weight``
    samples at first, half as much with every two samples seen.  :attr:`fit`
    refits lazily.
    """

    def __init__(
        self,
        prior: LogNormal = DOCS_PRIOR,
        *,
        half_life: float = 12.0,
        capacity: int = 64,
        prior_weight: float = 1.0,
    ) -> None:
        self.prior = prior
        self._decay: float = 0.5 ** (1.0 / half_life)
        self._prior_weight = prior_weight
        self.samples: deque[RenderSample] = deque(maxlen=capacity)
        self.seen = 0
        self._fit: LogNormal = prior
        self._dirty = False

    def set_prior(self, prior: LogNormal) -> None:
        """Change what the model assumes before (and alongside) its evidence."""
        if prior != self.prior:
            self.prior = prior
            self._dirty = True
            if not self.samples:
                self._fit = prior

    def add(self, sample: RenderSample) -> None:
        self.samples.append(sample)
        self.seen += 1
        self._dirty = True

    @property
    def stamped(self) -> bool:
        """Whether the newest sample came from server timestamps."""
        return bool(self.samples) and self.samples[-1].stamped

    @property
    def weight(self) -> float:
        """The samples' total weight: how much evidence the fit rests on."""
        kept: float = self._decay ** len(self.samples)
        return (1 - kept) / (1 - self._decay)

    @property
    def fit(self) -> LogNormal:
        if self._dirty:
            self._fit = self._refit()
            self._dirty = False
        return self._fit

    def _refit(self, iterations: int = 12) -> LogNormal:
        if not self.samples:
            return self.prior
        logs = [_log_interval(s) for s in self.samples]
        weights = [self._decay**k for k in range(len(logs) - 1, -1, -1)]
        # The prior fades fast (half-life: two samples): far from the truth, it would
        # otherwise keep the spread wide long after the evidence says otherwise.
        w0: float = self._prior_weight * 0.5 ** min(self.seen / 2, 60)
        total = sum(weights) + w0
        start, floor = _grouped_moments(logs, weights)
        start = start or self._fit
        mu, sigma = start.mu, max(start.sigma, floor)
        for _ in range(iterations):
            moments = [_moments(lo, hi, mu, sigma) for lo, hi in logs]
            new_mu = (
                sum(w * m for w, (m, _) in zip(weights, moments, strict=True)) + w0 * self.prior.mu
            ) / total
            spread = sum(
                w * (v + (m - new_mu) ** 2) for w, (m, v) in zip(weights, moments, strict=True)
            ) + w0 * (self.prior.sigma**2 + (self.prior.mu - new_mu) ** 2)
            new_sigma = max(floor, math.sqrt(spread / total))
            done = abs(new_mu - mu) + abs(new_sigma - sigma) < 1e-4
            mu, sigma = new_mu, new_sigma
            if done:
                break
        return LogNormal(mu, sigma)


def _grouped_moments(
    logs: list[tuple[float, float]], weights: list[float]
) -> tuple[LogNormal | None, float]:
    """Where EM starts, and the least spread the evidence can tell apart from none.

    The start: the bounded intervals' midpoints, less their own width
    (Sheppard's correction), near the answer when intervals are narrow, so a
    few EM steps finish the job (EM alone creeps towards a narrow answer when
    intervals are about as wide as the spread).  The floor: a spread below the
    intervals' own (as if uniform within each) is beyond what they can show,
    and claiming it would put polls where a render may not have ended.
    """
    pairs = [(w, lo, hi) for w, (lo, hi) in zip(weights, logs, strict=True) if math.isfinite(lo)]
    total = sum(w for w, _, _ in pairs)
    if total <= 0:
        return None, SIGMA_MIN
    mu = sum(w * (lo + hi) / 2 for w, lo, hi in pairs) / total
    own = sum(w * (hi - lo) ** 2 / 12 for w, lo, hi in pairs) / total
    spread = sum(w * ((lo + hi) / 2 - mu) ** 2 for w, lo, hi in pairs) / total - own
    floor = max(SIGMA_MIN, math.sqrt(own))
    return LogNormal(mu, math.sqrt(max(floor**2, spread))), floor


def _log_interval(sample: RenderSample) -> tuple[float, float]:
    lo = math.log(sample.lo) if sample.lo > 0 else -math.inf
    return lo, math.log(max(sample.hi, 1e-9))


def _moments(lo: float, hi: float, mu: float, sigma: float) -> tuple[float, float]:
    """Mean and variance of ``Normal(mu, sigma)`` restricted to ``[lo, hi]`` (log seconds)."""
    if hi - lo < 0.05 * sigma:  # narrow: the interval itself, whatever the current fit
        return (lo + hi) / 2, (hi - lo) ** 2 / 12
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    mass = _Phi(b) - _Phi(a)
    if mass < 1e-12:  # far in a tail of the current fit: trust the interval's edge
        edge = lo if a > 0 else hi
        return (edge, 0.0) if math.isfinite(edge) else ((lo + hi) / 2, 0.0)
    pa, pb = _phi(a), _phi(b)
    apa = a * pa if math.isfinite(a) else 0.0
    bpb = b * pb if math.isfinite(b) else 0.0
    shift = (pa - pb) / mass
    mean = mu + sigma * shift
    variance = sigma * sigma * max(0.0, 1 + (apa - bpb) / mass - shift * shift)
    return mean, variance


#: Progress buckets of ten points each: 1-9, 10-19, ..., 90-99.
_BUCKETS: Final = 10


class ProgressCalibration:
    """What a task's ``progress`` says about when it will finish, learned from finished tasks.

    For each bucket of progress it learns how far the share of the render
    already done departs from a linear reading (as ``ln(share) - ln(progress /
    100)``) when a task reported that progress.  Until a bucket has evidence it
    assumes progress is linear, loosely.  Progress 0 (queued, or a server that
    never reports it) and 100 predict nothing.
    """

    def __init__(self, *, half_life: float = 24.0, prior_sigma: float = 0.35) -> None:
        self._decay: float = 0.5 ** (1.0 / half_life)
        self._prior_sigma = prior_sigma
        # Per bucket: decayed weight, mean and second central moment of the departure.
        self._weight = [0.0] * _BUCKETS
        self._mean = [0.0] * _BUCKETS
        self._m2 = [0.0] * _BUCKETS

    @staticmethod
    def _bucket(progress: int | None) -> int | None:
        if progress is None or not 0 < progress < 100:
            return None
        return min(_BUCKETS - 1, progress // (100 // _BUCKETS))

    def learn(self, progress: int | None, elapsed: float, duration: float) -> None:
        """A task showed ``progress`` at ``elapsed`` seconds; its render took ``duration``."""
        bucket = self._bucket(progress)
        if bucket is None or progress is None or not 0 < elapsed <= duration:
            return
        x = math.log(elapsed / duration) - math.log(progress / 100)
        w = self._weight[bucket] * self._decay
        mean = self._mean[bucket] if w > 0 else x
        new_w = w + 1.0
        new_mean = mean + (x - mean) / new_w
        self._m2[bucket] = self._m2[bucket] * self._decay + (x - mean) * (x - new_mean)
        self._weight[bucket], self._mean[bucket] = new_w, new_mean

    def predict(self, progress: int | None, elapsed: float) -> LogNormal | None:
        """The render's duration given that it showed ``progress`` after ``elapsed`` seconds."""
        bucket = self._bucket(progress)
        if bucket is None or progress is None or elapsed <= 0:
            return None
        w = self._weight[bucket]
        # Evidence replaces the loose linear assumption as it accumulates.
        prior_share = 1.0 / (1.0 + w)
        observed = math.sqrt(self._m2[bucket] / w) if w > 1 else self._prior_sigma
        sigma = max(0.03, prior_share * self._prior_sigma + (1 - prior_share) * observed)
        share = math.log(progress / 100) + self._mean[bucket]
        return LogNormal(math.log(elapsed) - share, sigma)
