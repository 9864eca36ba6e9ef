"""The report's formats: text for a terminal, CSV and JSON per job, Markdown, and HTML.

Each ``render_*`` takes the :class:`batchvid.report.ReportData` of one batch and
returns the whole document as a string; :func:`render` picks one by its
``--format`` name.  Nothing here reads the ledger or writes a file.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from ..ledger.rows import JobRow
from ..states import FAILED_STATES, RENDERED_STATES, JobState
from ..text import clip
from .data import (
    CSV_COLUMNS,
    EXAMPLES_PER_GROUP,
    FORMATS,
    MODEL_HEADERS,
    ReportData,
    advice,
    job_label,
    job_record,
    job_values,
    normalised_lines,
    plain,
    rate,
    retry_summary,
    secs,
    state_summary,
    template_axes,
    usd,
)
from .gallery import render_html

__all__ = [
    "FAILURE_GROUPS_SHOWN",
    "md",
    "render",
    "render_csv",
    "render_html",
    "render_json",
    "render_markdown",
    "render_text",
]

S = JobState
#: Failure reasons listed in text and Markdown before the rest are only counted.
FAILURE_GROUPS_SHOWN: Final = 20

# Inline Markdown that user text could trigger (it never starts a line, so `#`, `-`
# and `1.` cannot act): emphasis, code, links, raw HTML, tables, strikes, math.
_MD_SPECIAL: Final = re.compile(r"([\\`*_\[\]<>|~$&])")


def render(
    data: ReportData,
    fmt: str,
    *,
    html_path: str | Path | None = None,
    links: Mapping[str, str] | None = None,
) -> str:
    """The report of ``data`` in format ``fmt`` (one of :data:`batchvid.report.FORMATS`).

    ``html_path`` is where an HTML report will be written: its videos are linked
    relative to it (default: ``report.html`` in the current directory), or for
    videos in a store by ``links`` (their presigned URLs).
    """
    if fmt == "text":
        return render_text(data)
    if fmt == "csv":
        return render_csv(data)
    if fmt == "json":
        return render_json(data)
    if fmt == "md":
        return render_markdown(data)
    if fmt == "html":
        return render_html(data, html_path if html_path is not None else "report.html", links=links)
    raise ValueError(f"unknown report format {fmt!r} (one of {', '.join(FORMATS)})")


# -- text -------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> list[str]:
    """Aligned columns; every column from ``right`` on is right-aligned (figures)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i >= right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _model_rows(data: ReportData) -> list[list[str]]:
    rows = [
        [
            plain(m.model),
            str(m.jobs),
            str(m.rendered),
            str(m.failed),
            rate(m.success_rate),
            secs(m.render_p50),
            secs(m.render_p95),
            str(m.output_seconds),
            *([usd(m.cost_usd)] if data.priced else []),
        ]
        for m in data.models
    ]
    if len(data.models) > 1:
        rendered, failed = data.count(RENDERED_STATES), data.count(FAILED_STATES)
        rows.append(
            [
                "all models",
                str(data.total),
                str(rendered),
                str(failed),
                rate(rendered / (rendered + failed) if rendered + failed else None),
                secs(data.render_p50),
                secs(data.render_p95),
                str(data.output_seconds),
                *([usd(data.cost_usd)] if data.priced else []),
            ]
        )
    return rows


def _examples(jobs: Sequence[JobRow], total: int) -> str:
    more = f", … {total - len(jobs)} more" if total > len(jobs) else ""
    return ", ".join(job_label(j) for j in jobs) + more


def _cost_line(data: ReportData) -> str | None:
    if not data.priced:
        return None
    parts = [f"estimated cost {usd(data.cost_usd)} committed (every attempt that may bill)"]
    parts.append(f"{usd(data.planned_cost_usd)} for one attempt of every job")
    if data.batch.budget_usd is not None:
        parts.append(f"budget {usd(data.batch.budget_usd)}")
    if data.unpriced_jobs:
        parts.append(f"{data.unpriced_jobs} jobs have no price")
    return "; ".join(parts)


def render_text(data: ReportData, *, width: int = 100) -> str:
    """The terminal report: states, per-model figures, cost, failures and what to do."""
    b = data.batch
    out = [f"batchvid report: {plain(b.name)}", ""]
    facts = [
        ("manifest", f"{plain(b.manifest_path)} (fingerprint {b.manifest_sha256[:12]})"),
        ("endpoint", plain(b.endpoint) or "— (not run yet)"),
        ("videos", plain(b.output_dir)),
        ("last change", data.last_change_utc or "—"),
        ("generated", data.generated_utc),
    ]
    out.extend(f"{k:<12}{v}" for k, v in facts)
    out += ["", state_summary(data)]
    if not data.jobs:
        return "\n".join(out) + "\n"
    out.append("")
    headers = (*MODEL_HEADERS, *(["cost"] if data.priced else []))
    out.extend(_table(headers, _model_rows(data)))
    out.append("")
    out.append(f"output seconds {data.output_seconds} rendered of {data.planned_seconds} planned")
    cost = _cost_line(data)
    if cost:
        out.append(cost)
    if data.normalised:
        n = len(data.normalised)
        videos = f"{n} videos differ" if n != 1 else "1 video differs"
        out += ["", f"normalised by the API: {videos} from the request"]
        out += [f"  {clip(line, width - 2)}" for line in normalised_lines(data)]
    retried = retry_summary(data)
    if retried:
        out.append(f"retries: {retried}")
        for extra in data.extras[:FAILURE_GROUPS_SHOWN]:
            where = plain(extra.file_path) if extra.file_path else extra.state.value
            out.append(f"  {job_label(extra)}: task {extra.task_id}, {clip(where, width - 40)}")
    if data.failures:
        failed = sum(g.count for g in data.failures)
        out += ["", f"failures: {failed} job{'s' if failed != 1 else ''}, by reason"]
        for g in data.failures[:FAILURE_GROUPS_SHOWN]:
            out.append(f"  {g.count:>5} × {g.state.value:<8} {clip(plain(g.reason), width - 20)}")
            out.append(f"          e.g. {_examples(g.examples, g.count)}")
        rest = data.failures[FAILURE_GROUPS_SHOWN:]
        if rest:
            out.append(
                f"  … {sum(g.count for g in rest)} more jobs for {len(rest)} more reasons"
                " (--format csv lists every job)"
            )
    for a in advice(data):
        out += ["", f"{a.step.title} ({len(a.jobs)}): {a.step.why}"]
        shown = a.jobs[:EXAMPLES_PER_GROUP]
        if a.jobs[0].state in (S.IN_DOUBT, S.STALLED):  # one line each, with what we know
            for job in shown:
                detail = plain(job.error_message or "")
                if job.task_id:  # in doubt with a task id cannot happen; stalled: why
                    detail = f"task {job.task_id}" + (f": {detail}" if detail else "")
                out.append(f"  {job_label(job)}: {clip(detail, width - 10)}")
            if len(a.jobs) > len(shown):
                out.append(f"  … {len(a.jobs) - len(shown)} more")
        elif a.jobs[0].state not in FAILED_STATES:  # failures are listed by reason above
            out.append(f"  {_examples(shown, len(a.jobs))}")
        out.append(f"  → {a.step.command}")
    return "\n".join(out) + "\n"


# -- csv and json -------------------------------------------------------------------


def render_csv(data: ReportData) -> str:
    """One row per job, then one per extra take: :data:`CSV_COLUMNS`, then ``axis.<name>``
    per template variable."""
    extra = template_axes(data.jobs)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # RFC 4180: a CR in a cell is quoted
    writer.writerow([*CSV_COLUMNS, *(f"axis.{name}" for name in extra)])
    refs, retries = CSV_COLUMNS.index("references"), CSV_COLUMNS.index("auto_retries")
    for job in (*data.jobs, *data.extras):
        values = list(job_values(job, data.render_time(job)))
        values[refs] = ";".join(values[refs])
        values[retries] = ";".join(f"{k}={n}" for k, n in values[retries].items())
        audio = CSV_COLUMNS.index("has_audio")
        values[audio] = "" if values[audio] is None else str(values[audio]).lower()
        if extra:
            axes = dict(job.axes)
            values += [axes.get(name, "") for name in extra]
        writer.writerow([inert(v) for v in values])  # None is written as an empty field
    return buf.getvalue()


#: What makes a spreadsheet read a cell as a formula (OWASP's list).
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def inert(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (``=HYPERLINK(...)`` in a prompt,
    ``+cmd|...`` in an API's error) made plain text by a leading ``'`` (OWASP's rule);
    numbers and other text as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def render_json(data: ReportData) -> str:
    """A JSON array with one object per job, then per extra take (:func:`job_record`),
    one object per line."""
    if not data.jobs:
        return "[]\n"
    encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder, not one per job
    lines = (encode(job_record(j, data.render_time(j))) for j in (*data.jobs, *data.extras))
    return "[\n" + ",\n".join(lines) + "\n]\n"


# -- markdown -------------------------------------------------------------------------


def md(text: str | None) -> str:
    """User text for Markdown: one line, every character Markdown could act on escaped."""
    return _MD_SPECIAL.sub(r"\\\1", plain(text))


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = ["---", *("---:" for _ in headers[1:])]
    return [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def render_markdown(data: ReportData) -> str:
    """A summary table and a failure list that paste cleanly into an issue or a chat."""
    b = data.batch
    out = [f"## batchvid report: {md(b.name)}", ""]
    out.append(f"**{md(state_summary(data))}**")
    out.append("")
    facts = [f"manifest `{_code(b.manifest_path)}`", f"generated {data.generated_utc}"]
    if b.endpoint:
        facts.insert(1, f"endpoint `{_code(b.endpoint)}`")
    out += [" · ".join(facts), ""]
    if not data.jobs:
        return "\n".join(out)
    out.extend(
        _md_table(
            ("state", "jobs"),
            [(s.value.replace("_", " "), str(n)) for s, n in data.counts.items() if n],
        )
    )
    out.append("")
    headers = (*MODEL_HEADERS, *(["cost"] if data.priced else []))
    model_rows = [[md(r[0]), *r[1:]] for r in _model_rows(data)]
    out.extend(_md_table(headers, model_rows))
    out += ["", f"Output seconds: {data.output_seconds} rendered of {data.planned_seconds}."]
    cost = _cost_line(data)
    if cost:
        out.append(cost[0].upper() + cost[1:] + ".")
    retried = retry_summary(data)
    if retried:
        out.append(f"Retries: {md(retried)}.")
    if data.normalised:
        out += ["", "### Normalised by the API", ""]
        out.extend(f"- {md(line)}" for line in normalised_lines(data))
    if data.failures:
        out += ["", "### Failures", ""]
        for g in data.failures[:FAILURE_GROUPS_SHOWN]:
            out.append(
                f"- **{g.count}× {g.state.value}**: {md(clip(plain(g.reason), 300))}"
                f" (e.g. {md(_examples(g.examples, g.count))})"
            )
        rest = data.failures[FAILURE_GROUPS_SHOWN:]
        if rest:
            out.append(f"- … {sum(g.count for g in rest)} more jobs, {len(rest)} more reasons")
    steps = advice(data)
    if steps:
        out += ["", "### What to do", ""]
        out.extend(
            f"- **{a.step.title}** ({len(a.jobs)}): {md(a.step.why)}. {_md_command(a.step.command)}"
            for a in steps
        )
    out.append("")
    return "\n".join(out)


def _code(text: str) -> str:
    """Text for inside a one-backtick code span (which cannot hold a backtick)."""
    return plain(text).replace("`", "'")


def _md_command(sentence: str) -> str:
    """Advice with its `command` kept as code and the rest (our own words) escaped."""
    parts = sentence.split("`")
    return "".join(
        f"`{_code(p)}`" if i % 2 else _MD_SPECIAL.sub(r"\\\1", p) for i, p in enumerate(parts)
    )
