"""Reports from the ledger: what a batch made, what failed and why, and what it cost.

:func:`load_report` reads a batch once (jobs by index, and the batch row) into a
:class:`ReportData`, computed by the pure :func:`build_report`.  The formatters
of :mod:`batchvid.report.formats` turn that into text for a terminal, one row or
object per job (CSV, JSON), Markdown for an issue or a chat, and, through
:mod:`batchvid.report.gallery`, a self-contained HTML gallery.  Nothing here writes to
the ledger, so a report can be taken while a run is still going (WAL).

Figures, and how they are counted:

- *rendered*: ``completed`` or ``downloaded``; *settled*: rendered, ``failed``
  or ``rejected``; *success rate*: rendered / settled (``in_doubt`` and
  ``stalled`` jobs have no outcome yet, so they count in neither).
- *render seconds*: :attr:`JobRow.render_seconds
  <batchvid.ledger.rows.JobRow.render_seconds>`, from what the task proved about
  its render time (the server's own timestamps, or the polls either side of its
  end), never from when we happened to look; p50/p95 by linear interpolation
  between the closest ranks.
- *cost*: ``est_cost_usd * billable_attempts`` (see :mod:`batchvid.ledger`):
  every attempt that may have been billed, failed and in-doubt ones included.
  Only shown when the batch has ``pricing``.
- *normalised*: a downloaded video whose probed size or length differs from
  what was asked (:attr:`JobRow.normalised <batchvid.ledger.rows.JobRow.normalised>`):
  flagged, never failed, since the API normalises by design.
- *jobs* are the manifest's; an *extra take* is an earlier attempt of a job,
  split off when the retry policy gave the job a new attempt after a stall,
  whose task went on (its cost stays counted on the job).  CSV and JSON have a
  row for each, naming the job it came from.

User text (prompts, ids, server messages) is never trusted: control characters
are made visible in text, Markdown punctuation is escaped in Markdown, and the
HTML gallery escapes everything.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from ..catalogue import API_FIELDS
from ..errors import LedgerError
from ..ledger.reads import Reads
from ..ledger.rows import BatchRow, JobRow, utc_iso
from ..ledger.store import Ledger
from ..states import FAILED_STATES, RENDERED_STATES, JobState
from .advice import Step, next_steps

__all__ = [
    "CSV_COLUMNS",
    "EXAMPLES_PER_GROUP",
    "FORMATS",
    "MODEL_HEADERS",
    "Advice",
    "FailureGroup",
    "ModelSummary",
    "ReportData",
    "advice",
    "build_report",
    "job_cost",
    "job_label",
    "job_record",
    "job_values",
    "load_report",
    "normalised_groups",
    "normalised_lines",
    "percentile",
    "plain",
    "rate",
    "retry_summary",
    "secs",
    "state_summary",
    "template_axes",
    "usd",
]

S = JobState

#: The report formats, as ``batchvid report --format`` names them.
FORMATS: Final = ("text", "csv", "json", "md", "html")
#: Job examples listed per failure reason.
EXAMPLES_PER_GROUP: Final = 3

#: The per-job columns of CSV and keys of JSON, in this order; CSV then adds one
#: ``axis.<name>`` column per template variable of the matrix (``axis.style``).
CSV_COLUMNS: Final = (
    "batch",
    "index",
    "key",
    "take",
    "prompt_id",
    "prompt",
    "model",
    "seconds",
    "size",
    "resolution",
    "references",
    "state",
    "task_id",
    "attempts",
    "billable_attempts",
    "submitted_utc",
    "queued_utc",
    "started_utc",
    "completed_utc",
    "downloaded_utc",
    "finished_utc",
    "render_seconds",
    "est_cost_usd",
    "cost_usd",
    "file_path",
    "bytes",
    "sha256",
    "error_code",
    "error_message",
    "download_errors",
    "auto_retries",
    "extra_take_of",
    "width",
    "height",
    "duration_s",
    "fps",
    "vcodec",
    "has_audio",
    "normalised",
    "poster_path",
)

_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


# -- per-job figures ---------------------------------------------------------------


def job_cost(job: JobRow) -> float | None:
    """USD the job has committed: its estimate times every attempt that may bill."""
    if job.est_cost_usd is None:
        return None
    return job.est_cost_usd * job.billable_attempts


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, interpolating between ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def template_axes(jobs: Iterable[JobRow]) -> list[str]:
    """Names of the matrix's template variables (non-API axes), in first-seen order."""
    names: dict[str, None] = {}
    for job in jobs:
        for name, _ in job.axes:
            if name not in API_FIELDS:
                names.setdefault(name)
    return list(names)


def job_values(job: JobRow, render: float | None) -> tuple[Any, ...]:
    """One job's values in :data:`CSV_COLUMNS` order, typed (``render``: its render seconds)."""
    cost = job_cost(job)
    refs = [r.path for r in job.references] if job.references_json != "[]" else []
    return (
        *(job.batch, job.idx, job.key, job.take, job.prompt_id, job.prompt, job.model),
        *(job.seconds, job.size, job.resolution, refs, job.state.value, job.task_id),
        *(job.attempts, job.billable_attempts, job.submitted_utc, job.queued_utc),
        *(job.started_utc, job.completed_utc, job.downloaded_utc, job.finished_utc),
        None if render is None else round(render, 3),
        job.est_cost_usd,
        None if cost is None else round(cost, 6),
        *(job.file_path, job.bytes, job.sha256, job.error_code, job.error_message),
        job.download_errors,
        job.retries,
        job.source_key,
        *(job.width, job.height, job.duration_s, job.fps, job.vcodec),
        None if job.has_audio is None else bool(job.has_audio),
        job.normalised,
        job.poster_path,
    )


def job_record(job: JobRow, render: float | None) -> dict[str, Any]:
    """One job as the JSON report has it: :data:`CSV_COLUMNS`, typed, then ``axes``."""
    record = dict(zip(CSV_COLUMNS, job_values(job, render), strict=True))
    record["axes"] = dict(job.axes)
    return record


#: The per-model figures' column headings, in every format.
MODEL_HEADERS: Final = ("model", "jobs", "rendered", "failed", "success", "p50", "p95", "out s")


# -- the report's data -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """One model's figures in a batch."""

    model: str
    jobs: int
    rendered: int
    failed: int
    output_seconds: int
    render_p50: float | None
    render_p95: float | None
    cost_usd: float | None

    @property
    def settled(self) -> int:
        return self.rendered + self.failed

    @property
    def success_rate(self) -> float | None:
        """Rendered / settled, or None while nothing has settled."""
        return self.rendered / self.settled if self.settled else None


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Jobs that failed (or were rejected) for the same reason."""

    state: JobState
    code: str | None
    message: str
    count: int
    examples: tuple[JobRow, ...]

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything a report shows about one batch, read once from the ledger."""

    batch: BatchRow
    jobs: tuple[JobRow, ...]
    extras: tuple[JobRow, ...]
    """Earlier attempts kept beside their jobs (stalled, then retried), by index."""
    retries: dict[str, int]
    """The automatic new attempts made, per kind of outcome."""
    retry_cost_usd: float | None
    """What those new attempts are estimated to cost (``None``: the batch has no pricing)."""
    normalised: tuple[tuple[JobRow, str], ...]
    """Downloaded videos that differ from what was asked (as probed), with how."""
    generated_utc: str
    counts: dict[JobState, int]
    models: tuple[ModelSummary, ...]
    failures: tuple[FailureGroup, ...]
    output_seconds: int
    planned_seconds: int
    cost_usd: float | None
    planned_cost_usd: float | None
    unpriced_jobs: int
    last_change_utc: str | None
    render_times: dict[int, float]
    """Render seconds by job id, for the jobs that have one (``JobRow.render_seconds``)."""
    render_p50: float | None
    render_p95: float | None

    @property
    def total(self) -> int:
        return len(self.jobs)

    def render_time(self, job: JobRow) -> float | None:
        return self.render_times.get(job.id)

    @property
    def priced(self) -> bool:
        return bool(self.batch.pricing)

    def extras_of(self) -> dict[int, list[JobRow]]:
        """The extra takes of each job that has any, by the job's id."""
        found: dict[int, list[JobRow]] = defaultdict(list)
        for extra in self.extras:
            if extra.extra_of is not None:
                found[extra.extra_of].append(extra)
        return found

    def in_state(self, *states: JobState) -> list[JobRow]:
        return [j for j in self.jobs if j.state in states]

    def count(self, states: Iterable[JobState]) -> int:
        return sum(self.counts[s] for s in states)


def build_report(batch: BatchRow, jobs: Iterable[JobRow], *, now: float) -> ReportData:
    """Compute a batch's report figures from its rows (pure; ``now`` is unix seconds)."""
    every = tuple(jobs)
    rows = tuple(j for j in every if j.extra_of is None)
    extras = tuple(j for j in every if j.extra_of is not None)
    retries: Counter[str] = Counter()
    retry_cost = 0.0
    for job in rows:
        for kind, n in job.retries.items():
            retries[kind] += n
            retry_cost += n * (job.est_cost_usd or 0.0)
    times = {j.id: t for j in every if (t := j.render_seconds) is not None}
    counts = Counter(j.state for j in rows)
    by_model: dict[str, list[JobRow]] = defaultdict(list)
    groups: dict[tuple[JobState, str | None, str], list[JobRow]] = defaultdict(list)
    for job in rows:
        by_model[job.model].append(job)
        if job.state in FAILED_STATES:
            message = job.error_message or "(no message)"
            groups[job.state, job.error_code, message].append(job)
    failures = sorted(
        (
            FailureGroup(state, code, msg, len(members), tuple(members[:EXAMPLES_PER_GROUP]))
            for (state, code, msg), members in groups.items()
        ),
        key=lambda g: (-g.count, g.state != S.FAILED, g.examples[0].idx),
    )
    costs = [job_cost(j) for j in rows]
    return ReportData(
        batch=batch,
        jobs=rows,
        extras=extras,
        retries=dict(sorted(retries.items())),
        retry_cost_usd=retry_cost if batch.pricing else None,
        normalised=tuple((j, how) for j in every if (how := j.normalised) is not None),
        generated_utc=utc_iso(now),
        counts={s: counts.get(s, 0) for s in JobState},
        models=tuple(_model_summary(m, by_model[m], times) for m in sorted(by_model)),
        failures=tuple(failures),
        output_seconds=sum(j.seconds for j in rows if j.state in RENDERED_STATES),
        planned_seconds=sum(j.seconds for j in rows),
        cost_usd=sum(c for c in costs if c is not None) if batch.pricing else None,
        planned_cost_usd=(
            sum(j.est_cost_usd for j in rows if j.est_cost_usd is not None)
            if batch.pricing
            else None
        ),
        unpriced_jobs=sum(1 for j in rows if j.est_cost_usd is None),
        last_change_utc=max((j.updated_utc for j in rows), default=None),
        render_times=times,
        render_p50=percentile([times[j.id] for j in rows if j.id in times], 50),
        render_p95=percentile([times[j.id] for j in rows if j.id in times], 95),
    )


def _model_summary(model: str, jobs: list[JobRow], render: dict[int, float]) -> ModelSummary:
    times = [render[j.id] for j in jobs if j.id in render]
    costs = [c for c in map(job_cost, jobs) if c is not None]
    return ModelSummary(
        model=model,
        jobs=len(jobs),
        rendered=sum(1 for j in jobs if j.state in RENDERED_STATES),
        failed=sum(1 for j in jobs if j.state in FAILED_STATES),
        output_seconds=sum(j.seconds for j in jobs if j.state in RENDERED_STATES),
        render_p50=percentile(times, 50),
        render_p95=percentile(times, 95),
        cost_usd=sum(costs) if costs else None,
    )


def load_report(ledger: Ledger | Reads, batch: str, *, now: float | None = None) -> ReportData:
    """Read ``batch`` from ``ledger`` (read-only is enough) and compute its report.

    Raises :class:`LedgerError` when the ledger has no such batch.
    """
    reads = ledger.reads if isinstance(ledger, Ledger) else ledger
    row = reads.get_batch(batch)
    if row is None:
        known = ", ".join(b.name for b in reads.batches()) or "none"
        raise LedgerError(f"no batch named {batch!r} in {reads.where} (batches: {known})")
    return build_report(row, reads.jobs(batch), now=time.time() if now is None else now)


# -- small formatting helpers ---------------------------------------------------------


def plain(text: str | None) -> str:
    """User text made safe for a terminal: one line, control characters made visible."""
    if text is None:
        return ""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", " ".join(text.split()))


def usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def secs(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} s"


def rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def job_label(job: JobRow) -> str:
    """How a report names a job: ``#12 sunrise take 2`` (index, prompt id, take), and an
    extra take by the attempt it is: ``#12 sunrise attempt 1 (extra take)``."""
    parts = [f"#{job.idx}"]
    if job.prompt_id:
        parts.append(plain(job.prompt_id))
    if job.take > 1:
        parts.append(f"take {job.take}")
    if job.extra_of is not None:
        parts.append(f"attempt {job.attempts} (extra take)")
    return " ".join(parts)


def normalised_groups(data: ReportData) -> list[tuple[str, list[JobRow]]]:
    """The videos the API rendered otherwise than asked, grouped by how, most first."""
    groups: dict[str, list[JobRow]] = {}
    for job, how in data.normalised:
        groups.setdefault(how, []).append(job)
    return sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))


def normalised_lines(data: ReportData) -> list[str]:
    """``12 videos: asked 864x496, rendered 1280x720 (normalised by the API); e.g. #9 ...``"""
    lines = []
    for how, jobs in normalised_groups(data)[: EXAMPLES_PER_GROUP * 7]:
        examples = ", ".join(job_label(j) for j in jobs[:EXAMPLES_PER_GROUP])
        more = ", ..." if len(jobs) > EXAMPLES_PER_GROUP else ""
        count = f"{len(jobs)} video{'s' if len(jobs) != 1 else ''}"
        lines.append(f"{count}: {how}; e.g. {examples}{more}")
    return lines


def retry_summary(data: ReportData) -> str | None:
    """``4 automatic new attempts (error 3, stalled 1), est. $0.80, under retry {...}``."""
    if not data.retries and not data.extras:
        return None
    made = sum(data.retries.values())
    kinds = ", ".join(f"{kind} {n}" for kind, n in data.retries.items())
    text = f"{made} automatic new attempt{'s' if made != 1 else ''}"
    text += f" ({kinds})" if kinds else ""
    if data.retry_cost_usd:
        text += f", est. {usd(data.retry_cost_usd)}"
    if data.batch.retry:
        policy = ", ".join(f"{k}: {v}" for k, v in data.batch.retry.items())
        text += f", under retry {{{policy}}}"
    if data.extras:
        kept = Counter(e.state.value.replace("_", " ") for e in data.extras)
        text += "; extra takes (earlier attempts that went on): " + ", ".join(
            f"{n} {state}" for state, n in kept.items()
        )
    return text


def state_summary(data: ReportData) -> str:
    """``48 jobs: 40 downloaded, 3 failed, ...`` (states in the state machine's order)."""
    listed = ", ".join(f"{n} {s.value.replace('_', ' ')}" for s, n in data.counts.items() if n)
    return f"{data.total} job{'s' if data.total != 1 else ''}" + (f": {listed}" if listed else "")


class Advice(NamedTuple):
    """A step the user can take (see :mod:`batchvid.report.advice`), and the jobs it is for."""

    step: Step
    jobs: tuple[JobRow, ...]


def advice(data: ReportData) -> list[Advice]:
    """What the user can do next, for each kind of job that did not succeed (in this order)."""
    return [
        Advice(step, tuple(data.in_state(*sorted(step.states))))
        for step in next_steps(data.batch.name, data.batch.manifest_path, data.counts)
    ]
