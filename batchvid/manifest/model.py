"""The manifest's vocabulary: its keys, and what a parsed manifest is made of.

Plain data (:class:`Manifest`, :class:`PromptEntry`, :class:`Setting`,
:class:`Axis`, :class:`Reference`, :class:`Limits`, :class:`Retries`) and the keys each level
accepts; :mod:`batchvid.manifest.parse` fills them in.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .source import (
    Node,
    ScalarNode,
    kind,
)

__all__ = [
    "BATCH_NAME",
    "DURATION",
    "DURATION_UNITS",
    "LIMIT_KEYS",
    "MAX_REPEAT",
    "MAX_RETRIES",
    "PROMPT_KEYS",
    "RETRY_KEYS",
    "SETTING_KEYS",
    "TOP_KEYS",
    "VAR_NAME",
    "Axis",
    "Limits",
    "Manifest",
    "PromptEntry",
    "Reference",
    "Retries",
    "Setting",
    "hashable",
    "show",
    "suggest",
]

TOP_KEYS: Final = (
    "version",
    "batch",
    "output_dir",
    "defaults",
    "matrix",
    "prompts",
    "repeat",
    "limits",
    "retry",
    "pricing",
    "budget_usd",
)
#: The API fields a manifest may set (``prompt`` is set only per prompt).
SETTING_KEYS: Final = ("model", "seconds", "size", "resolution", "input_reference")
PROMPT_KEYS: Final = ("id", "prompt", *SETTING_KEYS, "matrix", "repeat")
LIMIT_KEYS: Final = (
    "rate_per_minute",
    "concurrency",
    "max_active_tasks",
    "max_wait",
    "poll_interval",
)
BATCH_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VAR_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
DURATION_UNITS: Final = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_REPEAT: Final = 1000
#: The outcomes a job may get new attempts for, automatically (``retry:``).
RETRY_KEYS: Final = ("error", "failed", "vanished", "stalled")
#: The most automatic new attempts a manifest may allow for one kind of outcome.
MAX_RETRIES: Final = 10


def suggest(word: str, candidates: Iterable[str], *, listing: bool = False) -> str:
    """``" (did you mean `x`?)"`` for a near miss of ``word``.

    With no near miss: ``""``, or with ``listing`` the whole list of choices.
    """
    choices = list(candidates)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.7)
    if close:
        return f" (did you mean `{close[0]}`?)"
    return f" (expected one of: {', '.join(choices)})" if listing else ""


@dataclass(frozen=True, slots=True)
class Reference:
    """A reference image: the path as written, the resolved file, and its content."""

    name: str
    path: Path
    sha256: str
    content_type: str


@dataclass(frozen=True, slots=True)
class Setting:
    """One API field value and where it was written (for error messages): ``file`` is
    the prompt file it came from (``None``: the manifest)."""

    value: Any
    line: int
    path: str
    file: str | None = None


@dataclass(frozen=True, slots=True)
class Axis:
    """A matrix key and its values; ``api`` says whether it is an API field."""

    name: str
    values: tuple[Setting, ...]
    line: int
    path: str

    @property
    def api(self) -> bool:
        return self.name in SETTING_KEYS


@dataclass(frozen=True, slots=True)
class PromptEntry:
    """One item of ``prompts``, or one row of a prompt file (``file``: its display name):
    its text, overrides, own matrix axes, template values (a file's other columns) and
    takes."""

    position: int
    text: str
    line: int
    id: str | None = None
    settings: dict[str, Setting] = field(default_factory=dict)
    matrix: tuple[Axis, ...] = ()
    repeat: int | None = None
    file: str | None = None
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """Where it is, for people: ``prompts[2]``, or ``prompts.csv:17`` for a file row."""
        return f"{self.file}:{self.line}" if self.file else f"prompts[{self.position}]"

    def field(self, name: str) -> str:
        """The path of one of its fields in an issue (a file row's: just the column)."""
        return name if self.file else f"prompts[{self.position}].{name}"


@dataclass(frozen=True, slots=True)
class Limits:
    """``limits``: how hard to push the API. ``None`` means "use the CLI/default"."""

    rate_per_minute: float | None = None
    concurrency: int | None = None
    max_active_tasks: int | None = None
    max_wait: float | None = None
    poll_interval: float | None = None


@dataclass(frozen=True, slots=True)
class Retries:
    """``retry``: how many new attempts a job gets automatically, per kind of outcome.

    - ``error``: the task ended ERROR ("an internal error stopped it"), usually
      transient: retried twice by default;
    - ``failed``: FAILED, the provider rejected the content: the same request
      fails again, so never by default (the reason is shown instead);
    - ``vanished``: the task was forgotten upstream before its video was fetched;
    - ``stalled``: still not finished when the stall rule gave up on it.  The
      stalled task keeps being watched; if it finishes, its video is kept too.

    ``in_doubt`` is never retried automatically: a create whose answer was lost
    may have been billed, so resubmitting it stays the user's decision.
    """

    error: int = 2
    failed: int = 0
    vanished: int = 1
    stalled: int = 0

    def allowed(self, kind: str) -> int:
        """New attempts allowed for ``kind`` (one of :data:`RETRY_KEYS`)."""
        value: int = getattr(self, kind)
        return value

    def as_dict(self) -> dict[str, int]:
        return {key: self.allowed(key) for key in RETRY_KEYS}

    def __str__(self) -> str:
        return "{" + ", ".join(f"{k}: {v}" for k, v in self.as_dict().items()) + "}"


@dataclass(slots=True)
class Manifest:
    """A parsed manifest. Fields that failed to parse hold their defaults."""

    path: Path
    file: str
    sha256: str
    version: int = 1
    batch: str = ""
    #: A folder, or a store's ``s3://BUCKET/PREFIX`` (see :mod:`batchvid.outputs`).
    output_dir: Path | str | None = None
    defaults: dict[str, Setting] = field(default_factory=dict)
    matrix: tuple[Axis, ...] = ()
    prompts: list[PromptEntry] = field(default_factory=list)
    repeat: int = 1
    limits: Limits = field(default_factory=Limits)
    retry: Retries = field(default_factory=Retries)
    #: model id (or id prefix) -> USD per output second, or {resolution: USD}.
    pricing: dict[str, float | dict[str, float]] = field(default_factory=dict)
    budget_usd: float | None = None
    lines: dict[str, int] = field(default_factory=dict)
    #: Paths of values that were written but invalid (already reported), so that
    #: expansion does not report their absence as a second, misleading error.
    invalid: set[str] = field(default_factory=set)

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def show(node: Node) -> str:
    return repr(node.value) if isinstance(node, ScalarNode) else kind(node)


def hashable(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(getattr(v, "sha256", v) for v in value)
    return value
