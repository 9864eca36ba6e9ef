"""The simulator's knobs: what each one does, and which values make sense.

:class:`SimConfig` is every knob (``batchvid simulator --help`` lists them from
:data:`KNOB_HELP`); :mod:`batchvid.sim.state` acts on them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["KNOB_HELP", "ProgressStyle", "SimConfig", "StampStyle"]

Vocabulary = Literal["upper", "lower", "mixed"]
ErrorShape = Literal["openai", "flat", "mixed"]
RetryAfterStyle = Literal["seconds", "date", "none"]
ProgressStyle = Literal["curve", "linear", "coarse", "none"]
StampStyle = Literal["seconds", "absent", "created"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Every knob of the simulator (``batchvid simulator --help`` explains each)."""

    api_key: str = "sim-key"
    vocabulary: Vocabulary = "upper"
    error_shape: ErrorShape = "openai"
    time_scale: float = 0.05
    spread: float = 0.12
    progress: ProgressStyle = "curve"
    completed_at: StampStyle = "seconds"
    fail_rate: float = 0.0
    error_rate: float = 0.0
    hang_rate: float = 0.0
    hang_factor: float = 20.0
    vanish_rate: float = 0.0
    corrupt_rate: float = 0.0
    rate_limit: int = 0
    rate_window: float = 60.0
    retry_after: float | None = None
    retry_after_style: RetryAfterStyle = "seconds"
    p_5xx: float = 0.0
    p_drop_after_create: float = 0.0
    create_delay: float = 0.0
    poll_delay: float = 0.0
    cdn_delay: float = 0.0
    p_truncate: float = 0.0
    url_ttl: float = 600.0
    p_cdn_error: float = 0.0
    p_ignore_range: float = 0.0
    p_content_redirect: float = 0.0
    video_url: bool = True
    content: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def with_changes(self, **knobs: Any) -> SimConfig:
        """A copy with ``knobs`` changed; unknown knobs and bad values raise ValueError."""
        unknown = sorted(set(knobs) - set(KNOB_HELP))
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **knobs)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["api_key"] = "***"  # the admin route is unauthenticated
        return data


#: What each knob does; the CLI's help text is built from this.
KNOB_HELP: Final = {
    "api_key": "The bearer token the API accepts; any other gets 401",
    "vocabulary": "Status words: upper (SUBMITTED/SUCCESS...), lower (queued/completed...), "
    "or mixed (chosen per answer)",
    "error_shape": "Error bodies: openai ({'error': {...}}), flat ({'code','message'}), "
    "or mixed (chosen per answer)",
    "time_scale": "Multiplies every render time: 1.0 is real time (1-3 minutes a job), "
    "0.005 makes a 60 s render take 0.3 s",
    "spread": "Render times of one model/seconds/resolution vary log-normally with this "
    "sigma, cut at 2.5 sigma (0.12: p10-p90 about 1.36x; 0: every such render takes the same)",
    "progress": "How progress is reported: curve (non-linear per task, after a queued spell "
    "at 0), linear, coarse (steps of 25) or none (the field is left out)",
    "completed_at": "Task timestamps: seconds (whole unix seconds, as in the docs), absent "
    "(no completed_at) or created (completed_at equal to created_at: a coarse clock)",
    "fail_rate": "Share of tasks that end FAILED (provider rejection, with an error object)",
    "error_rate": "Share of tasks that end ERROR (internal error, with a reason string)",
    "hang_rate": "Share of tasks that hang: they render hang_factor times longer than their "
    "kind (a stall rule gives up on them; they may still finish)",
    "hang_factor": "How many times longer a hanging task renders",
    "vanish_rate": "Share of tasks upstream forgets once they end: from then on every "
    "lookup answers 400 task_not_exist",
    "corrupt_rate": "Share of tasks whose video never decodes: served whole (its length "
    "checks out) but with its index cut off",
    "rate_limit": "API requests allowed per window before 429 (0 = no limit)",
    "rate_window": "Length of the rate-limit window in seconds (sliding)",
    "retry_after": "Retry-After seconds sent with 429 (default: until the window frees a slot)",
    "retry_after_style": "How Retry-After is written: seconds, date (HTTP-date) or none (omitted)",
    "p_5xx": "Probability that an API request is answered 500/502/503 before doing any work",
    "p_drop_after_create": "Probability that a create really makes (and counts) the task, "
    "then closes the connection without answering",
    "create_delay": "Seconds a create waits after making the task before answering "
    "(slow creates: a client timeout then leaves a task behind)",
    "poll_delay": "Seconds a task lookup (GET /v1/videos/{id}) waits before answering (slow polls)",
    "cdn_delay": "Seconds the CDN pauses halfway through each video it serves (slow "
    "downloads: a run stopped then leaves a part file behind)",
    "p_truncate": "Probability that a download announces the full Content-Length "
    "but the connection closes halfway",
    "url_ttl": "Seconds a signed video_url stays valid; query the task for a fresh one",
    "p_cdn_error": "Probability that the CDN answers a download with 500/502/503",
    "p_ignore_range": "Probability that a download ignores a Range request and answers "
    "200 with the whole file (a resuming client must start over, not append)",
    "p_content_redirect": "Probability that GET /v1/videos/{id}/content answers 302 to the "
    "task's signed CDN URL instead of streaming the video itself",
    "video_url": "Include video_url in finished tasks (false: clients must use /content)",
    "content": "Serve GET /v1/videos/{id}/content (false: 404, a gateway without that route)",
    "seed": "Seed for every random choice (same seed and requests, same run)",
}

_PROBABILITIES: Final = (
    "fail_rate",
    "error_rate",
    "hang_rate",
    "vanish_rate",
    "corrupt_rate",
    "p_5xx",
    "p_drop_after_create",
    "p_truncate",
    "p_cdn_error",
    "p_ignore_range",
    "p_content_redirect",
)


def _config_problems(config: SimConfig) -> list[str]:
    problems = [
        f"{name} must be between 0 and 1"
        for name in _PROBABILITIES
        if not 0 <= getattr(config, name) <= 1
    ]
    if config.fail_rate + config.error_rate > 1:
        problems.append("fail_rate + error_rate must not exceed 1")
    if not 0 <= config.spread <= 1:
        problems.append("spread must be between 0 and 1")
    if config.progress not in ("curve", "linear", "coarse", "none"):
        problems.append("progress must be curve, linear, coarse or none")
    if config.completed_at not in ("seconds", "absent", "created"):
        problems.append("completed_at must be seconds, absent or created")
    if config.vocabulary not in ("upper", "lower", "mixed"):
        problems.append("vocabulary must be upper, lower or mixed")
    if config.error_shape not in ("openai", "flat", "mixed"):
        problems.append("error_shape must be openai, flat or mixed")
    if config.retry_after_style not in ("seconds", "date", "none"):
        problems.append("retry_after_style must be seconds, date or none")
    if config.hang_factor < 1:
        problems.append("hang_factor must be at least 1")
    delays = (config.create_delay, config.poll_delay, config.cdn_delay)
    if config.time_scale < 0 or min(delays) < 0 or config.url_ttl < 0:
        problems.append("time_scale, the delays and url_ttl must not be negative")
    if config.rate_limit < 0 or config.rate_window <= 0:
        problems.append("rate_limit must be >= 0 and rate_window > 0")
    if config.retry_after is not None and config.retry_after < 0:
        problems.append("retry_after must not be negative")
    if not config.api_key:
        problems.append("api_key must not be empty")
    return problems
