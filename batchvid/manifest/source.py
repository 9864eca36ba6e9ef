"""Reading a YAML file into nodes that remember their source line.

PyYAML's composer gives a node graph in which every node carries its start
mark; the manifest parser walks that graph directly, so every error can say
``FILE:LINE``.  This module does the reading and the low-level checks that come
before any meaning: size, encoding, emptiness, syntax, duplicate keys, merges.

It never deep-constructs arbitrary YAML: only scalars are turned into Python
values, so an alias bomb or a custom tag cannot make it hang or run code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import Issue

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MappingNode",
    "Node",
    "ScalarNode",
    "SequenceNode",
    "Source",
    "kind",
    "line_of",
    "mapping_items",
    "read_source",
    "scalar_value",
]

#: Manifests larger than this are refused before parsing: 4 MiB is tens of
#: thousands of prompts; beyond that a batch belongs in several manifests.
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_STR_TAG: Final = "tag:yaml.org,2002:str"


@dataclass(frozen=True, slots=True)
class Source:
    """A YAML file read and composed: its display name, bytes and root node."""

    name: str
    path: Path
    data: bytes
    root: Node


def line_of(node: Node) -> int:
    """The 1-based source line where ``node`` starts."""
    return int(node.start_mark.line) + 1


def kind(node: Node) -> str:
    """A human name for a node's shape, for "expected X, got Y" messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    value = scalar_value(node) if isinstance(node, ScalarNode) else None
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


def read_source(path: Path, display: str | None = None) -> tuple[Source | None, list[Issue]]:
    """Read and compose ``path``; on failure return ``None`` and the located issues."""
    name = display if display is not None else str(path)

    def fail(line: int, message: str) -> tuple[None, list[Issue]]:
        return None, [Issue(name, line, "", message)]

    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return fail(0, "no such file")
    except IsADirectoryError:
        return fail(0, "is a directory, not a manifest file")
    except OSError as exc:
        return fail(0, f"cannot read: {exc.strerror or exc}")
    if len(data) > MAX_MANIFEST_BYTES:
        size = path.stat().st_size / (1024 * 1024)
        return fail(
            1,
            f"manifest is {size:.1f} MiB, over the {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB "
            "limit; split the batch into several manifests",
        )
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return fail(line, f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8")
    if not text.strip():
        return fail(1, "manifest is empty")
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 1
        what = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        return fail(line, f"YAML syntax error: {what}")
    except yaml.YAMLError as exc:  # reader errors: control characters and the like
        return fail(1, f"YAML error: {exc}")
    if root is None:
        return fail(1, "manifest has no content (only comments?)")
    return Source(name, path, data, root), []


_constructor = yaml.constructor.SafeConstructor()


def scalar_value(node: ScalarNode) -> Any:
    """The Python value of a scalar (str, int, float, bool or None).

    Raises ``yaml.YAMLError`` for tags the safe loader does not know.
    """
    if node.tag == _STR_TAG:
        return node.value
    return _constructor.construct_object(node)


def mapping_items(
    node: MappingNode, issues: list[Issue], file: str, path: str
) -> Iterator[tuple[str, Node, Node]]:
    """Yield ``(key, key_node, value_node)`` of a mapping, in order.

    Merge keys (``<<: *anchor``) are expanded, with the mapping's own keys
    winning; a key written twice, or a key that is not a string, is reported
    in ``issues`` and skipped.
    """
    merged: list[tuple[str, Node, Node]] = []
    own: dict[str, tuple[Node, Node]] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            merged.extend(_merge_sources(value_node, issues, file, path))
            continue
        if not isinstance(key_node, ScalarNode) or not isinstance(key_node.value, str):
            issues.append(Issue(file, line_of(key_node), path, "keys must be plain strings"))
            continue
        key = key_node.value
        if key in own:
            first = line_of(own[key][0])
            where = f"{path}.{key}" if path else key
            issues.append(
                Issue(
                    file, line_of(key_node), where, f"duplicate key (first given on line {first})"
                )
            )
            continue
        own[key] = (key_node, value_node)
    seen = set(own)
    for key, key_node, value_node in merged:
        if key not in seen:
            seen.add(key)
            yield key, key_node, value_node
    for key, (key_node, value_node) in own.items():
        yield key, key_node, value_node


def _merge_sources(
    value: Node, issues: list[Issue], file: str, path: str
) -> list[tuple[str, Node, Node]]:
    sources = value.value if isinstance(value, SequenceNode) else [value]
    out: list[tuple[str, Node, Node]] = []
    for source in sources:
        if not isinstance(source, MappingNode):
            issues.append(Issue(file, line_of(source), path, "'<<' merges only mappings"))
            continue
        out.extend(mapping_items(source, issues, file, path))
    return out
