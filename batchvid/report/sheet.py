"""The contact sheet: one picture of a whole batch, to paste into an issue or a chat.

:func:`render_sheet` lays the batch out as the gallery does
(:func:`batchvid.report.gallery.gallery_layout`: a row per prompt and row-axis
value, a column per combination of the settings that vary) and draws each job's
poster in its cell, labelled ``#idx state``.  A job without a picture gets a grey
tile with its state; a failed one is outlined in red with its reason; a video the
API rendered at another size than asked carries an amber band saying so.
:func:`encode_sheet` turns it into JPEG or PNG bytes.  Nothing here writes a file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from ..catalogue import render_size
from ..ledger.rows import JobRow
from ..states import FAILED_STATES, JobState
from ..text import clip
from .data import ReportData, state_summary
from .gallery import gallery_layout

__all__ = [
    "MAX_GRID_WIDTH",
    "MAX_ROWS",
    "SHEET_FORMATS",
    "TILE_WIDTH",
    "SheetLayout",
    "encode_sheet",
    "render_sheet",
    "sheet_band",
    "sheet_format",
    "sheet_layout",
]

#: A tile's picture fits a box this wide (16:9, or square when a video is portrait).
TILE_WIDTH: Final = 192
#: File suffixes the sheet can be written as, and the Pillow format for each.
SHEET_FORMATS: Final = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}

#: A sheet shows at most this many rows and this wide a grid (JPEG stops at 65,535 px);
#: a footer says how many rows or columns were left out.
MAX_ROWS: Final = 150
MAX_GRID_WIDTH: Final = 30_000
_PAD: Final = 8
_LABEL_H: Final = 18
_TITLE_H: Final = 46
_HEADER_W: Final = 220
_BG: Final = (250, 250, 248)
_INK: Final = (30, 30, 30)
_MUTED: Final = (110, 110, 110)
_TILE_BG: Final = (215, 215, 212)
_FRAME: Final = (236, 236, 233)
_FAILED: Final = (200, 30, 30)
_FLAG: Final = (230, 150, 0)
_STATE_INK: Final = {
    JobState.DOWNLOADED: (20, 120, 50),
    JobState.COMPLETED: (20, 90, 160),
    JobState.IN_DOUBT: (180, 100, 0),
}


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own scalable font (no system fonts needed); a bitmap one without FreeType."""
    try:
        return ImageFont.load_default(size)
    except (ImportError, OSError, TypeError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _fit(text: str, width: int, size: int = 12) -> str:
    """``text`` clipped with an ellipsis to fit ``width`` pixels in the sheet's font."""
    font = _font(size)
    text = text[: width // 2]  # no glyph is narrower than 2 px: the rest never shows
    if font.getlength(text) <= width:
        return text
    fits, over = 0, len(text)  # the longest prefix that fits with its ellipsis, by halving
    while over - fits > 1:
        mid = (fits + over) // 2
        if font.getlength(text[:mid] + "…") <= width:
            fits = mid
        else:
            over = mid
    return text[:fits] + "…"


def _wrap(text: str, width: int, lines: int, size: int = 12) -> list[str]:
    """``text`` broken on spaces into at most ``lines`` lines of ``width`` pixels."""
    font = _font(size)
    out: list[str] = []
    words = text[: lines * width // 2].split()  # (what could ever show)
    while words and len(out) < lines:
        line = words.pop(0)
        while words and font.getlength(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        out.append(line)
    if words and out:
        out[-1] = _fit(out[-1] + " " + " ".join(words), width, size)
    return [_fit(line, width, size) for line in out]


@dataclass(frozen=True, slots=True)
class _Posters:
    """Where posters are: files (a relative ledger path from ``base``), or for videos in
    a store the posters' bytes, read from it beforehand (by URI)."""

    base: Path
    stored: Mapping[str, bytes]

    def open(self, poster: str) -> Image.Image:
        if poster in self.stored:
            return Image.open(io.BytesIO(self.stored[poster]))
        path = Path(poster)
        return Image.open(path if path.is_absolute() else self.base / path)


def _poster(job: JobRow, posters: _Posters, box: tuple[int, int]) -> Image.Image | None:
    """The job's poster scaled to fit ``box``, or ``None`` when it has none that opens."""
    if not job.poster_path:
        return None
    try:
        with posters.open(job.poster_path) as image:
            image.thumbnail(box)
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def _tile(
    sheet: Image.Image, job: JobRow, at: tuple[int, int], tile_h: int, posters: _Posters
) -> None:
    """Draw ``job``'s picture (or grey stand-in) and its label with its top-left at ``at``."""
    draw = ImageDraw.Draw(sheet)
    x, y = at
    box = (x, y, x + TILE_WIDTH - 1, y + tile_h - 1)
    picture = _poster(job, posters, (TILE_WIDTH, tile_h))
    draw.rectangle(box, fill=_TILE_BG if picture is None else _FRAME)
    if picture is not None:
        sheet.paste(
            picture,
            (x + (TILE_WIDTH - picture.width) // 2, y + (tile_h - picture.height) // 2),
        )
    else:
        why = job.state.value.replace("_", " ")
        if job.state in FAILED_STATES and job.error_code:
            why = f"{why}: {job.error_code}"
        for n, line in enumerate(_wrap(why, TILE_WIDTH - 12, 3)):
            draw.text((x + 6, y + 6 + 15 * n), line, fill=_INK, font=_font(12))
    if job.state in FAILED_STATES:
        draw.rectangle(box, outline=_FAILED, width=3)
        draw.line((box[0], box[1], box[2], box[3]), fill=_FAILED, width=2)
    band = sheet_band(job)
    if band is not None:
        draw.rectangle((x, box[3] - 16, box[2], box[3]), fill=_FLAG)
        draw.text((x + 4, box[3] - 15), _fit(band, TILE_WIDTH - 8, 11), fill=_INK, font=_font(11))
    label = f"#{job.idx} {job.state.value.replace('_', ' ')}"
    if job.extra_of is not None:
        label += " (extra take)"
    ink = _FAILED if job.state in FAILED_STATES else _STATE_INK.get(job.state, _MUTED)
    draw.text((x, box[3] + 3), _fit(label, TILE_WIDTH, 12), fill=ink, font=_font(12))


def sheet_band(job: JobRow) -> str | None:
    """What a tile's amber band says: how the API rendered otherwise than asked."""
    facts = job.facts
    if facts is None or not job.normalised:
        return None
    same_size = facts.size == render_size(job.model, job.size, job.resolution)
    if same_size and facts.duration_s is not None:
        return f"rendered {facts.duration_s:.1f} s, asked {job.seconds} s"
    return f"rendered {facts.size}"


def _tile_height(jobs: Sequence[JobRow]) -> int:
    """Tiles are 16:9 when every video is landscape, square when any is taller: a
    portrait poster is scaled into the square rather than every tile made tall."""
    tallest = TILE_WIDTH * 9 // 16
    for job in jobs:
        facts = job.facts
        if facts is not None and facts.width and facts.height:
            tallest = max(tallest, TILE_WIDTH * facts.height // facts.width)
    return min(tallest, TILE_WIDTH)


@dataclass(frozen=True, slots=True)
class SheetLayout:
    """Where everything goes on a sheet (pixels): its size, a tile per job, the labels."""

    width: int
    height: int
    tile_h: int
    #: Each job (extra takes beside theirs) and the top-left corner of its tile.
    tiles: tuple[tuple[JobRow, tuple[int, int]], ...]
    #: Column headings (``model: doubao-seedance-2-0``): text, top-left, width.
    headings: tuple[tuple[str, tuple[int, int], int], ...]
    #: Each row's prompt (and row-axis values), and where its label starts.
    rows: tuple[tuple[str, str, tuple[int, int]], ...]
    #: What did not fit (see :data:`MAX_ROWS`), said at the bottom; ``""``: everything did.
    footer: str = ""


def sheet_layout(data: ReportData) -> SheetLayout:
    """Lay ``data`` out as the gallery does: a row per prompt and row-axis value, a
    column per combination of the settings that vary, each job's tile in its cell."""
    layout = gallery_layout(data.jobs)
    extras = data.extras_of()
    per_cell = max(
        (len(jobs) + sum(len(extras.get(j.id, ())) for j in jobs)
         for row in layout.rows for jobs in row.cells),
        default=1,
    ) or 1  # fmt: skip
    cell_w = per_cell * (TILE_WIDTH + _PAD)
    columns = max(1, min(len(layout.columns), MAX_GRID_WIDTH // cell_w))
    shown = layout.rows[:MAX_ROWS]
    tile_h = _tile_height([*data.jobs, *data.extras])
    row_h = tile_h + _LABEL_H + _PAD
    left, top = _PAD + _HEADER_W, _TITLE_H + 18 * max(1, len(layout.column_axes)) + _PAD
    headings = tuple(
        (f"{layout.column_axes[level]}: {value or '—'}", (left + c * cell_w, _TITLE_H + 18 * level),
         cell_w - _PAD)
        for c, values in enumerate(layout.columns[:columns])
        for level, value in enumerate(values)
    )  # fmt: skip
    rows = tuple(
        (
            (f"{row.prompt_id}: " if row.prompt_id else "") + row.template,
            " · ".join(v or "—" for v in row.values),
            (_PAD, top + r * row_h),
        )
        for r, row in enumerate(shown)
    )
    tiles = tuple(
        (j, (left + c * cell_w + k * (TILE_WIDTH + _PAD), top + r * row_h))
        for r, row in enumerate(shown)
        for c, jobs in enumerate(row.cells[:columns])
        for k, j in enumerate(j for job in jobs for j in (job, *extras.get(job.id, ())))
    )
    left_out = [
        f"{n} more {what}"
        for n, what in ((len(layout.rows) - len(shown), "rows"),
                        (len(layout.columns) - columns, "columns"))
        if n
    ]  # fmt: skip
    footer = f"… {' and '.join(left_out)}: --format html shows every job" if left_out else ""
    width = max(left + columns * cell_w + _PAD, 480)
    height = top + len(shown) * row_h + _PAD + (_LABEL_H if footer else 0)
    return SheetLayout(width, height, tile_h, tiles, headings, rows, footer)


def render_sheet(
    data: ReportData,
    *,
    base: str | Path | None = None,
    stored: Mapping[str, bytes] | None = None,
) -> Image.Image:
    """The contact sheet of ``data``: posters on the matrix, labelled, failures marked.

    Relative poster paths in the ledger are taken from ``base`` (default: the
    current directory, where ``batchvid run`` wrote them from); posters kept in a
    store come from ``stored`` (each ``s3://`` URI's bytes).
    """
    posters = _Posters(Path(base) if base is not None else Path.cwd(), stored or {})
    plan = sheet_layout(data)
    sheet = Image.new("RGB", (plan.width, plan.height), _BG)
    draw = ImageDraw.Draw(sheet)
    title = _fit(f"batchvid: {data.batch.name}", plan.width - 2 * _PAD, 18)
    draw.text((_PAD, 6), title, fill=_INK, font=_font(18))
    summary = _fit(clip(state_summary(data), 300), plan.width - 2 * _PAD)
    draw.text((_PAD, 28), summary, fill=_MUTED, font=_font(12))
    for text, at, width in plan.headings:
        draw.text(at, _fit(text, width), fill=_INK, font=_font(12))
    for prompt, setting, (x, y) in plan.rows:
        lines = _wrap(prompt, _HEADER_W - _PAD, 3 if setting else 4)
        for n, line in enumerate(lines):
            draw.text((x, y + 15 * n), line, fill=_INK, font=_font(12))
        if setting:
            at = (x, y + 15 * len(lines))
            draw.text(at, _fit(setting, _HEADER_W - _PAD), fill=_MUTED, font=_font(12))
    for job, at in plan.tiles:
        _tile(sheet, job, at, plan.tile_h, posters)
    if plan.footer:
        at = (_PAD, plan.height - _LABEL_H - 2)
        draw.text(at, _fit(plan.footer, plan.width - 2 * _PAD), fill=_MUTED, font=_font(12))
    return sheet


def sheet_format(path: str | Path) -> str:
    """The Pillow format to write ``path`` in, by its suffix; ``ValueError`` for others."""
    suffix = Path(path).suffix.lower()
    if suffix not in SHEET_FORMATS:
        raise ValueError(
            f"a contact sheet is written as {' or '.join(sorted(SHEET_FORMATS))}, not "
            f"{suffix or 'a file without a suffix'!r}: name the file sheet.jpg or sheet.png"
        )
    return SHEET_FORMATS[suffix]


def encode_sheet(sheet: Image.Image, fmt: str) -> bytes:
    """``sheet`` as the bytes of a ``JPEG`` or ``PNG`` file."""
    out = io.BytesIO()
    if fmt == "JPEG":
        sheet.save(out, "JPEG", quality=85, optimize=True)
    else:
        sheet.save(out, fmt, optimize=True)
    return out.getvalue()
