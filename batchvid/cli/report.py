"""``batchvid report``: a batch from the ledger as text, CSV, JSON, Markdown, HTML or a sheet.

The ledger is opened read-only, so a report can be taken while ``run`` is going.
Library errors (no ledger, no such batch) become a message and exit code 2 here,
so the command behaves the same inside the ``batchvid`` group or on its own.
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import anyio
import click

from ..errors import BatchvidError, OutputError
from ..ledger.store import Ledger
from ..ledger.target import LedgerTarget
from ..outputs import S3Outputs, output_target
from ..outputs.s3 import LINK_LIFETIME
from ..report.data import FORMATS, ReportData, load_report
from ..report.formats import render
from .common import Exit
from .ledger import ledger_option, ledger_target_of

__all__ = ["ReportUsageError", "report", "write_atomically"]

HTML_NAME = "report.html"
SHEET_NAME = "sheet.jpg"
#: Every ``--format``: the text ones, and the contact sheet (an image).
CHOICES = (*FORMATS, "sheet")


class ReportUsageError(click.ClickException):
    """The report cannot be made as asked (no ledger, no such batch, no jobs): exit 2."""

    exit_code = Exit.USAGE


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` via a temporary file and a rename:
    never half a file under the final name."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as an ordinary file, not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pick_batch(ledger: Ledger, batch: str | None) -> str:
    if batch is not None:
        return batch
    names = [b.name for b in ledger.reads.batches()]
    if not names:
        raise ReportUsageError(f"the ledger {ledger.where} has no batches yet")
    if len(names) > 1:
        listed = "\n".join(f"  {n}" for n in names)
        raise ReportUsageError(f"the ledger has {len(names)} batches; name one:\n{listed}")
    return names[0]


def _read(ledger_path: LedgerTarget, batch: str | None) -> ReportData:
    try:
        with Ledger(ledger_path, read_only=True) as ledger:
            data = load_report(ledger, _pick_batch(ledger, batch))
    except BatchvidError as exc:
        raise ReportUsageError(str(exc)) from exc
    if not data.jobs:
        raise ReportUsageError(f"batch {data.batch.name!r} has no jobs yet: nothing to report")
    return data


@click.command("report")
@click.argument("batch", required=False)
@ledger_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(CHOICES),
    default="text",
    show_default=True,
    help="text for the terminal; csv or json, one row per job; md to paste; "
    "html, a gallery of the videos; sheet, one picture of the batch (JPEG or PNG).",
)
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Write the report to FILE (atomically) instead of standard output; '-' is "
    f"standard output. HTML defaults to {HTML_NAME} and sheet to {SHEET_NAME} in the "
    "batch's video folder; a sheet is PNG when FILE ends in .png.",
)
def report(batch: str | None, ledger: str | None, fmt: str, output: str | None) -> None:
    """Report on BATCH from the ledger: what came out, what failed and why, what it cost.

    BATCH may be left out when the ledger holds a single batch. Reading is
    safe while a run is going on; nothing is sent and nothing is changed.

    \b
    text  states, per-model success rate and render time p50/p95, output
          seconds, estimated cost, failures by reason, and what to do next
    csv   one row per job (every field worth filtering on; stable columns)
    json  an array with one object per job
    md    a summary table and failure list for an issue or a chat
    html  a self-contained gallery laid out on the manifest's matrix: each
          cell plays the downloaded video (linked by relative path; videos
          in an s3:// store by presigned links that last 7 days), showing
          its poster until played
    sheet a contact sheet: every job's poster on the matrix, labelled with
          its job number and state, failures outlined in red, videos the
          API rendered at another size than asked marked in amber (posters
          in a store are read from it)

    html and sheet go beside the videos by default (report.html, sheet.jpg);
    for videos in a store, to BATCH-report.html and BATCH-sheet.jpg here.

    Exit 0 when the report is made; 2 when there is no ledger, no such batch,
    or the batch has no jobs.
    """
    data = _read(ledger_target_of(ledger), batch)
    store = _store_of(data) if fmt in ("html", "sheet") else None  # the others: ledger only
    if fmt == "sheet":
        _write_sheet(data, output, store)
        return
    if output is None and fmt == "html":
        output = str(_beside_videos(data, store, HTML_NAME))
    links = None
    if store is not None and fmt == "html":
        try:
            links = store.presigned(_stored_uris(data))
        except OutputError as exc:  # no credentials to sign with, say
            raise ReportUsageError(str(exc)) from exc
    if output is None or output == "-":
        click.echo(render(data, fmt, links=links), nl=False)
        return
    path = Path(output)
    try:
        write_atomically(path, render(data, fmt, html_path=path, links=links))
    except OSError as exc:
        raise ReportUsageError(f"cannot write {path}: {exc}") from exc
    click.echo(f"wrote {path} ({data.total} jobs, {fmt})", err=True)
    if links:
        until = (datetime.now(UTC) + LINK_LIFETIME).strftime("%Y-%m-%d %H:%M UTC")
        click.echo(
            f"its {len(links)} links to {store.target.uri if store else ''} are presigned: "
            f"they work until {until} (7 days); make the report again for fresh ones",
            err=True,
        )


def _store_of(data: ReportData) -> S3Outputs | None:
    """The store the batch's videos went to, or ``None`` (a folder)."""
    try:
        target = output_target(data.batch.output_dir)
        return S3Outputs(target) if target.is_store else None
    except OutputError as exc:
        raise ReportUsageError(str(exc)) from exc


def _beside_videos(data: ReportData, store: S3Outputs | None, name: str) -> Path:
    """Where a report file goes by default: in the videos' folder, or (videos in a
    store) ``BATCH-NAME`` here."""
    if store is None:
        return Path(data.batch.output_dir) / name
    return Path(f"{data.batch.name}-{name}")


def _stored_uris(data: ReportData, *, videos: bool = True) -> list[str]:
    """The ``s3://`` URIs of the batch's videos (if ``videos``) and posters."""
    found = []
    for job in (*data.jobs, *data.extras):
        for path in (job.file_path if videos else None, job.poster_path):
            if path and path.startswith("s3://"):
                found.append(path)
    return found


def _write_sheet(data: ReportData, output: str | None, store: S3Outputs | None) -> None:
    """Draw the contact sheet and write it to ``output`` (``-``: standard output, as JPEG)."""
    from ..report.sheet import encode_sheet, render_sheet, sheet_format  # Pillow: only here

    to_stdout = output == "-"
    if to_stdout and sys.stdout.isatty():
        raise ReportUsageError("a contact sheet is an image: give -o sheet.jpg, or pipe it")
    path = Path(output or "-") if output else _beside_videos(data, store, SHEET_NAME)
    stored = None
    if store is not None:  # the posters, read from the store
        stored = anyio.run(store.read_all, _stored_uris(data, videos=False))
    try:
        fmt = "JPEG" if to_stdout else sheet_format(path)
        image = encode_sheet(render_sheet(data, stored=stored), fmt)
    except (ValueError, OSError) as exc:  # a suffix we cannot write, an image too big
        raise ReportUsageError(f"cannot make the contact sheet: {exc}") from exc
    if to_stdout:
        sys.stdout.buffer.write(image)
        sys.stdout.flush()
        return
    try:
        write_atomically(path, image)
    except OSError as exc:
        raise ReportUsageError(f"cannot write {path}: {exc}") from exc
    click.echo(f"wrote {path} ({data.total} jobs, contact sheet)", err=True)
