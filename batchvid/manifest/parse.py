"""The version-1 manifest: its shape, read from located YAML nodes.

``parse_manifest`` turns a :class:`~batchvid.manifest.source.Source` into a
:class:`Manifest` and a list of :class:`~batchvid.errors.Issue`; it checks
everything that can be checked field by field (types, unknown keys with near-miss
suggestions, model names, size patterns, reference images by content).  Checks
that need a whole job (a seconds value against *its* model) belong to
:mod:`batchvid.manifest.expand`, which sees the combinations.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Any

from .. import catalogue
from ..errors import Issue, OutputError
from ..outputs.target import output_target
from . import prompt_files
from . import source as nodes
from .model import (
    BATCH_NAME,
    LIMIT_KEYS,
    MAX_RETRIES,
    PROMPT_KEYS,
    RETRY_KEYS,
    SETTING_KEYS,
    TOP_KEYS,
    Limits,
    Manifest,
    PromptEntry,
    Retries,
    Setting,
    suggest,
)
from .reader import FieldReader
from .source import Node, Source

__all__ = ["parse_manifest"]


class _Parser(FieldReader):
    """Walks the located node graph of a whole manifest."""

    def parse(self, root: Node) -> Manifest:
        m = self.m
        if not isinstance(root, nodes.MappingNode):
            self.error(root, "", f"a manifest must be a mapping of keys, not {nodes.kind(root)}")
            return m
        present: dict[str, Node] = {}
        for key, key_node, value in nodes.mapping_items(root, self.issues, self.file, ""):
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
            m.lines[key] = nodes.line_of(key_node)
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
            if name is not None and not BATCH_NAME.match(name):
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
                m.output_dir = self.output(present["output_dir"], out)
        if "defaults" in present:
            m.defaults = self.settings(present["defaults"], "defaults")
        if "matrix" in present:
            m.matrix = self.matrix(present["matrix"], "matrix")
        if "repeat" in present:
            m.repeat = self.repeat(present["repeat"], "repeat") or 1
        if "limits" in present:
            m.limits = self.limits(present["limits"])
        if "retry" in present:
            m.retry = self.retry(present["retry"])
        if "pricing" in present:
            m.pricing = self.pricing(present["pricing"])
        if "budget_usd" in present:
            m.budget_usd = self.number(present["budget_usd"], "budget_usd", strict=True)
        if "prompts" in present:
            m.prompts = self.prompts(present["prompts"])
        return m

    def output(self, node: Node, text: str) -> Path | str | None:
        """``output_dir``: a folder (relative to the manifest), or a store's ``s3://`` URI
        (kept as written); any other URL is an error here, not a folder named after it."""
        try:
            target = output_target(text, self.base)
        except OutputError as exc:
            self.error(node, "output_dir", str(exc))
            return None
        return target.uri if target.is_store else target.path

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

    def retry(self, node: Node) -> Retries:
        """``retry: {error: 2, failed: 0, vanished: 1, stalled: 0}``: keys left out keep
        their defaults."""
        values: dict[str, int] = {}
        for key, key_node, value in self.items(node, "retry"):
            where = f"retry.{key}"
            if key not in RETRY_KEYS:
                never = (
                    "; in_doubt jobs are never retried automatically" if key == "in_doubt" else ""
                )
                message = f"unknown outcome{suggest(key, RETRY_KEYS, listing=True)}{never}"
                self.error(key_node, where, message)
                continue
            count = self.number(value, where, integer=True, minimum=0)
            if count is not None and count > MAX_RETRIES:
                self.error(value, where, f"at most {MAX_RETRIES} new attempts, not {count}")
            elif count is not None:
                values[key] = count
        return Retries(**values)

    def pricing(self, node: Node) -> dict[str, float | dict[str, float]]:
        prices: dict[str, float | dict[str, float]] = {}
        for key, key_node, value in self.items(node, "pricing"):
            where = f"pricing.{key}"
            if not any(m == key or m.startswith(key + "-") for m in catalogue.MODELS):
                self.error(
                    key_node, where, f"prices an unknown model{suggest(key, catalogue.MODELS)}"
                )
                continue
            if isinstance(value, nodes.MappingNode):
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
        if isinstance(node, nodes.MappingNode) and _is_file_ref(node):
            node = nodes.SequenceNode("tag:yaml.org,2002:seq", [node], start_mark=node.start_mark)
        if not isinstance(node, nodes.SequenceNode):
            self.error(
                node,
                "prompts",
                f"must be a list of prompts (or {{file: prompts.csv}}), not {nodes.kind(node)}",
            )
            return []
        if not node.value:
            self.error(node, "prompts", "must list at least one prompt")
            return []
        entries: list[PromptEntry] = []
        ids: dict[str, str] = {}
        for position, item in enumerate(node.value):
            if isinstance(item, nodes.MappingNode) and _is_file_ref(item):
                found = self.prompt_file(item, position)
            else:
                entry = self.prompt(position, item)
                found = [] if entry is None else [entry]
            for entry in found:
                if entry.id is not None and entry.id in ids:
                    self.error_at(
                        entry.file or self.file,
                        entry.line,
                        entry.field("id"),
                        f"duplicate prompt id {entry.id!r} (also {ids[entry.id]})",
                    )
                    continue
                if entry.id is not None:
                    ids[entry.id] = entry.path
                entries.append(entry)
        return entries

    def prompt_file(self, node: nodes.MappingNode, position: int) -> list[PromptEntry]:
        """``{file: prompts.csv}``: every row of the file (see :mod:`.prompt_files`)."""
        path = f"prompts[{position}]"
        written: str | None = None
        for key, key_node, value in self.items(node, path):
            if key == "file":
                written = self.text(value, f"{path}.file", "a prompt file path")
            else:
                message = "a prompt file reference takes only `file:`; set fields per column"
                self.error(key_node, f"{path}.{key}", message)
        if written is None:
            return []
        try:
            target = self.base / Path(written).expanduser()
        except (RuntimeError, ValueError) as exc:  # ~nosuchuser/..., a NUL in the path
            self.error(node, f"{path}.file", f"cannot use the path {written!r}: {exc}")
            return []
        name = str(Path(self.file).parent / written)
        found = prompt_files.read_rows(target, name)
        if found.issues:  # every row that could be read is still checked: every error at once
            self.issues.extend(_located(found.issues, nodes.line_of(node), self.file, path))
            self.m.invalid.add(path)
        if not found.rows:
            return []
        self.m.sha256 = _with_file(self.m.sha256, found.sha256)
        return prompt_files.row_entries(self, found.rows, name, position)

    def prompt(self, position: int, node: Node) -> PromptEntry | None:
        path = f"prompts[{position}]"
        if isinstance(node, nodes.ScalarNode):
            text = self.text(node, path, "a prompt")
            return None if text is None else PromptEntry(position, text, nodes.line_of(node))
        if not isinstance(node, nodes.MappingNode):
            self.error(
                node,
                path,
                f"must be a prompt text or a mapping with `prompt:`, not {nodes.kind(node)}",
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
            position, text, nodes.line_of(fields["prompt"]), prompt_id, settings, axes, repeat
        )


def _is_file_ref(node: nodes.MappingNode) -> bool:
    return any(
        isinstance(k, nodes.ScalarNode) and k.value == "file" for k, _ in node.value
    ) and not any(isinstance(k, nodes.ScalarNode) and k.value == "prompt" for k, _ in node.value)


def _located(problems: list[Issue], line: int, manifest: str, path: str) -> list[Issue]:
    """A prompt file's problems; those of the whole file (line 0) point at the manifest's
    ``file:`` line too, so the reference itself can be found."""
    return [
        Issue(manifest, line, f"{path}.file", f"{p.file}: {p.message}") if not p.line else p
        for p in problems
    ]


def _with_file(digest: str, file_sha256: str) -> str:
    """The manifest's fingerprint, folding in a prompt file's (an edited spreadsheet is
    an edited batch)."""
    return hashlib.sha256(f"{digest}:{file_sha256}".encode()).hexdigest()


def parse_manifest(source: Source) -> tuple[Manifest, list[Issue]]:
    """Parse a composed manifest; returns it with every issue found (errors and warnings)."""
    parser = _Parser(source)
    manifest = parser.parse(source.root)
    return manifest, parser.issues
