"""The version-1 manifest: its shape, read from located YAML nodes.

``parse_manifest`` turns a :class:`~batchvid.yamlsrc.Source` into a
:class:`Manifest` and a list of :class:`~batchvid.errors.Issue`; it checks
everything that can be checked field by field (types, unknown keys with near-miss
suggestions, model names, size patterns, reference images by content).  Checks
that need a whole job (a seconds value against *its* model) belong to
:mod:`batchvid.expand`, which sees the combinations.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from . import catalogue
from .errors import Issue
from .request import image_type
from .yamlsrc import (
    MappingNode,
    Node,
    ScalarNode,
    SequenceNode,
    Source,
    kind,
    line_of,
    mapping_items,
    scalar_value,
)

__all__ = [
    "LIMIT_KEYS",
    "Axis",
    "Limits",
    "Manifest",
    "PromptEntry",
    "Reference",
    "Setting",
    "parse_manifest",
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
_BATCH_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_VAR_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_DURATION_UNITS: Final = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_REPEAT: Final = 1000


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
    """One API field value and where it was written (for error messages)."""

    value: Any
    line: int
    path: str


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
    """One item of ``prompts``: its text, overrides, own matrix axes and takes."""

    position: int
    text: str
    line: int
    id: str | None = None
    settings: dict[str, Setting] = field(default_factory=dict)
    matrix: tuple[Axis, ...] = ()
    repeat: int | None = None

    @property
    def path(self) -> str:
        return f"prompts[{self.position}]"


@dataclass(frozen=True, slots=True)
class Limits:
    """``limits``: how hard to push the API. ``None`` means "use the CLI/default"."""

    rate_per_minute: float | None = None
    concurrency: int | None = None
    max_active_tasks: int | None = None
    max_wait: float | None = None
    poll_interval: float | None = None


@dataclass(slots=True)
class Manifest:
    """A parsed manifest. Fields that failed to parse hold their defaults."""

    path: Path
    file: str
    sha256: str
    version: int = 1
    batch: str = ""
    output_dir: Path | None = None
    defaults: dict[str, Setting] = field(default_factory=dict)
    matrix: tuple[Axis, ...] = ()
    prompts: list[PromptEntry] = field(default_factory=list)
    repeat: int = 1
    limits: Limits = field(default_factory=Limits)
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


class _Parser:
    """Walks the located node graph; every problem goes to ``issues``."""

    def __init__(self, source: Source) -> None:
        self.file = source.name
        self.base = source.path.parent
        self.issues: list[Issue] = []
        self._refs: dict[Path, Reference | str] = {}
        self.m = Manifest(source.path, source.name, hashlib.sha256(source.data).hexdigest())

    # -- reporting -----------------------------------------------------------------
    def error(self, node: Node | int, path: str, message: str) -> None:
        line = node if isinstance(node, int) else line_of(node)
        self.issues.append(Issue(self.file, line, path, message))
        self.m.invalid.add(path)

    def warn(self, node: Node | int, path: str, message: str) -> None:
        line = node if isinstance(node, int) else line_of(node)
        self.issues.append(Issue(self.file, line, path, message, "warning"))

    def items(self, node: Node, path: str) -> list[tuple[str, Node, Node]]:
        if not isinstance(node, MappingNode):
            self.error(node, path, f"must be a mapping of key: value, not {kind(node)}")
            return []
        return list(mapping_items(node, self.issues, self.file, path))

    def scalar(self, node: Node, path: str) -> tuple[bool, Any]:
        if not isinstance(node, ScalarNode):
            self.error(node, path, f"must be a single value, not {kind(node)}")
            return False, None
        try:
            return True, scalar_value(node)
        except yaml.YAMLError as exc:
            self.error(node, path, f"unsupported YAML value ({getattr(exc, 'problem', exc)})")
            return False, None

    def text(self, node: Node, path: str, what: str) -> str | None:
        """Any plain scalar read as the text written (``007`` stays ``007``)."""
        ok, value = self.scalar(node, path)
        if not ok:
            return None
        if value is None or (isinstance(value, str) and not value.strip()):
            self.error(node, path, f"{what} must not be empty")
            return None
        assert isinstance(node, ScalarNode)
        return str(node.value).strip()

    def number(
        self,
        node: Node,
        path: str,
        *,
        integer: bool = False,
        minimum: float = 0,
        strict: bool = False,
    ) -> Any:
        ok, value = self.scalar(node, path)
        if not ok:
            return None
        want = "a whole number" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(node, path, f"must be {want}, not {kind(node)} {_show(node)}")
            return None
        if integer and not isinstance(value, int):
            self.error(node, path, f"must be {want}, not {value}")
            return None
        if value < minimum or (strict and value == minimum):
            bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
            self.error(node, path, f"must be {bound}, not {value}")
            return None
        return value

    # -- the manifest ----------------------------------------------------------------
    def parse(self, root: Node) -> Manifest:
        m = self.m
        if not isinstance(root, MappingNode):
            self.error(root, "", f"a manifest must be a mapping of keys, not {kind(root)}")
            return m
        present: dict[str, Node] = {}
        for key, key_node, value in mapping_items(root, self.issues, self.file, ""):
            if key not in TOP_KEYS:
                near = difflib.get_close_matches(key, SETTING_KEYS, n=1, cutoff=0.7)
                if near:
                    hint = "" if near[0] == key else f" (did you mean `{near[0]}`?)"
                    message = f"unknown key{hint}; API fields go under `defaults:` or a prompt"
                else:
                    message = f"unknown key{suggest(key, TOP_KEYS, listing=True)}"
                self.error(key_node, key, message)
                continue
            present[key] = value
            m.lines[key] = line_of(key_node)
        if "version" in present:
            node = present["version"]
            ok, version = self.scalar(node, "version")
            if ok and version != 1:
                self.error(node, "version", f"unsupported manifest version {version!r}; only 1")
        for required in ("batch", "prompts"):
            if required not in present:
                self.error(1, required, "required key is missing")
        if "batch" in present:
            name = self.text(present["batch"], "batch", "batch")
            if name is not None and not _BATCH_NAME.match(name):
                self.error(
                    present["batch"],
                    "batch",
                    f"{name!r} is not a usable batch name: use letters, digits, '.', '_' or "
                    "'-' (at most 100), starting with a letter or digit",
                )
            elif name is not None:
                m.batch = name
        if "output_dir" in present:
            out = self.text(present["output_dir"], "output_dir", "output_dir")
            if out is not None:
                m.output_dir = self.base / Path(out).expanduser()
        if "defaults" in present:
            m.defaults = self.settings(present["defaults"], "defaults")
        if "matrix" in present:
            m.matrix = self.matrix(present["matrix"], "matrix")
        if "repeat" in present:
            m.repeat = self.repeat(present["repeat"], "repeat") or 1
        if "limits" in present:
            m.limits = self.limits(present["limits"])
        if "pricing" in present:
            m.pricing = self.pricing(present["pricing"])
        if "budget_usd" in present:
            m.budget_usd = self.number(present["budget_usd"], "budget_usd", strict=True)
        if "prompts" in present:
            m.prompts = self.prompts(present["prompts"])
        return m

    def repeat(self, node: Node, path: str) -> int | None:
        value = self.number(node, path, integer=True, minimum=1)
        if value is not None and value > MAX_REPEAT:
            self.error(node, path, f"at most {MAX_REPEAT} takes per combination, not {value}")
            return None
        return int(value) if value is not None else None

    def settings(self, node: Node, path: str) -> dict[str, Setting]:
        out: dict[str, Setting] = {}
        for key, key_node, value in self.items(node, path):
            where = f"{path}.{key}"
            if key == "prompt":
                self.error(key_node, where, "`prompt` is set per item of `prompts`, not here")
            elif key not in SETTING_KEYS:
                self.error(
                    key_node, where, f"unknown API field{suggest(key, SETTING_KEYS, listing=True)}"
                )
            else:
                setting = self.setting(key, value, where)
                if setting is not None:
                    out[key] = setting
        return out

    def setting(self, key: str, node: Node, path: str) -> Setting | None:
        """One API field value, checked on its own (model-independent checks)."""
        line = line_of(node)
        if key == "input_reference":
            refs = self.references(node, path)
            return None if refs is None else Setting(refs, line, path)
        ok, value = self.scalar(node, path)
        if not ok:
            return None
        if key == "model":
            if not isinstance(value, str) or not value.strip():
                self.error(node, path, f"must be a model id, not {kind(node)} {_show(node)}")
                return None
            if catalogue.get_model(value) is None:
                hint = (
                    suggest(value, catalogue.MODELS) or f" (known: {', '.join(catalogue.MODELS)})"
                )
                self.error(node, path, f"unknown model {value!r}{hint}")
                return None
            return Setting(value, line, path)
        if key == "seconds":
            lo, hi = catalogue.GLOBAL_SECONDS
            if isinstance(value, bool) or not isinstance(value, int):
                self.error(node, path, f"must be a whole number of seconds, not {_show(node)}")
                return None
            if not lo <= value <= hi:
                self.error(node, path, f"{value} is outside the API's {lo}-{hi} seconds")
                return None
            return Setting(value, line, path)
        if key == "size":
            assert isinstance(node, ScalarNode)
            # Unquoted 16:9 is a YAML 1.1 base-60 integer; the text written is what was meant.
            size = str(node.value).strip() if value is not None else ""
            if not size:
                self.error(node, path, "size must not be empty")
                return None
            if not catalogue.SIZE_PATTERN.match(size):
                hint = suggest(size, catalogue.RATIOS)
                self.error(
                    node,
                    path,
                    f"{size!r} is neither a ratio ({' '.join(catalogue.RATIOS)}) nor an exact "
                    f"WxH like 1280x720{hint}",
                )
                return None
            return Setting(size, line, path)
        # resolution
        text = str(value).strip() if value is not None else ""
        if text not in catalogue.RESOLUTIONS:
            hint = f" (write {text}p)" if f"{text}p" in catalogue.RESOLUTIONS else ""
            hint = hint or suggest(text, catalogue.RESOLUTIONS)
            known = " ".join(catalogue.RESOLUTIONS)
            self.error(node, path, f"unknown resolution {text!r}{hint}; one of {known}")
            return None
        return Setting(text, line, path)

    def references(self, node: Node, path: str) -> tuple[Reference, ...] | None:
        if isinstance(node, SequenceNode):
            if not node.value:
                self.error(node, path, "an empty list of references; omit the key instead")
                return None
            items = [(f"{path}[{i}]", item) for i, item in enumerate(node.value)]
        else:
            items = [(path, node)]
        refs: list[Reference] = []
        for where, item in items:
            name = self.text(item, where, "a reference image path")
            if name is None:
                continue
            ref = self.reference(name)
            if isinstance(ref, str):
                self.error(item, where, ref)
            else:
                refs.append(ref)
        return tuple(refs) if len(refs) == len(items) else None

    def reference(self, name: str) -> Reference | str:
        """Check a reference image by content; the problem as text if it is unusable."""
        path = (self.base / Path(name).expanduser()).resolve()
        cached = self._refs.get(path)
        if cached is not None:
            return cached
        result: Reference | str
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            result = f"reference image {name!r} not found (looked for {path})"
        except IsADirectoryError:
            result = f"reference image {name!r} is a directory"
        except OSError as exc:
            result = f"cannot read reference image {name!r}: {exc.strerror or exc}"
        else:
            ctype = image_type(data[:16])
            if ctype is None:
                result = f"{name!r} is not a JPEG, PNG or WebP image (judged by its content)"
            else:
                result = Reference(name, path, hashlib.sha256(data).hexdigest(), ctype)
        self._refs[path] = result
        return result

    def matrix(self, node: Node, path: str) -> tuple[Axis, ...]:
        axes: list[Axis] = []
        for key, key_node, value in self.items(node, path):
            where = f"{path}.{key}"
            if key in ("prompt", "id"):
                self.error(key_node, where, f"`{key}` cannot vary in a matrix; add prompts instead")
                continue
            if key not in SETTING_KEYS and not _VAR_NAME.match(key):
                self.error(
                    key_node,
                    where,
                    "template variable names use letters, digits and '_' (like {style})",
                )
                continue
            if not isinstance(value, SequenceNode) or not value.value:
                self.error(value, where, f"must be a non-empty list of values, not {kind(value)}")
                continue
            values: list[Setting] = []
            seen: dict[Any, int] = {}
            for i, item in enumerate(value.value):
                item_path = f"{where}[{i}]"
                setting = self.axis_value(key, item, item_path)
                if setting is None:
                    continue
                marker = _hashable(setting.value)
                if marker in seen:
                    self.warn(item, item_path, f"repeats {where}[{seen[marker]}]; it adds nothing")
                    continue
                seen[marker] = i
                values.append(setting)
            if values:  # invalid values are reported; the rest still expand and get checked
                axes.append(Axis(key, tuple(values), line_of(key_node), where))
        return tuple(axes)

    def axis_value(self, key: str, node: Node, path: str) -> Setting | None:
        if key in SETTING_KEYS:
            return self.setting(key, node, path)
        text = self.text(node, path, "a template value")
        return None if text is None else Setting(text, line_of(node), path)

    def limits(self, node: Node) -> Limits:
        values: dict[str, Any] = {}
        for key, key_node, value in self.items(node, "limits"):
            where = f"limits.{key}"
            if key not in LIMIT_KEYS:
                self.error(
                    key_node, where, f"unknown limit{suggest(key, LIMIT_KEYS, listing=True)}"
                )
            elif key in ("max_wait", "poll_interval"):
                values[key] = self.duration(value, where)
                floor = catalogue.POLL_EVERY_S[0]
                if key == "poll_interval" and values[key] is not None and values[key] < floor:
                    self.error(
                        value,
                        where,
                        f"{values[key]:g} s is tighter than the docs' suggested "
                        f"{floor:g}-{catalogue.POLL_EVERY_S[1]:g} s between polls of one task",
                    )
            elif key == "rate_per_minute":
                values[key] = self.number(value, where, strict=True)
            else:
                values[key] = self.number(value, where, integer=True, minimum=1)
        return Limits(**{k: v for k, v in values.items() if v is not None})

    def duration(self, node: Node, path: str) -> float | None:
        ok, value = self.scalar(node, path)
        if not ok:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        match = _DURATION.match(str(value)) if isinstance(value, str) else None
        if match and float(match[1]) > 0:
            return float(match[1]) * _DURATION_UNITS[match[2]]
        self.error(
            node, path, f"must be a duration in seconds or like 90s, 30m, 2h; not {_show(node)}"
        )
        return None

    def pricing(self, node: Node) -> dict[str, float | dict[str, float]]:
        prices: dict[str, float | dict[str, float]] = {}
        for key, key_node, value in self.items(node, "pricing"):
            where = f"pricing.{key}"
            if not any(m == key or m.startswith(key + "-") for m in catalogue.MODELS):
                self.error(
                    key_node, where, f"prices an unknown model{suggest(key, catalogue.MODELS)}"
                )
                continue
            if isinstance(value, MappingNode):
                per_res: dict[str, float] = {}
                for res, res_node, price_node in self.items(value, where):
                    if res not in catalogue.RESOLUTIONS:
                        self.error(
                            res_node,
                            f"{where}.{res}",
                            "unknown resolution" + suggest(res, catalogue.RESOLUTIONS),
                        )
                        continue
                    price = self.number(price_node, f"{where}.{res}")
                    if price is not None:
                        per_res[res] = float(price)
                prices[key] = per_res
            else:
                price = self.number(value, where)
                if price is not None:
                    prices[key] = float(price)
        return prices

    def prompts(self, node: Node) -> list[PromptEntry]:
        if not isinstance(node, SequenceNode):
            self.error(node, "prompts", f"must be a list of prompts, not {kind(node)}")
            return []
        if not node.value:
            self.error(node, "prompts", "must list at least one prompt")
            return []
        entries: list[PromptEntry] = []
        ids: dict[str, int] = {}
        for position, item in enumerate(node.value):
            entry = self.prompt(position, item)
            if entry is None:
                continue
            if entry.id is not None:
                if entry.id in ids:
                    self.error(
                        entry.line,
                        f"prompts[{position}].id",
                        f"duplicate prompt id {entry.id!r} (also prompts[{ids[entry.id]}])",
                    )
                    continue
                ids[entry.id] = position
            entries.append(entry)
        return entries

    def prompt(self, position: int, node: Node) -> PromptEntry | None:
        path = f"prompts[{position}]"
        if isinstance(node, ScalarNode):
            text = self.text(node, path, "a prompt")
            return None if text is None else PromptEntry(position, text, line_of(node))
        if not isinstance(node, MappingNode):
            self.error(
                node, path, f"must be a prompt text or a mapping with `prompt:`, not {kind(node)}"
            )
            return None
        fields: dict[str, Node] = {}
        for key, key_node, value in self.items(node, path):
            if key not in PROMPT_KEYS:
                self.error(
                    key_node,
                    f"{path}.{key}",
                    f"unknown key{suggest(key, PROMPT_KEYS, listing=True)}",
                )
            else:
                fields[key] = value
        if "prompt" not in fields:
            self.error(node, f"{path}.prompt", "required key is missing")
            return None
        text = self.text(fields["prompt"], f"{path}.prompt", "a prompt")
        prompt_id = self.text(fields["id"], f"{path}.id", "an id") if "id" in fields else None
        settings: dict[str, Setting] = {}
        for key in SETTING_KEYS:
            if key in fields:
                setting = self.setting(key, fields[key], f"{path}.{key}")
                if setting is not None:
                    settings[key] = setting
        axes = self.matrix(fields["matrix"], f"{path}.matrix") if "matrix" in fields else ()
        repeat = self.repeat(fields["repeat"], f"{path}.repeat") if "repeat" in fields else None
        if text is None:
            return None
        return PromptEntry(
            position, text, line_of(fields["prompt"]), prompt_id, settings, axes, repeat
        )


def _show(node: Node) -> str:
    return repr(node.value) if isinstance(node, ScalarNode) else kind(node)


def _hashable(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(getattr(v, "sha256", v) for v in value)
    return value


def parse_manifest(source: Source) -> tuple[Manifest, list[Issue]]:
    """Parse a composed manifest; returns it with every issue found (errors and warnings)."""
    parser = _Parser(source)
    manifest = parser.parse(source.root)
    return manifest, parser.issues
