"""The simulator's state: tasks, render clock, signed URLs, faults, counters.

Everything the built-in CometAPI simulator decides about time and chance lives
here as plain Python (no sockets): how long a render takes, what a task looks
like at a given instant, how URLs are signed, which fault fires next, and what
was counted, under the knobs of :mod:`batchvid.sim.config`.  What a create must
look like is in :mod:`batchvid.sim.requests`; ``batchvid.sim.server`` wires both
to HTTP.

One :class:`SimState` is shared by the API and CDN listeners; a lock makes it
safe to read and reconfigure from another thread while they run.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

from ..catalogue import normalised_size
from ..media.synth import made_video, make_video
from .config import ProgressStyle, SimConfig
from .requests import CreateRequest, SimError

__all__ = [
    "FAULT_KINDS",
    "SimState",
    "SimTask",
    "max_in_window",
    "render_seconds",
    "rendered_video",
    "task_marker",
]

_T = TypeVar("_T")

#: One-shot faults that ``inject`` queues for the next N matching requests.
FAULT_KINDS: Final = (
    "server_error",
    "drop_after_create",
    "truncate",
    "cdn_error",
    "expire",
    "ignore_range",
    "content_redirect",
    "corrupt",
)

_UPPER: Final = {
    "queued": "SUBMITTED",
    "in_progress": "IN_PROGRESS",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "error": "ERROR",
}


# -- content ---------------------------------------------------------------


def rendered_video(request: CreateRequest, *, only_made: bool = False) -> bytes | None:
    """The video a request renders: the size the docs say the API renders (normalisations
    included), ``seconds`` long, 24 fps (made once per size and length; ``only_made``:
    ``None`` rather than make it, for a caller that must not block)."""
    size = normalised_size(request.model, request.size, request.resolution)
    width, height = (int(n) for n in size.split("x"))
    if only_made:
        return made_video(width, height, request.seconds)
    return make_video(width, height, request.seconds)


def task_marker(task_id: str) -> bytes:
    """A top-level MP4 ``free`` box naming the task, appended to its video.

    Players and FFmpeg skip ``free`` boxes, so the file still plays; its bytes
    (and sha256) differ per task, so a download can be checked against its task.
    """
    payload = f"batchvid-sim task={task_id}".encode()
    return (8 + len(payload)).to_bytes(4, "big") + b"free" + payload


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
    #: The rendered video, shared by every task of its size and length ...
    video: bytes = field(repr=False)
    #: ... and what makes this task's file its own (see :func:`task_marker`).
    marker: bytes = field(repr=False)
    sha256: str
    #: Share of the render spent queued (progress 0, status queued).
    queue_share: float = 0.1
    #: Progress is ``100 * share ** curve`` of the rendering part (1.0: linear).
    curve: float = 1.0
    #: Monotonic time of the first poll that answered this task terminal (for benchmarks).
    seen_done_mono: float | None = None
    #: Renders ``hang_factor`` times longer than its kind.
    hangs: bool = False
    #: Forgotten upstream once it ends: every lookup answers task_not_exist.
    vanishes: bool = False
    #: Its video never decodes (served with its index cut off).
    corrupt: bool = False

    @property
    def content(self) -> bytes:
        """The task's MP4, as downloaded."""
        return self.video + self.marker

    def gone(self, now: float) -> bool:
        """Whether upstream has forgotten this task by monotonic time ``now``."""
        return self.vanishes and self.phase(now)[2] is not None

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

    def lookup(self, task_id: str) -> SimTask | None:
        """The task as upstream knows it: ``None`` for an unknown id or a forgotten task."""
        task = self.tasks.get(task_id)
        if task is None or task.gone(self.now()):
            return None
        return task

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

    def create(self, request: CreateRequest, video: bytes | None = None) -> SimTask:
        """A new task for ``request``; ``video``: its render, made off the lock (made
        here when not given, for callers with no event loop to keep free)."""
        video = video or rendered_video(request)
        assert video is not None
        with self._lock:
            config = self.config
            task_id = f"task_{self.rng.getrandbits(64):016x}"
            spread = math.exp(
                config.spread * max(-_SPREAD_CUT, min(_SPREAD_CUT, self.rng.gauss(0.0, 1.0)))
            )
            dice = self._dice(request.fingerprint())
            roll = dice.random()
            outcome: Literal["completed", "failed", "error"] = "completed"
            if roll < config.fail_rate:
                outcome = "failed"
            elif roll < config.fail_rate + config.error_rate:
                outcome = "error"
            hangs = bool(config.hang_rate) and dice.random() < config.hang_rate
            vanishes = bool(config.vanish_rate) and dice.random() < config.vanish_rate
            corrupt = bool(config.corrupt_rate) and dice.random() < config.corrupt_rate
            marker = task_marker(task_id)
            task = SimTask(
                id=task_id,
                request=request,
                created_wall=time.time(),
                created_mono=time.monotonic(),
                duration=render_seconds(request.model, request.seconds, request.resolution)
                * spread
                * config.time_scale
                * (config.hang_factor if hangs else 1.0),
                outcome=outcome,
                video=video,
                marker=marker,
                sha256=hashlib.sha256(video + marker).hexdigest(),
                queue_share=self.rng.uniform(0.05, 0.2),
                curve=self.rng.uniform(0.6, 0.9),
                hangs=hangs,
                vanishes=vanishes,
                corrupt=corrupt,
            )
            self.tasks[task_id] = task
            self.counters["creates"] += 1
            self.fingerprints[request.fingerprint()] += 1
            return task

    def _dice(self, fingerprint: str) -> random.Random:
        """The chances of one task (its outcome, whether it hangs or vanishes).

        Seeded by the seed, the request and how often it was created before: a
        seeded run gives each job's n-th attempt the same fate whatever order
        the creates arrive in (retries interleave with first attempts by timing).
        """
        if self.config.seed is None:
            return self.rng
        return random.Random(f"{self.config.seed}/{fingerprint}/{self.fingerprints[fingerprint]}")

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
        "hangs": task.hangs,
        "vanishes": task.vanishes,
        "duration_s": round(task.duration, 4),
        # On the clock of ``request_times`` (seconds since the simulator started).
        "created_t": round(task.created_mono - started, 6),
        "seen_done_t": (
            None if task.seen_done_mono is None else round(task.seen_done_mono - started, 6)
        ),
        "rendered": normalised_size(request.model, request.size, request.resolution),
        "size_bytes": len(task.video) + len(task.marker),
        "corrupt": task.corrupt,
        "sha256": task.sha256,
    }


def _retry_after_header(style: str, wait: float) -> dict[str, str]:
    seconds = max(0, math.ceil(wait))  # delay-seconds is a whole number
    if style == "none":
        return {}
    if style == "date":
        return {"Retry-After": email.utils.formatdate(time.time() + seconds, usegmt=True)}
    return {"Retry-After": str(seconds)}
