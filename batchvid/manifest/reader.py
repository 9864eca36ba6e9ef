"""Reading located YAML values into typed manifest fields, every problem an Issue.

:class:`FieldReader` knows how to read one value (a number, a text, a
duration, a setting, a reference image, a matrix axis) from a node, and to
report where it went wrong (``FILE:LINE: path: message``).  The manifest's
overall shape is :mod:`batchvid.manifest.parse`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .. import catalogue
from ..errors import Issue
from ..request import image_type
from ..text import clip
from .model import (
    DURATION,
    DURATION_UNITS,
    MAX_REPEAT,
    SETTING_KEYS,
    VAR_NAME,
    Axis,
    Manifest,
    Reference,
    Setting,
    hashable,
    show,
    suggest,
)
from .source import (
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

__all__ = ["FieldReader"]

_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_INT = "tag:yaml.org,2002:int"


class _Refused(NamedTuple):
    """A cell value :meth:`FieldReader.cell_setting` refused: ``(path, message)`` each."""

    problems: list[tuple[str, str]]


class FieldReader:
    """Reads typed values off located nodes; every problem goes to ``issues``."""

    def __init__(self, source: Source) -> None:
        self.file = source.name
        self.base = source.path.parent
        self.issues: list[Issue] = []
        self._refs: dict[Path, Reference | str] = {}
        self._cells: dict[tuple[str, str, str], Setting | _Refused] = {}
        self.m = Manifest(source.path, source.name, hashlib.sha256(source.data).hexdigest())

    def error(self, node: Node | int, path: str, message: str) -> None:
        line = node if isinstance(node, int) else line_of(node)
        self.issues.append(Issue(self.file, line, path, message))
        self.m.invalid.add(path)

    def error_at(self, file: str, line: int, path: str, message: str) -> None:
        """An error in another file than the manifest (a prompt file's row)."""
        self.issues.append(Issue(file, line, path, message))

    def cell_setting(self, key: str, value: Any, file: str, line: int) -> Setting | None:
        """One API field from a prompt file's cell, checked as :meth:`setting` checks the
        manifest's, once per distinct value; the :class:`Setting` is shared by every row
        with that value, so its ``line`` is 0: "the row's own line" (``expand.blame``)."""
        marker = (key, value if isinstance(value, str) else repr(value), file)
        checked = self._cells.get(marker)
        if checked is None:
            found = self._check_cell(key, value, file, line)
            checked = found if isinstance(found, _Refused) else Setting(found, 0, key, file)
            self._cells[marker] = checked
        if isinstance(checked, _Refused):
            self.issues.extend(Issue(file, line, path, msg) for path, msg in checked.problems)
            return None
        return checked

    def _check_cell(self, key: str, value: Any, file: str, line: int) -> Any:
        mark = yaml.Mark(file, 0, line - 1, 0, None, 0)
        if key == "input_reference" and isinstance(value, str) and ";" in value:
            value = [part.strip() for part in value.split(";") if part.strip()]
        node: Node
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                return _Refused([(key, "must be a list of image paths (text)")])
            items = [ScalarNode(_STR, v, start_mark=mark) for v in value]
            node = SequenceNode(_SEQ, items, start_mark=mark)
        else:
            text = str(value).strip()
            tag = _STR
            if key == "seconds" and text.isascii() and text.isdecimal() and len(text) < 10:
                text, tag = str(int(text)), _INT  # a cell's 08 is 8 (not YAML's octal)
            node = ScalarNode(tag, text, start_mark=mark)
        issues, self.issues = self.issues, []
        invalid = set(self.m.invalid)
        try:
            setting = self.setting(key, node, key)
            problems = [(i.path, i.message) for i in self.issues]
        finally:
            self.issues, self.m.invalid = issues, invalid
        return _Refused(problems) if setting is None else setting.value

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
        except (ValueError, OverflowError) as exc:  # 2024-13-45 read as a date, 5,000 digits
            self.error(node, path, f"unsupported value {clip(str(node.value), 40)!r} ({exc})")
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
            self.error(node, path, f"must be {want}, not {kind(node)} {show(node)}")
            return None
        if integer and not isinstance(value, int):
            self.error(node, path, f"must be {want}, not {value}")
            return None
        if value < minimum or (strict and value == minimum):
            bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
            self.error(node, path, f"must be {bound}, not {value}")
            return None
        return value

    def duration(self, node: Node, path: str) -> float | None:
        ok, value = self.scalar(node, path)
        if not ok:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        match = DURATION.match(str(value)) if isinstance(value, str) else None
        if match and float(match[1]) > 0:
            return float(match[1]) * DURATION_UNITS[match[2]]
        self.error(
            node, path, f"must be a duration in seconds or like 90s, 30m, 2h; not {show(node)}"
        )
        return None

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
                self.error(node, path, f"must be a model id, not {kind(node)} {show(node)}")
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
                self.error(node, path, f"must be a whole number of seconds, not {show(node)}")
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
        try:
            path = (self.base / Path(name).expanduser()).resolve()
        except (RuntimeError, ValueError, OSError) as exc:  # ~nosuchuser, a NUL in the path
            return f"cannot use the path {name!r}: {exc}"
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
            if key not in SETTING_KEYS and not VAR_NAME.match(key):
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
                marker = hashable(setting.value)
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
