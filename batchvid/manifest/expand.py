"""Expansion: a parsed manifest becomes the list of distinct, checked jobs.

For every prompt: defaults, then the matrix (the top-level axes, with the
prompt's own axes replacing or adding to them, as a cartesian product), then
the prompt's own fields; ``{var}`` templates are filled from the non-API axes;
each combination is taken ``repeat`` times.  Each job gets a key that depends
only on what would be sent (the normalised request, the *bytes* of each
reference image) and the take number, so reordering prompts or matrix values
never changes a key, and identical requests collapse into one job.

Model rules (a seconds range, a resolution, references on a 1.x model) are
checked per distinct combination and reported at the line where the offending
value was written, once, however many jobs share it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Final

from .. import catalogue
from ..errors import Issue
from .model import Axis, Manifest, PromptEntry, Reference, Setting, suggest

__all__ = ["MAX_JOBS", "Expansion", "JobSpec", "Merge", "check_combination", "expand", "job_key"]

#: Refuse manifests that expand beyond this: a typo in a matrix should not eat the machine.
MAX_JOBS: Final = 1_000_000
#: Problems reported per prompt file while expanding, before the rest are only counted.
MAX_REPORTED_PER_FILE: Final = 200
KEY_VERSION: Final = "bv1"
_TEMPLATE: Final = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_API_DEFAULTS: Final[Mapping[str, Any]] = catalogue.API_DEFAULTS
_VARIABLE: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One distinct job of a batch: what to send, and where it came from.

    ``index`` is the 1-based position in expansion order (prompts, then matrix
    combinations, then takes); ``axes`` the matrix values that made this job
    (``(("model", "…"), ("style", "noir"))``), for reports laid out on them.
    """

    key: str
    index: int
    take: int
    prompt_id: str | None
    prompt_position: int
    prompt: str
    model: str
    seconds: int
    size: str
    resolution: str
    references: tuple[Reference, ...]
    axes: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Merge:
    """An expanded request identical to an earlier one, so not a job of its own."""

    path: str
    axes: tuple[tuple[str, str], ...]
    take: int
    same_as: int


@dataclass(slots=True)
class Expansion:
    jobs: list[JobSpec]
    issues: list[Issue]
    merged: int
    merged_examples: list[Merge]


def job_key(
    prompt: str,
    model: str,
    seconds: int,
    size: str,
    resolution: str,
    reference_sha256: Iterable[str],
    take: int,
) -> str:
    """The stable identity of a job: a hash of what is sent, plus the take number."""
    material = "\x1f".join(
        (
            KEY_VERSION,
            prompt,
            model,
            str(seconds),
            size,
            resolution,
            ",".join(reference_sha256),
            str(take),
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()[:24]


@lru_cache(maxsize=4096)
def check_combination(
    model: str, seconds: int, size: str, resolution: str, has_references: bool
) -> tuple[tuple[str, str, str], ...]:
    """Model rules for one combination: ``(severity, field, message)`` per problem.

    ``field`` names the request field to blame, so the caller can point at the
    line where that value was written.
    """
    spec = catalogue.get_model(model)
    if spec is None:  # already reported where the model was written
        return ()
    out: list[tuple[str, str, str]] = []
    if not spec.accepts_seconds(seconds):
        out.append(
            (
                "error",
                "seconds",
                f"{seconds} s is outside {model}'s range of "
                f"{spec.min_seconds}-{spec.max_seconds} s",
            )
        )
    if resolution not in spec.resolutions:
        able = [m.id for m in catalogue.MODELS.values() if resolution in m.resolutions]
        out.append(
            (
                "error",
                "resolution",
                f"{model} does not render {resolution} (it offers {', '.join(spec.resolutions)}; "
                f"{resolution} needs {' or '.join(able)})",
            )
        )
    if has_references and not spec.image_to_video:
        able = [m.id for m in catalogue.MODELS.values() if m.image_to_video]
        out.append(
            (
                "error",
                "input_reference",
                f"{model} is text-to-video only; reference images need {' or '.join(able)}",
            )
        )
    elif resolution in spec.resolutions:
        problem = catalogue.size_problem(model, size, resolution)
        if problem is not None:
            out.append((problem[0], "size", problem[1]))
    return tuple(out)


def _compile(text: str) -> tuple[list[str | None], list[str]]:
    """Split a prompt template into literal parts and variable slots (``None``)."""
    if "{" not in text and "}" not in text:
        return [text], []
    if "{{" not in text and "}}" not in text:  # no escapes: split in one pass
        pieces = _VARIABLE.split(text)  # literal, name, literal, name, ..., literal
        return [None if n % 2 else p for n, p in enumerate(pieces)], pieces[1::2]
    parts: list[str | None] = []
    names: list[str] = []
    pos = 0
    literal: list[str] = []
    for match in _TEMPLATE.finditer(text):
        literal.append(text[pos : match.start()])
        pos = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        parts.append("".join(literal))
        literal = []
        parts.append(None)
        names.append(match.group(1))
    literal.append(text[pos:])
    parts.append("".join(literal))
    return parts, names


class _Expander:
    def __init__(self, manifest: Manifest) -> None:
        self.m = manifest
        self.issues: list[Issue] = []
        self._reported: set[tuple[str, int, str, str]] = set()
        self._manifest_axes = list(manifest.matrix)
        self._per_file: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()

    def report(
        self, severity: str, line: int, path: str, message: str, file: str | None = None
    ) -> None:
        """Report once at ``file:line`` (default file: the manifest)."""
        where = file or self.m.file
        marker = (where, line, path, message)
        if marker in self._reported:
            return
        self._reported.add(marker)
        if file is not None and self._per_file[file] >= MAX_REPORTED_PER_FILE:
            self._dropped[file] += 1  # a sheet with one bad column: not 100,000 lines
            return
        self._per_file[where] += 1
        self.issues.append(Issue(where, line, path, message, severity))

    def axes_for(self, entry: PromptEntry) -> list[Axis]:
        """The matrix a prompt expands over: the manifest's, with the prompt's own axes
        replacing or adding to it; a file row's own column replaces the axis it names."""
        if entry.variables and any(a.name in entry.variables for a in self._manifest_axes):
            return [a for a in self.axes_for(replace(entry, variables={})) if a.name not in
                    entry.variables]  # fmt: skip
        if not entry.matrix:
            return self._manifest_axes  # (shared: never changed)
        merged = {axis.name: axis for axis in self.m.matrix}
        merged.update({axis.name: axis for axis in entry.matrix})
        return list(merged.values())

    def run(self) -> Expansion:
        m = self.m
        plans = [(entry, self.axes_for(entry)) for entry in m.prompts]
        total = sum(
            (math.prod(len(a.values) for a in axes) if axes else 1) * (entry.repeat or m.repeat)
            for entry, axes in plans
        )
        if total > MAX_JOBS:
            self.report(
                "error",
                m.lines.get("matrix", m.lines.get("prompts", 1)),
                "matrix",
                f"expands to {total:,} jobs, over the {MAX_JOBS:,} limit; split the batch",
            )
            return Expansion([], self.issues, 0, [])
        self.check_template_use(plans)
        jobs: list[JobSpec] = []
        by_key: dict[str, int] = {}
        merges: list[Merge] = []
        merged = 0
        for entry, axes in plans:
            for fields in self.expand_prompt(entry, axes):
                key, take = fields[0], fields[1]
                if key in by_key:
                    merged += 1
                    if len(merges) < 20:
                        merges.append(Merge(entry.path, fields[-1], take, by_key[key]))
                    continue
                index = len(jobs) + 1
                by_key[key] = index
                jobs.append(JobSpec(key, index, *fields[1:]))
        for file, more in self._dropped.items():
            self.issues.append(Issue(file, 0, "", f"... and {more} more problems in its rows"))
        return Expansion(jobs, self.issues, merged, merges)

    def check_template_use(self, plans: list[tuple[PromptEntry, list[Axis]]]) -> None:
        """Warn about template axes no prompt uses: they only multiply identical jobs."""
        if all(axis.api for axis in self.m.matrix):
            return  # (nothing to check: no template axis)
        used: set[str] = set()
        for entry, _ in plans:
            used.update(_compile(entry.text)[1])
        for axis in self.m.matrix:
            if axis.api or axis.name in used:
                continue
            near = suggest(axis.name, catalogue.API_FIELDS)
            if near:
                self.report("error", axis.line, axis.path, f"unknown matrix key{near}")
            else:
                self.report(
                    "warning",
                    axis.line,
                    axis.path,
                    f"no prompt uses {{{axis.name}}}; its values only repeat identical jobs",
                )

    def expand_prompt(self, entry: PromptEntry, axes: list[Axis]) -> Iterable[tuple[Any, ...]]:
        """Yield each job of one prompt as JobSpec's fields, less the index."""
        m = self.m
        parts, names = _compile(entry.text)
        defined_here = all(n in entry.variables for n in names)  # (a file row: usually)
        if not defined_here and self.undefined_variables(entry, names, axes):
            return
        fill = _filler(parts, names)
        takes = range(1, (entry.repeat or m.repeat) + 1)
        axis_names = [a.name for a in axes]
        combos = itertools.product(*(a.values for a in axes)) if axes else ((),)
        for combo in combos:
            settings: dict[str, Setting] = {**m.defaults, **entry.settings}
            variables: dict[str, str] = dict(entry.variables)
            for name, setting in zip(axis_names, combo, strict=True):
                if name not in catalogue.API_FIELDS:
                    variables.setdefault(name, setting.value)  # a file row's own columns win
                elif name not in entry.settings:
                    settings[name] = setting
            model_setting = settings.get("model")
            if model_setting is None:
                if self.model_was_invalid(entry):
                    return
                self.report(
                    "error",
                    entry.line,
                    entry.field("model"),
                    "no model: set defaults.model, a matrix model list, or the prompt's model",
                    entry.file,
                )
                return
            model = model_setting.value
            get = settings.get
            seconds = _API_DEFAULTS["seconds"] if (s := get("seconds")) is None else s.value
            size = _API_DEFAULTS["size"] if (s := get("size")) is None else s.value
            resolution = (
                _API_DEFAULTS["resolution"] if (s := get("resolution")) is None else s.value
            )
            refs: tuple[Reference, ...] = (
                settings["input_reference"].value if "input_reference" in settings else ()
            )
            problems = check_combination(model, seconds, size, resolution, bool(refs))
            if problems and self.blame(entry, settings, problems):
                continue
            prompt = fill(variables)
            axes_values = (
                tuple((n, _axis_text(s.value)) for n, s in zip(axis_names, combo, strict=True))
                if combo
                else ()
            )
            if entry.variables:  # a file row's template values, the ones its prompt uses
                axes_values += tuple((n, v) for n, v in entry.variables.items() if n in names)
            ref_hashes = [r.sha256 for r in refs] if refs else ()
            for take in takes:
                key = job_key(prompt, model, seconds, size, resolution, ref_hashes, take)
                yield (
                    key,
                    take,
                    entry.id,
                    entry.position,
                    prompt,
                    model,
                    seconds,
                    size,
                    resolution,
                    refs,
                    axes_values,
                )

    def undefined_variables(self, entry: PromptEntry, names: list[str], axes: list[Axis]) -> bool:
        """Report each ``{name}`` of the prompt that nothing defines; whether there was one."""
        defined = entry.variables.keys() | {a.name for a in axes if not a.api}
        missing = [n for n in names if n not in defined]
        for name in dict.fromkeys(missing):
            hint = suggest(name, defined)
            if name in catalogue.API_FIELDS:
                hint = f" (API fields like {name} are not template variables)"
            source = "matrix key or column (or its cell is empty)" if entry.file else "matrix key"
            self.report(
                "error",
                entry.line,
                entry.field("prompt"),
                f"template variable {{{name}}} is not defined by any {source}{hint}; "
                f"defined: {', '.join(sorted(defined)) or 'none'}",
                entry.file,
            )
        return bool(missing)

    def model_was_invalid(self, entry: PromptEntry) -> bool:
        """Whether a model was written somewhere for this prompt but failed to parse."""
        watched = (
            "defaults.model",
            "matrix.model",
            f"{entry.path}.model",
            f"{entry.path}.matrix.model",
        )
        invalid = self.m.invalid
        return "defaults" in invalid or any(p.startswith(watched) for p in invalid)

    def blame(
        self,
        entry: PromptEntry,
        settings: dict[str, Setting],
        problems: tuple[tuple[str, str, str], ...],
    ) -> bool:
        """Report each problem at the line of the value to blame; True if any is an error."""
        fatal = False
        own_model = "model" in entry.settings or any(a.name == "model" for a in entry.matrix)
        for severity, field_name, message in problems:
            setting = settings.get(field_name)
            if setting is not None:  # (line 0: a prompt file's value, on the row's line)
                line, path, file = setting.line or entry.line, setting.path, setting.file
            else:  # an API default: blame the prompt
                line, path, file = entry.line, entry.field(field_name), entry.file
            if field_name != "model" and not own_model and "model" in settings:
                message += f" (model from {settings['model'].path})"
            self.report(severity, line, path, message, file)
            fatal = fatal or severity == "error"
        return fatal


def _axis_text(value: object) -> str:
    if isinstance(value, tuple):
        return "+".join(r.name for r in value if isinstance(r, Reference))
    return str(value)


def _filler(parts: list[str | None], names: list[str]) -> Callable[[dict[str, str]], str]:
    if not names:
        text = "".join(p for p in parts if p is not None).strip()
        return lambda _variables: text

    def fill(variables: dict[str, str]) -> str:
        slots = iter(names)
        return "".join([p if p is not None else variables[next(slots)] for p in parts]).strip()

    return fill


def expand(manifest: Manifest) -> Expansion:
    """Expand a parsed manifest into distinct jobs, checking each combination."""
    return _Expander(manifest).run()
