"""Render-time evidence and the distributions learned from it: pure code, no clock."""

from __future__ import annotations

import math
import random

import pytest

from batchvid.run.render_times import (
    DOCS_PRIOR,
    LogNormal,
    ProgressCalibration,
    RenderModel,
    RenderSample,
    observe,
)


def test_server_stamps_bound_the_render_to_a_second_whatever_we_looked() -> None:
    # Created at 100.0 (answered 100.4), seen running at 150, seen done only at 400.
    sample = observe(
        sent_at=100.0,
        answered_at=100.4,
        seen_done_at=400.0,
        last_running_at=150.0,
        server_created_at=1_700_000_000,
        server_completed_at=1_700_000_090,
    )
    assert sample == RenderSample(89.0, 91.0, stamped=True)


def test_without_stamps_the_render_lies_between_our_looks() -> None:
    local = {"sent_at": 100.0, "answered_at": 100.4, "seen_done_at": 200.0}
    sample = observe(**local, last_running_at=180.0)
    assert sample == RenderSample(pytest.approx(79.6), 100.0)
    assert not sample.stamped
    # Seen done at the first look: anything from nothing to the whole wait.
    assert observe(**local) == RenderSample(0.0, 100.0)


@pytest.mark.parametrize(
    ("created", "completed"),
    [
        (1_700_000_000, None),  # completed_at absent
        (None, None),
        (1_700_000_000, 1_700_000_000),  # a coarse clock: equal stamps
        (1_700_000_000, 1_700_000_500),  # contradicts what we saw: ignored
    ],
)
def test_stamps_that_are_absent_or_impossible_fall_back_to_our_looks(
    created: int | None, completed: int | None
) -> None:
    sample = observe(
        sent_at=0.0,
        answered_at=0.5,
        seen_done_at=100.0,
        last_running_at=80.5,
        server_created_at=created,
        server_completed_at=completed,
    )
    assert sample == RenderSample(80.0, 100.0)


def test_fractional_stamps_are_trusted_to_the_hundredth() -> None:
    sample = observe(
        sent_at=0.0,
        answered_at=0.1,
        seen_done_at=50.0,
        server_created_at=10.25,
        server_completed_at=42.75,
    )
    assert sample is not None and sample.hi - sample.lo == pytest.approx(0.02)


def test_a_sample_needs_a_positive_wait() -> None:
    assert observe(sent_at=10.0, answered_at=10.0, seen_done_at=10.0) is None


def test_log_normal_arithmetic() -> None:
    dist = LogNormal.from_range(60, 180)
    assert dist.quantile(0.1) == pytest.approx(60)
    assert dist.quantile(0.9) == pytest.approx(180)
    assert dist.cdf(dist.median) == pytest.approx(0.5)
    assert dist.sf(dist.median) == pytest.approx(0.5)
    assert dist.scaled(0.1).median == pytest.approx(dist.median * 0.1)
    # ∫₀ᵗ F(s) ds against a Riemann sum
    step = 0.05
    riemann = sum(dist.cdf((k + 0.5) * step) for k in range(int(150 / step))) * step
    assert dist.integrated_cdf(150) == pytest.approx(riemann, rel=1e-3)
    both = dist.combined(LogNormal(math.log(100), 0.1))
    assert both.sigma < 0.1 and 100 < both.median < dist.median


def fitted(samples: list[RenderSample], model: RenderModel | None = None) -> LogNormal:
    model = model or RenderModel()
    for sample in samples:
        model.add(sample)
    return model.fit


def test_exact_samples_give_the_truth() -> None:
    rng = random.Random(1)
    renders = [90 * math.exp(rng.gauss(0, 0.15)) for _ in range(200)]
    fit = fitted([RenderSample(d - 1, d + 1, stamped=True) for d in renders])
    assert fit.median == pytest.approx(90, rel=0.08)
    assert fit.sigma == pytest.approx(0.15, rel=0.4)


def test_censored_samples_are_used_as_intervals_not_upper_bounds() -> None:
    """Tasks looked at every 20 s from 40 s on: only the bracket is known.

    Taking the upper bound (the time we looked) as the render time would read
    every render as 10 s longer than it was, on average.
    """
    rng = random.Random(2)
    samples = []
    for _ in range(300):
        render = 90 * math.exp(rng.gauss(0, 0.15))
        looks = [40 + 20 * k + rng.uniform(0, 20) for k in range(12)]
        before = max((t for t in looks if t < render), default=0.0)
        after = min(t for t in looks if t >= render)
        samples.append(RenderSample(before, after))
    upper_bounds = sorted(s.hi for s in samples)[len(samples) // 2]
    assert upper_bounds > 95  # what the old estimate would have learned
    assert fitted(samples).median == pytest.approx(90, rel=0.06)


def test_the_estimate_goes_down_as_readily_as_up() -> None:
    model = RenderModel()
    fitted([RenderSample(89, 91, stamped=True)] * 40, model)
    # Three generations of 16 tasks at half the time, then three at the old time.
    assert fitted([RenderSample(44, 46, stamped=True)] * 48, model).median == pytest.approx(
        45, rel=0.1
    )
    assert fitted([RenderSample(89, 91, stamped=True)] * 48, model).median == pytest.approx(
        90, rel=0.1
    )


def test_before_any_evidence_the_docs_minutes_are_the_prior() -> None:
    model = RenderModel()
    assert model.fit == DOCS_PRIOR and model.weight == 0
    assert 60 < model.fit.median < 180
    model.set_prior(LogNormal(math.log(20), 0.5))
    assert model.fit.median == pytest.approx(20)


def test_progress_calibration_learns_a_renderer_that_is_not_linear() -> None:
    calibration = ProgressCalibration()
    rng = random.Random(3)
    for _ in range(200):
        render = rng.uniform(60, 120)
        elapsed = rng.uniform(0.1, 0.95) * render
        calibration.learn(int(100 * (elapsed / render) ** 0.6), elapsed, render)
    # Progress 70 after 40 s: 0.7 ** (1/0.6) = 55% of the render done, about 72 s in all.
    predicted = calibration.predict(70, 40.0)
    assert predicted is not None and predicted.median == pytest.approx(72, rel=0.08)
    assert predicted.sigma < 0.2
    # A linear reading would have said 57 s.
    assert ProgressCalibration().predict(70, 40.0).median == pytest.approx(57, rel=0.1)  # type: ignore[union-attr]
    for nothing in (None, 0, 100):
        assert calibration.predict(nothing, 40.0) is None
