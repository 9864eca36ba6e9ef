"""The HTML report: a self-contained gallery laid out on the manifest's matrix.

:func:`gallery_layout` (pure) decides the grid: one row per prompt and per
combination of the template variables that vary (``style``), one column per
combination of the API settings that vary (``model`` × ``size``), the takes side
by side in a cell.  With no varying API setting the template variables become
the columns instead.  Jobs recorded without axes (ledgers from before m002, or
manifests without a matrix) are laid out on their ``model`` and ``size``.

:func:`render_html` writes one file with inline CSS and no script at all: the
state filter is radio buttons and CSS.  Videos are ``<video controls
preload="metadata">`` linked by a relative, URL-quoted path from the report's
own folder; nothing is fetched from the network (a Content-Security-Policy
says so too).  Every piece of user text goes through :func:`html.escape`.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit

from ..catalogue import API_FIELDS
from ..ledger.rows import JobRow
from ..states import RENDERED_STATES, JobState
from .data import (
    MODEL_HEADERS,
    ReportData,
    advice,
    job_cost,
    job_label,
    rate,
    retry_summary,
    secs,
    state_summary,
    usd,
)

__all__ = ["PRELOAD_LIMIT", "GalleryRow", "Layout", "gallery_layout", "job_axes", "render_html"]

S = JobState
#: Past this many videos the gallery stops asking for each one's first frame up front.
PRELOAD_LIMIT: Final = 400
_RATIO: Final = re.compile(r"^([1-9]\d{0,4})[:x]([1-9]\d{0,4})$")


def job_axes(job: JobRow) -> tuple[tuple[str, str], ...]:
    """The matrix values that made ``job``; ``model`` and ``size`` when none were recorded."""
    return job.axes or (("model", job.model), ("size", job.size))


def prompt_template(job: JobRow, axes: Iterable[tuple[str, str]]) -> str:
    """The job's prompt with its template variables' values put back as ``{name}``."""
    text = job.prompt
    variables = [(n, v) for n, v in axes if n not in API_FIELDS and v]
    for name, value in sorted(variables, key=lambda a: -len(a[1])):  # longest first
        text = text.replace(value, "{" + name + "}")
    return text


@dataclass(frozen=True, slots=True)
class GalleryRow:
    """One row of the grid: a prompt, the row-axis values, and a cell per column."""

    prompt_id: str | None
    template: str
    values: tuple[str, ...]
    cells: tuple[tuple[JobRow, ...], ...]


@dataclass(frozen=True, slots=True)
class Layout:
    """The grid: column axes and their value combinations, row axes, and the rows."""

    column_axes: tuple[str, ...]
    columns: tuple[tuple[str, ...], ...]
    row_axes: tuple[str, ...]
    rows: tuple[GalleryRow, ...]


def gallery_layout(jobs: Sequence[JobRow]) -> Layout:
    """Lay ``jobs`` (in index order) out as prompt rows × varying-setting columns."""
    axes_of = [dict(job_axes(j)) for j in jobs]
    order: dict[str, dict[str, int]] = {}  # axis -> value -> first-seen rank
    for axes in axes_of:
        for name, value in axes.items():
            order.setdefault(name, {}).setdefault(value, len(order[name]))
    for name, values in order.items():  # a job without an axis another job has: ""
        if any(name not in axes for axes in axes_of):
            values.setdefault("", len(values))
    varying = [n for n, values in order.items() if len(values) > 1]
    cols = tuple(n for n in varying if n in API_FIELDS)
    rows = tuple(n for n in varying if n not in API_FIELDS)
    if not cols:
        cols, rows = rows, ()

    def rank(names: tuple[str, ...], values: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(order[n][v] for n, v in zip(names, values, strict=True))

    groups: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], list[JobRow]]] = {}
    labels: dict[str, tuple[str | None, str]] = {}
    columns: set[tuple[str, ...]] = set()
    for job, axes in zip(jobs, axes_of, strict=True):
        template = prompt_template(job, axes.items())
        prompt = f"id:{job.prompt_id}" if job.prompt_id else f"text:{template}"
        labels.setdefault(prompt, (job.prompt_id, template))
        col = tuple(axes.get(n, "") for n in cols)
        row = tuple(axes.get(n, "") for n in rows)
        columns.add(col)
        groups.setdefault((prompt, row), defaultdict(list))[col].append(job)
    prompt_rank = {p: i for i, p in enumerate(dict.fromkeys(p for p, _ in groups))}
    column_list = sorted(columns, key=lambda c: rank(cols, c))
    ordered = sorted(groups, key=lambda k: (prompt_rank[k[0]], rank(rows, k[1])))
    return Layout(
        column_axes=cols,
        columns=tuple(column_list),
        row_axes=rows,
        rows=tuple(
            GalleryRow(
                prompt_id=labels[prompt][0],
                template=labels[prompt][1],
                values=row,
                cells=tuple(
                    tuple(sorted(groups[prompt, row].get(c, []), key=lambda j: (j.take, j.idx)))
                    for c in column_list
                ),
            )
            for prompt, row in ordered
        ),
    )


# -- html -------------------------------------------------------------------------------


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _aspect(size: str) -> str:
    """CSS aspect-ratio for a size (``16:9``, ``1280x720``); only digits reach the page."""
    found = _RATIO.match(size)
    return f"{found.group(1)}/{found.group(2)}" if found else "16/9"


@dataclass(frozen=True, slots=True)
class _Where:
    """How the page reaches a video or poster: relative to the page (``html_dir``; a
    relative ledger path from ``base``), or for one in a store its presigned link."""

    html_dir: str
    base: Path
    links: Mapping[str, str]

    def src(self, file_path: str) -> tuple[str, bool]:
        """The ``src`` for a downloaded file or object, and whether it is there."""
        if file_path in self.links:
            return self.links[file_path], True
        if _URL.match(file_path):  # a store's object no link was made for
            return "", False
        target = Path(file_path)
        if not target.is_absolute():
            target = self.base / target
        absolute = os.path.abspath(target)
        try:
            rel = os.path.relpath(absolute, self.html_dir)
        except ValueError:  # another drive (Windows): no relative path exists
            return Path(absolute).as_uri(), os.path.isfile(absolute)
        return quote(rel.replace(os.sep, "/"), safe="/"), os.path.isfile(absolute)

    def origins(self) -> str:
        """The origins of the links, for the page's Content-Security-Policy."""
        found = sorted({_origin(url) for url in self.links.values()})
        return "".join(f" {origin}" for origin in found if origin)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") else ""


_CSS: Final = """
:root { --h: 120px; color-scheme: light dark; font: 14px/1.4 system-ui, sans-serif; }
body { margin: 0 1.2rem 2rem; }
h1 { font-size: 1.35rem; margin: 1rem 0 .3rem; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 .4rem; }
.facts { color: GrayText; margin: 0 0 .6rem; overflow-wrap: anywhere; }
table { border-collapse: collapse; }
.figures td, .figures th { padding: .2rem .6rem; text-align: right;
  border-bottom: 1px solid #8884; }
.figures td:first-child, .figures th:first-child { text-align: left; }
.grid { overflow-x: auto; margin-top: .6rem; }
.grid th, .grid td { border: 1px solid #8886; padding: .35rem; vertical-align: top; }
.grid thead th { position: sticky; top: 0; background: Canvas; z-index: 1; }
.grid th.prompt { text-align: left; min-width: 12rem; max-width: 20rem; font-weight: normal; }
.grid th.prompt b { display: block; }
.grid th.value { text-align: left; white-space: nowrap; }
.cell { display: flex; flex-wrap: wrap; gap: .4rem; }
.job { margin: 0; display: flex; flex-direction: column; align-items: center;
  min-width: 7.5rem; font-size: 12px; }
.job video, .job .ph { height: var(--h); max-width: 100%; background: #000; display: block; }
.job .ph { background: #8882; color: CanvasText; display: flex; align-items: center;
  justify-content: center; padding: .3rem; box-sizing: border-box; text-align: center;
  overflow: hidden; min-width: 7.5rem; overflow-wrap: anywhere; }
.job figcaption { text-align: center; }
.job .meta { display: block; white-space: nowrap; }
.badge { display: inline-block; padding: 0 .35rem; border-radius: .6rem; color: #fff;
  background: #777; font-size: 11px; }
.s-downloaded .badge, .badge.s-downloaded { background: #2a7d2e; }
.s-completed .badge, .badge.s-completed { background: #3b7bbf; }
.s-failed .badge, .badge.s-failed, .s-rejected .badge, .badge.s-rejected { background: #b3261e; }
.s-in_doubt .badge, .badge.s-in_doubt, .s-stalled .badge, .badge.s-stalled { background: #a15c00; }
.reason { color: #b3261e; }
.flag { display: block; color: #a15c00; white-space: normal; max-width: 14rem; }
.filter { position: absolute; opacity: 0; pointer-events: none; }
nav.states { margin: .6rem 0; display: flex; flex-wrap: wrap; gap: .3rem; }
nav.states label { border: 1px solid #8888; border-radius: 1rem; padding: .1rem .7rem;
  cursor: pointer; user-select: none; }
ul.failures li { margin: .2rem 0; overflow-wrap: anywhere; }
code { font-size: 12px; }
"""

_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; media-src 'self' file: blob:{origins}; "
    "img-src 'self' file: data:{origins}; form-action 'none'; base-uri 'none'"
)
_URL: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _filter_css(states: Sequence[JobState]) -> str:
    rules = [
        f"#show-{s.value}:checked ~ main .job:not(.s-{s.value}) {{ display: none; }}"
        for s in states
    ]
    rules += [
        f'#show-{v}:checked ~ nav label[for="show-{v}"] '
        "{ background: CanvasText; color: Canvas; }"
        for v in ["all", *(s.value for s in states)]
    ]
    return "\n".join(rules)


def _summary(data: ReportData) -> list[str]:
    out = ['<table class="figures"><thead><tr>']
    headers = [*MODEL_HEADERS, *(["cost"] if data.priced else [])]
    out.append("".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead><tbody>")
    for m in data.models:
        cells = [
            m.model,
            m.jobs,
            m.rendered,
            m.failed,
            rate(m.success_rate),
            secs(m.render_p50),
            secs(m.render_p95),
            m.output_seconds,
            *([usd(m.cost_usd)] if data.priced else []),
        ]
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    line = (
        f"output seconds {data.output_seconds} rendered of {data.planned_seconds} planned · "
        f"render time p50 {secs(data.render_p50)}, p95 {secs(data.render_p95)}"
    )
    if data.priced:
        line += f" · estimated cost {usd(data.cost_usd)} committed"
        if data.batch.budget_usd is not None:
            line += f" of budget {usd(data.batch.budget_usd)}"
    out.append(f'<p class="facts">{_e(line)}</p>')
    retried = retry_summary(data)
    if retried:
        out.append(f'<p class="facts">retries: {_e(retried)}</p>')
    return out


def _failures(data: ReportData) -> list[str]:
    out: list[str] = []
    if data.failures:
        out.append('<h2>Failures by reason</h2><ul class="failures">')
        for g in data.failures:
            links = ", ".join(f'<a href="#job-{j.id}">{_e(job_label(j))}</a>' for j in g.examples)
            more = f", … {g.count - len(g.examples)} more" if g.count > len(g.examples) else ""
            out.append(
                f'<li><span class="badge s-{g.state.value}">{g.count}× {_e(g.state.value)}</span>'
                f' <span class="reason">{_e(g.reason)}</span> (e.g. {links}{more})</li>'
            )
        out.append("</ul>")
    steps = advice(data)
    if steps:
        out.append('<h2>What to do</h2><ul class="failures">')
        for a in steps:
            parts = a.step.command.split("`")
            command = "".join(
                f"<code>{_e(p)}</code>" if i % 2 else _e(p) for i, p in enumerate(parts)
            )
            out.append(
                f"<li><b>{_e(a.step.title)}</b> ({len(a.jobs)}): {_e(a.step.why)}. {command}</li>"
            )
        out.append("</ul>")
    return out


def _header_rows(layout: Layout, corner: int) -> list[str]:
    """One header row per column axis; equal neighbours merge (``model`` spans its sizes)."""
    rows: list[str] = []
    depth = max(1, len(layout.column_axes))
    for level in range(depth):
        cells = []
        if level == 0:
            corner_labels = ["prompt", *layout.row_axes][:corner]
            cells += [f'<th rowspan="{depth}">{_e(label)}</th>' for label in corner_labels]
        if not layout.column_axes:
            cells.append("<th>videos</th>")
        else:
            spans: list[tuple[tuple[str, ...], int]] = []
            for column in layout.columns:
                prefix = column[: level + 1]
                if spans and spans[-1][0] == prefix:
                    spans[-1] = (prefix, spans[-1][1] + 1)
                else:
                    spans.append((prefix, 1))
            name = layout.column_axes[level]
            cells += [
                f'<th colspan="{n}" title="{_e(name)}">{_e(p[-1] or "—")}</th>' for p, n in spans
            ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return rows


def _figure(job: JobRow, took: float | None, where: _Where, preload: str) -> str:
    state = job.state.value
    bits = [f"#{job.idx}", f"take {job.take}"]
    if job.extra_of is not None:
        bits.append(f"attempt {job.attempts}, extra take")
    elif job.attempts > 1:
        bits.append(f"attempt {job.attempts}")
    if took is not None:
        bits.append(f"{took:.1f} s" if took < 10 else f"{took:,.0f} s")
    cost = job_cost(job) if job.extra_of is None else None  # an extra take's is its job's
    if cost is not None:
        bits.append(usd(cost))
    aspect = _aspect(job.size)
    media: str
    if job.state is S.DOWNLOADED and job.file_path:
        src, exists = where.src(job.file_path)
        if exists:
            poster, load = "", preload
            if job.poster_path:
                image, found = where.src(job.poster_path)
                if found:  # a picture at once; the video loads when played
                    poster, load = f' poster="{_e(image)}"', "none"
            media = (
                f'<video src="{_e(src)}"{poster} controls preload="{load}" muted playsinline'
                f' style="aspect-ratio:{aspect}"></video>'
            )
        else:
            media = (
                f'<div class="ph" style="aspect-ratio:{aspect}">'
                f'<span class="reason">file missing: {_e(job.file_path)}</span></div>'
            )
    else:
        reason = job.error_message if job.state not in RENDERED_STATES else None
        if job.error_code and reason:
            reason = f"{job.error_code}: {reason}"
        text = f'<span class="reason">{_e(reason)}</span>' if reason else _e(state)
        media = f'<div class="ph" style="aspect-ratio:{aspect}">{text}</div>'
    normalised = job.normalised
    flag = f'<span class="flag">{_e(normalised)}</span>' if normalised else ""
    title = f"#{job.idx} {job.prompt}"
    return (
        f'<figure class="job s-{state}" id="job-{job.id}" title="{_e(title)}">{media}'
        f'<figcaption><span class="badge">{_e(state.replace("_", " "))}</span>'
        f'<span class="meta">{_e(" · ".join(bits))}</span>{flag}</figcaption></figure>'
    )


def _grid(data: ReportData, where: _Where) -> list[str]:
    layout = gallery_layout(data.jobs)
    extras = data.extras_of()
    videos = sum(1 for j in (*data.jobs, *data.extras) if j.state is S.DOWNLOADED)
    preload = "metadata" if videos <= PRELOAD_LIMIT else "none"
    corner = 1 + len(layout.row_axes)
    out = ['<div class="grid"><table><thead>', *_header_rows(layout, corner), "</thead><tbody>"]
    previous: str | None = None
    for index, row in enumerate(layout.rows):
        cells = []
        prompt = _prompt(row)
        if prompt != previous:
            span = 1
            while index + span < len(layout.rows) and _prompt(layout.rows[index + span]) == prompt:
                span += 1
            label = f"<b>{_e(row.prompt_id)}</b>" if row.prompt_id else ""
            cells.append(f'<th class="prompt" rowspan="{span}">{label}{_e(row.template)}</th>')
            previous = prompt
        cells += [
            f'<th class="value" title="{_e(n)}">{_e(v or "—")}</th>'
            for n, v in zip(layout.row_axes, row.values, strict=True)
        ]
        cells += [
            '<td><div class="cell">'
            + "".join(
                _figure(j, data.render_time(j), where, preload)
                for job in jobs
                for j in (job, *extras.get(job.id, ()))
            )
            + "</div></td>"
            for jobs in row.cells
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return out


def _prompt(row: GalleryRow) -> str:
    return f"{row.prompt_id}\x00{row.template}"


def render_html(
    data: ReportData,
    html_path: str | Path,
    *,
    base: str | Path | None = None,
    links: Mapping[str, str] | None = None,
) -> str:
    """The gallery page, for writing at ``html_path`` (videos are linked relative to it).

    Relative ``file_path`` values in the ledger are taken from ``base`` (default:
    the current directory, where ``batchvid run`` wrote them from).  Videos and
    posters kept in a store (``s3://`` URIs) are linked by ``links``: each URI's
    presigned URL (a URI without one shows as missing).
    """
    root = Path(base) if base is not None else Path.cwd()
    where = _Where(os.path.abspath(Path(html_path).parent), root, links or {})
    present = [s for s in JobState if data.counts[s]]
    b = data.batch
    facts = [f"manifest {b.manifest_path}", f"videos {b.output_dir}"]
    if b.endpoint:
        facts.append(f"endpoint {b.endpoint}")
    facts += [f"last change {data.last_change_utc or '—'}", f"generated {data.generated_utc}"]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" '
        f'content="{_e(_CSP.format(origins=where.origins()))}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>batchvid report: {_e(b.name)}</title>",
        f"<style>{_CSS}\n{_filter_css(present)}</style>",
        "</head><body>",
        '<input type="radio" name="show" class="filter" id="show-all" checked>',
        *(f'<input type="radio" name="show" class="filter" id="show-{s.value}">' for s in present),
        f"<header><h1>batchvid report: {_e(b.name)}</h1>",
        f'<p class="facts">{" · ".join(_e(f) for f in facts)}</p>',
        f"<p><b>{_e(state_summary(data))}</b></p>",
        *(_summary(data) if data.jobs else []),
        "</header>",
        f'<p class="facts">Each video: state · job number · take · render time'
        f"{' · cost' if data.priced else ''}. Show only the jobs in one state:</p>",
        '<nav class="states" aria-label="show jobs by state">',
        f'<label for="show-all">all {data.total}</label>',
        *(
            f'<label for="show-{s.value}" class="s-{s.value}">'
            f"{_e(s.value.replace('_', ' '))} {data.counts[s]}</label>"
            for s in present
        ),
        "</nav>",
        "<main>",
        *(_grid(data, where) if data.jobs else ["<p>This batch has no jobs.</p>"]),
        *_failures(data),
        "</main></body></html>",
    ]
    return "\n".join(out) + "\n"
