"""Prompt files: prompts kept in a spreadsheet, JSON Lines or plain text, one per row.

``prompts: [{file: prompts.csv}, "one more inline prompt"]`` (or
``prompts: {file: prompts.csv}``) reads every row of the file as a prompt.
:func:`read_rows` turns the file's bytes into located rows of text cells, with
every problem of the file itself (size, encoding, quoting, header, cell counts)
reported at ``FILE:LINE``; :func:`row_entries` turns the rows into prompt entries,
checking each cell as the manifest's own fields are checked.

- **CSV** (``.csv``) and **TSV** (``.tsv``, ``.tab``) with a header row;
- **JSON Lines** (``.jsonl``, ``.ndjson``): one object per line;
- **text** (``.txt``): one prompt per line, ``#`` starts a comment line.

Columns (keys) named like prompt fields set them: ``id``, ``prompt``, ``model``,
``seconds``, ``size``, ``resolution``, ``input_reference`` (several separated
by ``;``, paths relative to the manifest) and ``repeat``.  Any other column is a
template variable for its row (``{style}`` in the row's prompt).  An empty cell
sets nothing.  Files are UTF-8, with or without a byte-order mark.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ..errors import Issue
from .model import MAX_REPEAT, SETTING_KEYS, VAR_NAME, PromptEntry, Setting

if TYPE_CHECKING:
    from .reader import FieldReader

__all__ = [
    "FORMATS",
    "MAX_PROMPT_FILE_BYTES",
    "ROW_FIELDS",
    "PromptFile",
    "Row",
    "read_rows",
    "row_entries",
]

#: File suffix -> format.
FORMATS: Final = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "text",
}
#: Prompt files larger than this are refused before reading (a million short rows).
MAX_PROMPT_FILE_BYTES: Final = 32 * 1024 * 1024
#: Columns that set a prompt's fields; any other column is a template variable.
ROW_FIELDS: Final = ("id", "prompt", *SETTING_KEYS, "repeat")
#: Problems reported per file before the rest are only counted.
MAX_ISSUES: Final = 200
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")
_PROMPT_ONLY: Final = ("prompt",)


class Row(NamedTuple):
    """One row of a prompt file: its first line, its columns and their values (a CSV's
    rows share one ``columns`` tuple).

    Values are text (CSV, TSV, text files) or JSON scalars and lists (JSON Lines).
    """

    line: int
    columns: tuple[str, ...]
    values: Sequence[Any]

    @property
    def cells(self) -> dict[str, Any]:
        """Column -> value."""
        return dict(zip(self.columns, self.values, strict=True))


class _Problems:
    """Issues of one file, at most :data:`MAX_ISSUES` of them (then a count)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.issues: list[Issue] = []
        self.dropped = 0

    def add(self, line: int, path: str, message: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(Issue(self.name, line, path, message))
        else:
            self.dropped += 1

    def done(self) -> list[Issue]:
        if self.dropped:
            more = f"... and {self.dropped} more problems in this file"
            self.issues.append(Issue(self.name, 0, "", more))
        return self.issues


class PromptFile(NamedTuple):
    """A prompt file read: its rows, every problem found, and the sha256 of its bytes
    (``""`` when it could not be read)."""

    rows: list[Row]
    issues: list[Issue]
    sha256: str


def read_rows(path: Path, name: str) -> PromptFile:
    """The rows of the prompt file at ``path`` (shown as ``name`` in messages)."""
    problems = _Problems(name)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        problems.add(0, "", f"not a prompt file format this reads (by its suffix: {known})")
        return PromptFile([], problems.done(), "")
    data = _bytes_of(path, problems)
    text = None if data is None else _text_of(data, problems)
    if data is None or text is None:
        return PromptFile([], problems.done(), "")
    if fmt == "jsonl":
        rows = list(_jsonl_rows(text, problems))
    elif fmt == "text":
        rows = [
            Row(n, _PROMPT_ONLY, (line.strip(),))
            for n, line in enumerate(_lines(text), 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    else:
        rows = _table_rows(text, "\t" if fmt == "tsv" else ",", problems)
    if not rows and not problems.issues:
        problems.add(1, "", "no prompts in the file")
    return PromptFile(rows, problems.done(), hashlib.sha256(data).hexdigest())


def _lines(text: str) -> list[str]:
    """Lines split on line feeds only (as a CSV reader does; ``str.splitlines`` would
    also split on U+2028 and the like, which JSON may hold unescaped)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _bytes_of(path: Path, problems: _Problems) -> bytes | None:
    """The file's bytes, or ``None`` with the reason."""
    try:
        size = path.stat().st_size
        if size > MAX_PROMPT_FILE_BYTES:
            problems.add(
                0,
                "",
                f"is {size / 2**20:.1f} MiB; prompt files are read up to "
                f"{MAX_PROMPT_FILE_BYTES // 2**20} MiB: split it into several files",
            )
            return None
        return path.read_bytes()
    except FileNotFoundError:
        problems.add(0, "", f"prompt file not found (looked for {path})")
    except IsADirectoryError:
        problems.add(0, "", "is a directory, not a prompt file")
    except OSError as exc:
        problems.add(0, "", f"cannot read the prompt file: {exc.strerror or exc}")
    return None


def _text_of(data: bytes, problems: _Problems) -> str | None:
    """The bytes as text (UTF-8, a byte-order mark dropped), or ``None`` with the reason."""
    if data.startswith(_UTF16_BOMS):
        problems.add(1, "", "is UTF-16 text; save it as UTF-8 (in a spreadsheet: CSV UTF-8)")
        return None
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        problems.add(line, "", "is not a text file (it holds NUL bytes): is it the spreadsheet "
                     "itself? Export it as CSV UTF-8")  # fmt: skip
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        problems.add(
            line,
            "",
            f"is not UTF-8 (byte 0x{byte:02X}: saved as Latin-1 or Windows-1252?); "
            "save it as UTF-8 (in a spreadsheet: CSV UTF-8)",
        )
        return None


def _table_rows(text: str, delimiter: str, problems: _Problems) -> list[Row]:
    """CSV or TSV: the header row names the columns; empty rows are skipped."""
    # A quote left open swallows the rest of the file as one cell: let it reach the end
    # (and be reported as an open quote), not trip the 128 KiB default cell limit.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_PROMPT_FILE_BYTES))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: tuple[str, ...] | None = None
    rows: list[Row] = []
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            values = list(map(str.strip, record))
            if not any(values):
                continue
            if header is None:
                names = _header(record, line, problems)
                if names is None:
                    return []
                header = tuple(names)
                continue
            if len(record) != len(header):
                problems.add(
                    line, "", f"has {len(record)} cells; the header has {len(header)} columns"
                )
                continue
            rows.append(Row(line, header, values))
    except csv.Error as exc:
        if "unexpected end of data" in str(exc) or "EOF" in str(exc):
            problems.add(start, "", "a quote opened in this row is never closed")
        else:
            problems.add(start, "", f"cannot be read as {_name(delimiter)}: {exc}")
        return []
    return rows


def _name(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def _header(record: list[str], line: int, problems: _Problems) -> list[str] | None:
    """Column names (fields lower-cased), or ``None`` after reporting what is wrong."""
    names: list[str] = []
    seen: dict[str, int] = {}
    ok = True
    for number, raw in enumerate(record, 1):
        name = raw.strip()
        if name.lower() in ROW_FIELDS:
            name = name.lower()
        if not name:
            problems.add(line, "", f"column {number} has no name in the header")
            ok = False
        elif name in seen:
            problems.add(line, name, f"column {name!r} appears twice (columns {seen[name]} and "
                         f"{number})")  # fmt: skip
            ok = False
        elif name not in ROW_FIELDS and not _variant(name):
            near = difflib.get_close_matches(name.lower(), ROW_FIELDS, n=1, cutoff=0.75)
            if near:
                problems.add(line, name, f"unknown column (did you mean `{near[0]}`?); other "
                             "columns are template variables, named like {style}")  # fmt: skip
                ok = False
        seen.setdefault(name, number)
        names.append(name)
    if ok and "prompt" not in names:
        listed = ", ".join(names)
        problems.add(line, "", f"no `prompt` column in the header (columns: {listed})")
        ok = False
    return names if ok else None


def _variant(name: str) -> bool:
    """``prompt_en``, ``id_old``: a field's name with a suffix is a template variable of
    its own, not a misspelt field."""
    head, _, tail = name.partition("_")
    return bool(tail) and head.lower() in ROW_FIELDS


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise ValueError(f"the key {twice!r} appears twice")
    return dict(pairs)


def _jsonl_rows(text: str, problems: _Problems) -> Iterator[Row]:
    """One JSON object per line; blank lines are skipped."""
    for number, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_pairs)
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogates
        except UnicodeEncodeError:
            problems.add(number, "", "holds text that is not valid Unicode (a lone \\uD8xx)")
            continue
        except (ValueError, RecursionError) as exc:
            problems.add(number, "", f"not valid JSON: {exc}")
            continue
        if not isinstance(value, dict):
            problems.add(number, "", f"must be a JSON object with a \"prompt\", not "
                         f"{type(value).__name__}")  # fmt: skip
            continue
        for key in value:
            near = difflib.get_close_matches(str(key).lower(), ROW_FIELDS, n=1, cutoff=0.75)
            if key not in ROW_FIELDS and near:
                problems.add(number, str(key), f"unknown key (did you mean `{near[0]}`?)")
        yield Row(number, tuple(value), tuple(value.values()))


def row_entries(
    reader: FieldReader, rows: list[Row], name: str, position: int
) -> list[PromptEntry]:
    """The prompt entries of a file's rows (``position``: the file's place in
    ``prompts``), each cell checked by ``reader``, whose issues collect every problem,
    located in the file.  A row with a problem is left out."""
    entries = []
    roles: dict[tuple[str, ...], _Roles] = {}  # a CSV has one set of columns: worked out once
    before = len(reader.issues)
    for row in rows:
        if len(reader.issues) - before >= MAX_ISSUES:
            more = f"... the rows from here on were not checked: fix these {MAX_ISSUES} first"
            reader.error_at(name, row.line, "", more)
            break
        role = roles.get(row.columns) or roles.setdefault(row.columns, _Roles.of(row.columns))
        entry = _entry(reader, row, name, position, role)
        if entry is not None:
            entries.append(entry)
    return entries


@dataclass(frozen=True, slots=True)
class _Roles:
    """Where a row's prompt, id and repeat are, which columns set API fields and which
    are template variables (column positions)."""

    prompt: int | None
    id: int | None
    repeat: int | None
    settings: tuple[tuple[str, int], ...]
    variables: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, columns: tuple[str, ...]) -> _Roles:
        at = {name: n for n, name in enumerate(columns)}
        return cls(
            at.get("prompt"),
            at.get("id"),
            at.get("repeat"),
            tuple((k, at[k]) for k in SETTING_KEYS if k in at),
            tuple(
                (k, n)
                for n, k in enumerate(columns)
                if k not in ROW_FIELDS and VAR_NAME.match(str(k))
            ),
        )


def _entry(
    reader: FieldReader, row: Row, name: str, position: int, roles: _Roles
) -> PromptEntry | None:
    before = len(reader.issues)
    values = row.values
    text = _text(reader, row, name, "prompt", roles.prompt)
    if text is None and len(reader.issues) == before:
        reader.error_at(name, row.line, "prompt", "a prompt must not be empty")
    prompt_id = _text(reader, row, name, "id", roles.id)
    settings: dict[str, Setting] = {}
    for key, n in roles.settings:
        value = values[n]
        if value is None or value == "" or value == []:
            continue
        setting = reader.cell_setting(key, value, name, row.line)
        if setting is not None:
            settings[key] = setting
    repeat = None
    if roles.repeat is not None and values[roles.repeat] not in (None, ""):
        repeat = _whole(reader, row, name, "repeat", values[roles.repeat], MAX_REPEAT)
    variables = {}
    for key, n in roles.variables:
        value = values[n]
        if value is None or value == "":
            continue
        if isinstance(value, dict | list | bool):
            reader.error_at(name, row.line, key, "a template value must be text or a number")
            continue
        variables[key] = value.strip() if isinstance(value, str) else str(value)
    if len(reader.issues) > before or text is None:
        return None
    return PromptEntry(position, text, row.line, prompt_id, settings, (), repeat, name, variables)


def _text(reader: FieldReader, row: Row, name: str, key: str, at: int | None) -> str | None:
    value = None if at is None else row.values[at]
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict | list | bool):
        reader.error_at(name, row.line, key, f"must be text, not {type(value).__name__}")
        return None
    return str(value).strip() or None


def _whole(reader: FieldReader, row: Row, name: str, key: str, value: Any, high: int) -> int | None:
    low = 1
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    text = value.strip() if isinstance(value, str) else ""
    if number is None and text.isascii() and text.isdecimal() and len(text) < 10:
        number = int(text)
    if number is None or not low <= number <= high:
        reader.error_at(name, row.line, key, f"must be a whole number from {low} to {high}, "
                        f"not {value!r}")  # fmt: skip
        return None
    return number
