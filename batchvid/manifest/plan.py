"""A manifest, read, expanded and prevalidated: the plan a batch will follow.

``load_plan(path)`` is the one entry point: it reads the file, parses it,
expands it, checks every job, prices it and checks the budget.  It returns a
:class:`Plan` (warnings included) or raises :class:`ManifestError` with every
issue found, so nothing is ever submitted from a manifest with an error.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Issue, ManifestError
from .expand import Expansion, JobSpec, Merge, expand
from .model import BATCH_NAME, Manifest
from .parse import parse_manifest
from .source import MappingNode, ScalarNode, read_source

__all__ = ["ModelTotals", "Plan", "Totals", "batch_name_of", "load_plan", "price_per_second"]


def price_per_second(
    pricing: dict[str, float | dict[str, float]], model: str, resolution: str
) -> float | None:
    """The USD price of one output second, or ``None`` when the manifest gives none.

    A pricing key matches a model id exactly, or as a prefix of it
    (``doubao-seedance-2-0`` also prices ``doubao-seedance-2-0-fast`` unless that
    has a price of its own); the longest match wins.
    """
    best: str | None = None
    for key in pricing:
        if (model == key or model.startswith(key + "-")) and (best is None or len(key) > len(best)):
            best = key
    if best is None:
        return None
    price = pricing[best]
    if isinstance(price, dict):
        return price.get(resolution)
    return price


@dataclass(slots=True)
class ModelTotals:
    jobs: int = 0
    seconds: int = 0
    cost_usd: float | None = 0.0


@dataclass(slots=True)
class Totals:
    jobs: int = 0
    output_seconds: int = 0
    merged_duplicates: int = 0
    cost_usd: float | None = None
    unpriced_models: list[str] = field(default_factory=list)
    budget_usd: float | None = None
    by_model: dict[str, ModelTotals] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "output_seconds": self.output_seconds,
            "merged_duplicates": self.merged_duplicates,
            "cost_usd": _money(self.cost_usd),
            "budget_usd": self.budget_usd,
            "unpriced_models": self.unpriced_models,
            "by_model": {
                model: {"jobs": t.jobs, "seconds": t.seconds, "cost_usd": _money(t.cost_usd)}
                for model, t in self.by_model.items()
            },
        }


def _money(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(slots=True)
class Plan:
    """The validated jobs of a manifest, their totals, and any warnings."""

    manifest: Manifest
    jobs: list[JobSpec]
    totals: Totals
    warnings: list[Issue]
    merges: list[Merge]

    @property
    def batch(self) -> str:
        return self.manifest.batch

    def cost_of(self, job: JobSpec) -> float | None:
        price = price_per_second(self.manifest.pricing, job.model, job.resolution)
        return None if price is None else price * job.seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "manifest": str(self.manifest.path),
            "jobs": [
                {
                    "key": job.key,
                    "index": job.index,
                    "prompt_id": job.prompt_id,
                    "take": job.take,
                    "prompt": job.prompt,
                    "model": job.model,
                    "seconds": job.seconds,
                    "size": job.size,
                    "resolution": job.resolution,
                    "input_reference": [r.name for r in job.references],
                    "est_cost_usd": _money(self.cost_of(job)),
                }
                for job in self.jobs
            ],
            "totals": self.totals.to_json(),
            "warnings": [str(w) for w in self.warnings],
        }


def _totals(manifest: Manifest, expansion: Expansion) -> Totals:
    totals = Totals(
        jobs=len(expansion.jobs),
        merged_duplicates=expansion.merged,
        budget_usd=manifest.budget_usd,
    )
    jobs_by: Counter[tuple[str, str]] = Counter()
    seconds_by: Counter[tuple[str, str]] = Counter()
    for job in expansion.jobs:
        jobs_by[job.model, job.resolution] += 1
        seconds_by[job.model, job.resolution] += job.seconds
    unpriced: set[str] = set()
    cost = 0.0
    for (model, resolution), seconds in seconds_by.items():
        t = totals.by_model.setdefault(model, ModelTotals())
        t.jobs += jobs_by[model, resolution]
        t.seconds += seconds
        totals.output_seconds += seconds
        price = price_per_second(manifest.pricing, model, resolution)
        if price is None:
            unpriced.add(model)
            t.cost_usd = None
        else:
            cost += price * seconds
            if t.cost_usd is not None:
                t.cost_usd += price * seconds
    totals.unpriced_models = sorted(unpriced)
    if manifest.pricing and not unpriced:
        totals.cost_usd = cost
    elif manifest.pricing:
        totals.cost_usd = None
    return totals


def _budget_issues(manifest: Manifest, totals: Totals) -> list[Issue]:
    if manifest.budget_usd is None or not totals.jobs:
        return []
    line = manifest.lines.get("budget_usd", 1)
    if totals.unpriced_models:
        return [
            Issue(
                manifest.file,
                line,
                "budget_usd",
                "a budget needs a price for every model used; `pricing` has none for "
                + ", ".join(totals.unpriced_models),
            )
        ]
    if totals.cost_usd is not None and totals.cost_usd > manifest.budget_usd:
        return [
            Issue(
                manifest.file,
                line,
                "budget_usd",
                f"the plan's estimated cost ${totals.cost_usd:,.2f} exceeds the budget of "
                f"${manifest.budget_usd:,.2f} ({totals.jobs} jobs, {totals.output_seconds} s)",
            )
        ]
    return []


def batch_name_of(path: str | Path) -> str | None:
    """The ``batch:`` a manifest names, even when the rest of it does not validate."""
    source, _ = read_source(Path(path))
    if source is None or not isinstance(source.root, MappingNode):
        return None
    for key, value in source.root.value:  # the one key: never the prompts, nor their files
        if isinstance(key, ScalarNode) and key.value == "batch" and isinstance(value, ScalarNode):
            name = str(value.value).strip()
            return name if BATCH_NAME.match(name) else None
    return None


@contextmanager
def _collection_paused() -> Iterator[None]:
    """No cyclic garbage collection while a plan is built: it only allocates (none of it
    is garbage yet), and collecting every few hundred objects costs a sixth of the time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_plan(path: str | Path, *, display: str | None = None) -> Plan:
    """Read, parse, expand and prevalidate the manifest at ``path``.

    Raises :class:`ManifestError` carrying every issue (errors and warnings)
    when any error stands.
    """
    path = Path(path)
    source, issues = read_source(path, display)
    if source is None:
        raise ManifestError(issues)
    with _collection_paused():  # a 100,000-row prompt file makes 100,000s of objects
        manifest, issues = parse_manifest(source)
        expansion = expand(manifest)
    issues.extend(expansion.issues)
    totals = _totals(manifest, expansion)
    issues.extend(_budget_issues(manifest, totals))
    if manifest.prompts and not expansion.jobs and not any(i.severity == "error" for i in issues):
        issues.append(Issue(manifest.file, 1, "prompts", "the manifest expands to no jobs"))
    issues.sort(key=lambda i: (i.file != manifest.file, i.file, i.line, i.severity != "error"))
    if any(i.severity == "error" for i in issues):
        raise ManifestError(issues)
    return Plan(manifest, expansion.jobs, totals, issues, expansion.merged_examples)
