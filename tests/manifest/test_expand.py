"""Expansion: counts, precedence, templates, takes, dedupe, and stable job keys."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from batchvid.errors import ManifestError
from batchvid.manifest.expand import job_key
from batchvid.manifest.plan import Plan, load_plan

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def plan_of(tmp_path: Path, text: str, name: str = "m.yaml") -> Plan:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_plan(path)


MATRIX = """\
version: 1
batch: b
defaults: {seconds: 5, resolution: 480p}
matrix:
  model: [doubao-seedance-2-0-fast, doubao-seedance-1-5-pro]
  size: ["16:9", "9:16", "1:1"]
  style: [noir, pastel]
prompts:
  - "a harbour at dawn, {style}"
  - id: lh
    prompt: "a lighthouse, {style}"
repeat: 2
"""


def test_counts_are_the_cartesian_product_times_takes(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, MATRIX)
    assert plan.totals.jobs == 2 * 2 * 3 * 2 * 2 == len(plan.jobs)
    assert plan.totals.output_seconds == 5 * 48
    assert [j.index for j in plan.jobs] == list(range(1, 49))
    assert len({j.key for j in plan.jobs}) == 48
    assert plan.totals.by_model["doubao-seedance-1-5-pro"].jobs == 24
    assert {j.take for j in plan.jobs} == {1, 2}


def test_order_is_prompts_then_matrix_then_takes(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, MATRIX)
    first = plan.jobs[:3]
    assert [(j.prompt, j.model, j.size, j.take) for j in first] == [
        ("a harbour at dawn, noir", "doubao-seedance-2-0-fast", "16:9", 1),
        ("a harbour at dawn, noir", "doubao-seedance-2-0-fast", "16:9", 2),
        ("a harbour at dawn, pastel", "doubao-seedance-2-0-fast", "16:9", 1),
    ]
    assert plan.jobs[-1].prompt_id == "lh"
    assert dict(plan.jobs[0].axes) == {
        "model": "doubao-seedance-2-0-fast",
        "size": "16:9",
        "style": "noir",
    }


def test_precedence_prompt_over_matrix_over_defaults(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """\
        batch: b
        defaults: {model: doubao-seedance-2-0, seconds: 6, size: "4:3", resolution: 480p}
        matrix:
          seconds: [7, 8]
        prompts:
          - plain
          - prompt: pinned
            seconds: 9
            model: doubao-seedance-1-0-pro
        """,
    )
    got = [(j.prompt, j.model, j.seconds, j.size, j.resolution) for j in plan.jobs]
    assert got == [
        ("plain", "doubao-seedance-2-0", 7, "4:3", "480p"),
        ("plain", "doubao-seedance-2-0", 8, "4:3", "480p"),
        # the prompt's own seconds wins over both matrix values: they collapse into one job
        ("pinned", "doubao-seedance-1-0-pro", 9, "4:3", "480p"),
    ]
    assert plan.totals.merged_duplicates == 1


def test_prompt_matrix_replaces_and_extends_the_top_level_axes(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """\
        batch: b
        defaults: {model: doubao-seedance-2-0}
        matrix: {style: [noir, pastel]}
        prompts:
          - "a {style}"
          - prompt: "b {style} {light}"
            matrix: {style: [gold], light: [dawn, dusk]}
        """,
    )
    assert [j.prompt for j in plan.jobs] == ["a noir", "a pastel", "b gold dawn", "b gold dusk"]


def test_identical_requests_are_merged_and_counted(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """\
        batch: b
        defaults: {model: doubao-seedance-2-0}
        prompts:
          - same words
          - "  same words  "
          - {id: again, prompt: same words}
          - different words
        repeat: 2
        """,
    )
    assert [(j.prompt, j.take) for j in plan.jobs] == [
        ("same words", 1),
        ("same words", 2),
        ("different words", 1),
        ("different words", 2),
    ]
    assert plan.totals.merged_duplicates == 4
    assert plan.merges[0].same_as == 1 and plan.merges[0].path == "prompts[1]"


def test_explicit_api_defaults_give_the_same_key_as_omitted_ones(tmp_path: Path) -> None:
    implicit = plan_of(tmp_path, "batch: b\ndefaults: {model: doubao-seedance-2-0}\nprompts: [x]\n")
    explicit = plan_of(
        tmp_path,
        "batch: b\ndefaults: {model: doubao-seedance-2-0, seconds: 5, size: '16:9', "
        "resolution: 720p}\nprompts: [x]\n",
        name="n.yaml",
    )
    assert implicit.jobs[0].key == explicit.jobs[0].key


def test_keys_are_stable_when_prompts_and_matrix_values_are_reordered(tmp_path: Path) -> None:
    original = plan_of(tmp_path, MATRIX)
    reordered = plan_of(
        tmp_path,
        """\
        version: 1
        batch: renamed-batch
        repeat: 2
        prompts:
          - id: lh
            prompt: "a lighthouse, {style}"
          - "a harbour at dawn, {style}"
        matrix:
          style: [pastel, noir]
          size: ["1:1", "16:9", "9:16"]
          model: [doubao-seedance-1-5-pro, doubao-seedance-2-0-fast]
        defaults: {resolution: 480p, seconds: 5}
        """,
        name="other.yaml",
    )

    def by_key(plan: Plan) -> dict[str, tuple[str, str, int, str, str, int]]:
        return {
            j.key: (j.prompt, j.model, j.seconds, j.size, j.resolution, j.take) for j in plan.jobs
        }

    assert by_key(original) == by_key(reordered)
    assert [j.key for j in original.jobs] != [j.key for j in reordered.jobs]


def test_keys_depend_on_reference_bytes_not_names(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "copy.png").write_bytes(PNG)
    text = (
        "batch: b\ndefaults: {model: doubao-seedance-2-0}\nprompts:\n"
        "  - prompt: x\n    input_reference: %s\n"
    )
    first = plan_of(tmp_path, text % "a.png").jobs[0].key
    assert plan_of(tmp_path, text % "copy.png", name="n.yaml").jobs[0].key == first
    (tmp_path / "a.png").write_bytes(PNG + b"changed")
    assert plan_of(tmp_path, text % "a.png", name="o.yaml").jobs[0].key != first


def test_key_covers_every_request_field_and_the_take() -> None:
    base = ("p", "doubao-seedance-2-0", 5, "16:9", "720p", ["abc"], 1)
    key = job_key(*base)
    for i, changed in enumerate(("q", "doubao-seedance-2-0-fast", 6, "9:16", "480p", ["abd"], 2)):
        variant = list(base)
        variant[i] = changed
        assert job_key(*variant) != key, i  # type: ignore[arg-type]


def test_template_escapes_and_undeclared_braces(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """\
        batch: b
        defaults: {model: doubao-seedance-2-0}
        matrix: {style: [noir]}
        prompts: ["{{style}} is literal, {style} is not; { spaced } and {1} stay"]
        """,
    )
    assert plan.jobs[0].prompt == "{style} is literal, noir is not; { spaced } and {1} stay"


def test_prompt_repeat_overrides_the_manifest_repeat(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """\
        batch: b
        defaults: {model: doubao-seedance-2-0}
        repeat: 3
        prompts: [a, {prompt: b, repeat: 1}]
        """,
    )
    assert [(j.prompt, j.take) for j in plan.jobs] == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]


def test_pricing_by_prefix_and_resolution(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """\
        batch: b
        matrix:
          model: [doubao-seedance-2-0-fast, doubao-seedance-1-5-pro]
          resolution: [480p, 720p]
        defaults: {seconds: 10}
        prompts: [x]
        pricing:
          doubao-seedance-2-0: 0.1
          doubao-seedance-1-5-pro: {480p: 0.02, 720p: 0.05}
        """,
    )
    assert [round(plan.cost_of(j) or -1, 4) for j in plan.jobs] == [1.0, 1.0, 0.2, 0.5]
    assert plan.totals.cost_usd is not None and round(plan.totals.cost_usd, 4) == 2.7


def test_over_a_million_jobs_is_refused(tmp_path: Path) -> None:
    values = ", ".join(f"v{i}" for i in range(1000))
    path = tmp_path / "m.yaml"
    path.write_text(
        f"batch: b\ndefaults: {{model: doubao-seedance-2-0}}\nmatrix:\n  a: [{values}]\n"
        f"  b: [{values}]\nprompts: ['{{a}} {{b}}']\nrepeat: 2\n"
    )
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    assert "2,000,000 jobs" in str(info.value)
