"""The simulator's state: knobs, tasks, render clock, signed URLs, faults, counters.

Everything the built-in CometAPI simulator decides about time and chance lives
here as plain Python (no sockets): how long a render takes, what a task looks
like at a given instant, how URLs are signed, which fault fires next, and what
was counted.  What a create must look like is in :mod:`batchvid.sim.requests`;
``batchvid.sim.server`` wires both to HTTP.

One :class:`SimState` is shared by the API and CDN listeners; a lock makes it
safe to read and reconfigure from another thread while they run.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import hmac
import importlib.resources
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final, Literal, TypeVar

from .requests import CreateRequest, SimError

__all__ = [
    "FAULT_KINDS",
    "KNOB_HELP",
    "SimConfig",
    "SimState",
    "SimTask",
    "max_in_window",
    "render_seconds",
    "sample_video",
    "video_for",
]

_T = TypeVar("_T")
Vocabulary = Literal["upper", "lower", "mixed"]
ErrorShape = Literal["openai", "flat", "mixed"]
RetryAfterStyle = Literal["seconds", "date", "none"]
ProgressStyle = Literal["curve", "linear", "coarse", "none"]
StampStyle = Literal["seconds", "absent", "created"]

#: One-shot faults that ``inject`` queues for the next N matching requests.
FAULT_KINDS: Final = (
    "server_error",
    "drop_after_create",
    "truncate",
    "cdn_error",
    "expire",
    "ignore_range",
    "content_redirect",
)

_UPPER: Final = {
    "queued": "SUBMITTED",
    "in_progress": "IN_PROGRESS",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "error": "ERROR",
}


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
    rate_limit: int = 0
    rate_window: float = 60.0
    retry_after: float | None = None
    retry_after_style: RetryAfterStyle = "seconds"
    p_5xx: float = 0.0
    p_drop_after_create: float = 0.0
    create_delay: float = 0.0
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
    "rate_limit": "API requests allowed per window before 429 (0 = no limit)",
    "rate_window": "Length of the rate-limit window in seconds (sliding)",
    "retry_after": "Retry-After seconds sent with 429 (default: until the window frees a slot)",
    "retry_after_style": "How Retry-After is written: seconds, date (HTTP-date) or none (omitted)",
    "p_5xx": "Probability that an API request is answered 500/502/503 before doing any work",
    "p_drop_after_create": "Probability that a create really makes (and counts) the task, "
    "then closes the connection without answering",
    "create_delay": "Seconds a create waits after making the task before answering "
    "(slow creates: a client timeout then leaves a task behind)",
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
    if config.time_scale < 0 or config.create_delay < 0 or config.url_ttl < 0:
        problems.append("time_scale, create_delay and url_ttl must not be negative")
    if config.rate_limit < 0 or config.rate_window <= 0:
        problems.append("rate_limit must be >= 0 and rate_window > 0")
    if config.retry_after is not None and config.retry_after < 0:
        problems.append("retry_after must not be negative")
    if not config.api_key:
        problems.append("api_key must not be empty")
    return problems


# -- content ---------------------------------------------------------------


@cache
def sample_video() -> bytes:
    """The committed sample MP4 (1 s, 160x90, H.264)."""
    return importlib.resources.files("batchvid").joinpath("assets/sample.mp4").read_bytes()


def video_for(task_id: str) -> bytes:
    """A playable MP4 unique to ``task_id``: the sample plus a top-level ``free`` box.

    Players skip ``free`` boxes, so the file still plays; its bytes (and
    sha256) differ per task, so a download can be checked against its task.
    """
    payload = f"batchvid-sim task={task_id}".encode()
    return sample_video() + (8 + len(payload)).to_bytes(4, "big") + b"free" + payload


# -- render clock ------------------------------------------------------------

# Simulator-only data (the docs give no render speeds, only "most jobs finish in
# 1-3 minutes, depending on model, duration and resolution"): relative cost per
# model and per resolution. Unknown models cost 1.0.
_MODEL_COST: Final = {
    "doubao-seedance-2-0": 1.0,
    "doubao-seedance-2-0-fast": 0.6,
    "doubao-seedance-1-5-pro": 0.85,
    "doubao-seedance-1-0-pro": 0.7,
}
_RESOLUTION_COST: Final = {"480p": 0.55, "720p": 1.0, "1080p": 1.6}
#: Log-normal spreads are cut here (in sigmas): no render takes forever.
_SPREAD_CUT: Final = 2.5


def render_seconds(model: str, seconds: int, resolution: str) -> float:
    """Unscaled typical render time: 90 s for 5 s of 720p on the 2.0 model.

    Within the docs' 1-3 minutes for most requests; shorter for a few seconds
    of 480p on a fast model, longer for 10+ seconds of 1080p.
    """
    cost = _MODEL_COST.get(model, 1.0) * _RESOLUTION_COST.get(resolution, 1.0)
    return 45.0 + 9.0 * seconds * cost


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most events that fell within any ``window`` seconds (for rate-limit checks)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


# -- tasks and state ---------------------------------------------------------


@dataclass(slots=True)
class SimTask:
    """One simulated render."""

    id: str
    request: CreateRequest
    created_wall: float
    created_mono: float
    duration: float
    outcome: Literal["completed", "failed", "error"]
    content: bytes = field(repr=False)
    sha256: str
    #: Share of the render spent queued (progress 0, status queued).
    queue_share: float = 0.1
    #: Progress is ``100 * share ** curve`` of the rendering part (1.0: linear).
    curve: float = 1.0
    #: Monotonic time of the first poll that answered this task terminal (for benchmarks).
    seen_done_mono: float | None = None

    def phase(self, now: float, style: ProgressStyle = "linear") -> tuple[str, int, float | None]:
        """``(status, progress, finished_after_seconds)`` at monotonic time ``now``.

        Queued for ``queue_share`` of the render, then in progress; ERROR tasks
        stop halfway.  ``style`` shapes the progress figure (see ``SimConfig``).
        """
        elapsed = now - self.created_mono
        stop = 0.5 * self.duration if self.outcome == "error" else self.duration
        if elapsed >= stop:
            progress = 100 if self.outcome == "completed" else self._progress(stop, style)
            return self.outcome, progress, stop
        if elapsed < self.queue_share * self.duration:
            return "queued", 0, None
        return "in_progress", self._progress(elapsed, style), None

    def _progress(self, elapsed: float, style: ProgressStyle) -> int:
        queue_time = self.queue_share * self.duration
        share = (elapsed - queue_time) / max(self.duration - queue_time, 1e-9)
        share = min(1.0, max(0.0, share))
        if style == "curve":
            share **= self.curve
        progress = max(1, min(99, int(100 * share)))
        return 25 * (progress // 25) if style == "coarse" else progress


class SimState:
    """Tasks, counters and fault queues shared by the API and CDN listeners."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self._lock = threading.RLock()
        self.cdn_url = ""
        self._initial = config or SimConfig()
        self._reset(self._initial)

    def _reset(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self._secret = self.rng.randbytes(32)
        self._started = time.monotonic()
        self.tasks: dict[str, SimTask] = {}
        self.counters: Counter[str] = Counter()
        self.fingerprints: Counter[str] = Counter()
        self.polls: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self._window: deque[float] = deque()
        self._faults: Counter[str] = Counter()

    # -- control -----------------------------------------------------------

    def configure(self, **knobs: Any) -> SimConfig:
        with self._lock:
            self.config = self.config.with_changes(**knobs)
            if "seed" in knobs:
                self.rng = random.Random(self.config.seed)
            return self.config

    def inject(self, **faults: int) -> None:
        """Queue one-shot faults: ``inject(server_error=2)`` fails the next two API requests."""
        unknown = sorted(set(faults) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(
                f"unknown fault(s): {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}"
            )
        with self._lock:
            for kind, count in faults.items():
                self._faults[kind] += max(0, int(count))

    def reset(self) -> None:
        """Forget every task and counter and restore the starting knobs."""
        with self._lock:
            self._reset(self._initial)

    def clock(self) -> float:
        """Seconds since the simulator started (the time base of ``requests``)."""
        return time.monotonic() - self._started

    def fault(self, kind: str, probability: float) -> bool:
        """Does fault ``kind`` fire now? A queued one-shot, else a coin flip."""
        with self._lock:
            if self._faults[kind] > 0:
                self._faults[kind] -= 1
                return True
            return probability > 0 and self.rng.random() < probability

    def now(self) -> float:
        """The monotonic clock task phases are measured on."""
        return time.monotonic()

    def count_poll(self, task_id: str) -> None:
        with self._lock:
            self.polls[task_id] += 1

    def count(self, name: str, by: int = 1) -> None:
        with self._lock:
            self.counters[name] += by

    def choose(self, options: Sequence[_T]) -> _T:
        with self._lock:
            return self.rng.choice(options)

    # -- the gate every API request passes ---------------------------------

    def admit(self, authorization: str | None) -> tuple[SimError, dict[str, str]] | None:
        """Auth, then rate limit, then random 5xx: the rejection, or None to proceed."""
        config = self.config
        if authorization != f"Bearer {config.api_key}":
            self.count("unauthorized")
            code = "invalid_api_key" if authorization else "missing_api_key"
            return SimError(401, code, "invalid or missing API key", "authentication_error"), {}
        with self._lock:
            now = time.monotonic()
            while self._window and now - self._window[0] >= config.rate_window:
                self._window.popleft()
            if config.rate_limit and len(self._window) >= config.rate_limit:
                self.counters["rate_limited"] += 1
                wait = config.retry_after
                if wait is None:
                    wait = config.rate_window - (now - self._window[0])
                error = SimError(
                    429, "rate_limit_exceeded", "too many requests", "rate_limit_error"
                )
                return error, _retry_after_header(config.retry_after_style, wait)
            self._window.append(now)
        if self.fault("server_error", config.p_5xx):
            self.count("server_errors")
            status = self.choose((500, 502, 503))
            return SimError(
                status, "server_error", "upstream error, please retry", "server_error"
            ), {}
        return None

    def log_request(self, method: str, path: str) -> dict[str, Any]:
        """Record an API request as it arrives; the caller fills in ``status`` when
        it answers (0 = no answer yet, or never: a dropped connection)."""
        entry: dict[str, Any] = {
            "t": round(self.clock(), 6),
            "method": method,
            "path": path,
            "status": 0,
        }
        with self._lock:
            self.counters["api_requests"] += 1
            self.requests.append(entry)
        return entry

    # -- tasks -------------------------------------------------------------

    def create(self, request: CreateRequest) -> SimTask:
        with self._lock:
            config = self.config
            task_id = f"task_{self.rng.getrandbits(64):016x}"
            spread = math.exp(
                config.spread * max(-_SPREAD_CUT, min(_SPREAD_CUT, self.rng.gauss(0.0, 1.0)))
            )
            roll = self.rng.random()
            outcome: Literal["completed", "failed", "error"] = "completed"
            if roll < config.fail_rate:
                outcome = "failed"
            elif roll < config.fail_rate + config.error_rate:
                outcome = "error"
            content = video_for(task_id)
            task = SimTask(
                id=task_id,
                request=request,
                created_wall=time.time(),
                created_mono=time.monotonic(),
                duration=render_seconds(request.model, request.seconds, request.resolution)
                * spread
                * config.time_scale,
                outcome=outcome,
                content=content,
                sha256=hashlib.sha256(content).hexdigest(),
                queue_share=self.rng.uniform(0.05, 0.2),
                curve=self.rng.uniform(0.6, 0.9),
            )
            self.tasks[task_id] = task
            self.counters["creates"] += 1
            self.fingerprints[request.fingerprint()] += 1
            return task

    def status_word(self, status: str) -> str:
        vocabulary = self.config.vocabulary
        if vocabulary == "mixed":
            vocabulary = "upper" if self.choose(("upper", "lower")) == "upper" else "lower"
        return _UPPER[status] if vocabulary == "upper" else status

    def task_view(self, task: SimTask, *, fresh: bool = False) -> dict[str, Any]:
        """The JSON body describing ``task`` now (``fresh``: a create's first answer)."""
        config = self.config
        now = time.monotonic()
        status, progress, finished_after = (
            ("queued", 0, None) if fresh else task.phase(now, config.progress)
        )
        body: dict[str, Any] = {
            "id": task.id,
            "task_id": task.id,
            "object": "video",
            "model": task.request.model,
            "status": self.status_word(status),
            "created_at": int(task.created_wall),
            "seconds": str(task.request.seconds),
            "size": task.request.size,
        }
        if config.progress != "none":
            body["progress"] = progress
        if fresh:
            return body
        if finished_after is not None and task.seen_done_mono is None:
            with self._lock:
                task.seen_done_mono = now
        if config.completed_at != "absent":
            body["completed_at"] = (
                None
                if finished_after is None
                else body["created_at"]
                if config.completed_at == "created"
                else int(task.created_wall + finished_after)
            )
        if status == "completed" and config.video_url:
            body["video_url"] = self.sign_url(task.id)
        elif status == "failed":
            body["error"] = {
                "code": "OutputVideoSensitiveContentDetected",
                "message": "the generated video may contain sensitive content",
            }
        elif status == "error":
            body["fail_reason"] = "internal error: the render worker stopped"
        return body

    # -- signed URLs -------------------------------------------------------

    def _signature(self, task_id: str, expires: str) -> str:
        message = f"{task_id}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def sign_url(self, task_id: str) -> str:
        expires = f"{time.time() + self.config.url_ttl:.3f}"
        signature = self._signature(task_id, expires)
        return f"{self.cdn_url}/v/{task_id}.mp4?expires={expires}&sig={signature}"

    def check_signature(self, task_id: str, expires: str, sig: str) -> SimError | None:
        """None when the URL is genuine and current, else the 403 to answer."""
        if not hmac.compare_digest(self._signature(task_id, expires), sig):
            return SimError(
                403,
                "SignatureDoesNotMatch",
                "the request signature does not match",
                "access_denied",
            )
        try:
            deadline = float(expires)
        except ValueError:
            deadline = -math.inf
        if time.time() > deadline or self.fault("expire", 0.0):
            return SimError(403, "AccessDenied", "Request has expired", "access_denied")
        return None

    # -- counters ----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of every counter (what ``GET /_sim/stats`` returns)."""
        with self._lock:
            counters = dict(self.counters)
            return {
                "creates": counters.get("creates", 0),
                "creates_by_fingerprint": dict(self.fingerprints),
                "duplicate_creates": sum(n - 1 for n in self.fingerprints.values() if n > 1),
                "polls": dict(self.polls),
                "api_requests": counters.get("api_requests", 0),
                "request_times": [r["t"] for r in self.requests],
                "requests": [dict(r) for r in self.requests],
                "counters": counters,
                "tasks": {
                    task.id: _task_summary(task, self._started) for task in self.tasks.values()
                },
                "pending_faults": {k: v for k, v in self._faults.items() if v},
                "config": self.config.as_dict(),
            }


def _task_summary(task: SimTask, started: float) -> dict[str, Any]:
    request = task.request
    return {
        "prompt": request.prompt,
        "model": request.model,
        "seconds": request.seconds,
        "size": request.size,
        "resolution": request.resolution,
        "references": [
            {
                "filename": u.filename,
                "content_type": u.content_type,
                "size": len(u.content),
                "sha256": hashlib.sha256(u.content).hexdigest(),
            }
            for u in request.references
        ],
        "fingerprint": request.fingerprint(),
        "outcome": task.outcome,
        "duration_s": round(task.duration, 4),
        # On the clock of ``request_times`` (seconds since the simulator started).
        "created_t": round(task.created_mono - started, 6),
        "seen_done_t": (
            None if task.seen_done_mono is None else round(task.seen_done_mono - started, 6)
        ),
        "size_bytes": len(task.content),
        "sha256": task.sha256,
    }


def _retry_after_header(style: str, wait: float) -> dict[str, str]:
    seconds = max(0, math.ceil(wait))  # delay-seconds is a whole number
    if style == "none":
        return {}
    if style == "date":
        return {"Retry-After": email.utils.formatdate(time.time() + seconds, usegmt=True)}
    return {"Retry-After": str(seconds)}
