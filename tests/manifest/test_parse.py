"""Manifest reading and prevalidation: every rule, located at FILE:LINE."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from batchvid.errors import Issue, ManifestError
from batchvid.manifest.plan import Plan, load_plan
from batchvid.manifest.source import MAX_MANIFEST_BYTES

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32

HEAD = "version: 1\nbatch: b\n"


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(path: Path) -> list[Issue]:
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    return [i for i in info.value.issues if i.severity == "error"]


def plan_of(tmp_path: Path, text: str) -> Plan:
    return load_plan(write(tmp_path, text))


def one_error(tmp_path: Path, text: str) -> Issue:
    found = errors_of(write(tmp_path, text))
    assert len(found) == 1, [str(i) for i in found]
    return found[0]


def test_minimal_manifest_uses_api_defaults(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [hello]\n")
    (job,) = plan.jobs
    assert (job.model, job.seconds, job.size, job.resolution) == (
        "doubao-seedance-2-0",
        5,
        "16:9",
        "720p",
    )
    assert job.prompt == "hello" and job.index == 1 and job.take == 1
    assert plan.warnings == []


def test_unquoted_ratio_is_read_as_written(tmp_path: Path) -> None:
    # YAML 1.1 reads 16:9 as the base-60 integer 969; the manifest means the ratio.
    plan = plan_of(
        tmp_path, HEAD + "defaults: {model: doubao-seedance-2-0, size: 9:16}\nprompts: [x]\n"
    )
    assert plan.jobs[0].size == "9:16"


@pytest.mark.parametrize(
    ("body", "line", "path", "fragment"),
    [
        ("batch: b\ndefaults: {model: doubao-seedance-2-0}\nprompts: [x]\nresolutoin: 720p\n", 4,
         "resolutoin", "did you mean `resolution`"),
        (HEAD + "defaults: {model: doubao-seedance-2-0, resolutoin: 720p}\nprompts: [x]\n", 3,
         "defaults.resolutoin", "did you mean `resolution`"),
        (HEAD + "defaults: {model: doubao-seedance-2-o}\nprompts: [x]\n", 3, "defaults.model",
         "did you mean `doubao-seedance-2-0`"),
        (HEAD + "defaults: {model: doubao-seedance-2-0, seconds: 5s}\nprompts: [x]\n", 3,
         "defaults.seconds", "whole number of seconds"),
        (HEAD + "defaults: {model: doubao-seedance-2-0, seconds: 16}\nprompts: [x]\n", 3,
         "defaults.seconds", "outside the API's 2-15"),
        (HEAD + "defaults: {model: doubao-seedance-2-0, size: '17:9'}\nprompts: [x]\n", 3,
         "defaults.size", "neither a ratio"),
        (HEAD + "defaults: {model: doubao-seedance-2-0, resolution: 720}\nprompts: [x]\n", 3,
         "defaults.resolution", "write 720p"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: []\n", 4, "prompts",
         "at least one prompt"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: ['  ']\n", 4, "prompts[0]",
         "must not be empty"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: {a: b}\n", 4, "prompts",
         "must be a list"),
        (HEAD + "defaults: [model]\nprompts: [x]\n", 3, "defaults", "must be a mapping"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts:\n  - [a, b]\n", 5,
         "prompts[0]", "prompt text or a mapping"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts:\n  - {id: a}\n", 5,
         "prompts[0].prompt", "required"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts:\n  - {prompt: a, sconds: 5}\n",
         5, "prompts[0].sconds", "did you mean `seconds`"),
        ("version: 2\nbatch: b\ndefaults: {model: doubao-seedance-2-0}\nprompts: [x]\n", 1,
         "version", "unsupported manifest version"),
        ("version: 1\ndefaults: {model: doubao-seedance-2-0}\nprompts: [x]\n", 1, "batch",
         "required"),
        ("version: 1\nbatch: 'a b/c'\ndefaults: {model: doubao-seedance-2-0}\nprompts: [x]\n", 2,
         "batch", "not a usable batch name"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [x]\nrepeat: 0\n", 5, "repeat",
         "at least 1"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [x]\nlimits: {concurency: 2}\n",
         5, "limits.concurency", "did you mean `concurrency`"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [x]\n"
         "limits: {rate_per_minute: 0}\n", 5, "limits.rate_per_minute", "greater than 0"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [x]\nlimits: {max_wait: soon}\n",
         5, "limits.max_wait", "duration"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [x]\n"
         "limits: {poll_interval: 2s}\n", 5, "limits.poll_interval", "tighter than the docs'"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [x]\npricing: {gpt: 1}\n", 5,
         "pricing.gpt", "unknown model"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [x]\nbudget_usd: -3\n", 5,
         "budget_usd", "greater than 0"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nmatrix: {size: '16:9'}\nprompts: [x]\n",
         4, "matrix.size", "non-empty list"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nmatrix: {prompt: [a]}\nprompts: [x]\n",
         4, "matrix.prompt", "cannot vary"),
        (HEAD + "prompts: [x]\n", 3, "prompts[0].model", "no model"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [x]\nprompts: [y]\n", 5,
         "prompts", "duplicate key"),
        (HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [!!python/object:os.system x]\n",
         4, "prompts[0]", "unsupported YAML value"),
    ],
)  # fmt: skip
def test_each_rule_is_reported_at_its_line(
    tmp_path: Path, body: str, line: int, path: str, fragment: str
) -> None:
    issue = one_error(tmp_path, body)
    assert (issue.line, issue.path) == (line, path), str(issue)
    assert fragment in issue.message
    assert str(issue).startswith(f"{tmp_path / 'm.yaml'}:{line}: {path}:")


def test_model_rules_are_checked_per_combination(tmp_path: Path) -> None:
    found = errors_of(
        write(
            tmp_path,
            HEAD
            + textwrap.dedent("""\
            matrix:
              model: [doubao-seedance-1-0-pro, doubao-seedance-2-0]
              seconds: [3, 12]
            prompts: [x]
            """),
        )
    )
    messages = {(i.line, i.path, i.message.split(" (")[0]) for i in found}
    assert messages == {
        (5, "matrix.seconds[0]", "3 s is outside doubao-seedance-2-0's range of 4-15 s"),
        (5, "matrix.seconds[1]", "12 s is outside doubao-seedance-1-0-pro's range of 2-10 s"),
    }


def test_1080p_on_a_2_0_model(tmp_path: Path) -> None:
    issue = one_error(
        tmp_path, HEAD + "defaults: {model: doubao-seedance-2-0-fast}\nprompts:\n"
        "  - {prompt: x, resolution: 1080p}\n"
    )  # fmt: skip
    assert issue.path == "prompts[0].resolution" and issue.line == 5
    assert "does not render 1080p" in issue.message and "doubao-seedance-1-5-pro" in issue.message


def test_references_only_on_2_0_models(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    issue = one_error(
        tmp_path,
        HEAD + "defaults: {model: doubao-seedance-1-5-pro}\nprompts:\n"
        "  - prompt: x\n    input_reference: a.png\n",
    )
    assert issue.path == "prompts[0].input_reference" and issue.line == 6
    assert "text-to-video only" in issue.message and "defaults.model" in issue.message


def test_references_are_checked_by_content_and_existence(tmp_path: Path) -> None:
    (tmp_path / "real.jpg").write_bytes(JPEG)
    (tmp_path / "fake.png").write_bytes(b"GIF89a not really")
    (tmp_path / "dir.png").mkdir()
    found = errors_of(
        write(
            tmp_path,
            HEAD
            + textwrap.dedent("""\
            defaults: {model: doubao-seedance-2-0}
            prompts:
              - prompt: x
                input_reference: [real.jpg, fake.png, missing.webp, dir.png]
            """),
        )
    )
    by_path = {i.path: i.message for i in found}
    assert set(by_path) == {
        "prompts[0].input_reference[1]",
        "prompts[0].input_reference[2]",
        "prompts[0].input_reference[3]",
    }
    assert "not a JPEG, PNG or WebP" in by_path["prompts[0].input_reference[1]"]
    assert "not found" in by_path["prompts[0].input_reference[2]"]
    assert "directory" in by_path["prompts[0].input_reference[3]"]


def test_all_three_image_formats_are_accepted_in_order(tmp_path: Path) -> None:
    for name, data in (("a.jpg", JPEG), ("b.png", PNG), ("c.webp", WEBP)):
        (tmp_path / name).write_bytes(data)
    plan = plan_of(
        tmp_path,
        HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts:\n"
        "  - prompt: '[Image 1] [Image 2] [Image 3]'\n"
        "    input_reference: [c.webp, a.jpg, b.png]\n",
    )
    refs = plan.jobs[0].references
    assert [r.name for r in refs] == ["c.webp", "a.jpg", "b.png"]
    assert [r.content_type for r in refs] == ["image/webp", "image/jpeg", "image/png"]
    assert refs[0].path == (tmp_path / "c.webp").resolve()


def test_undefined_template_variable(tmp_path: Path) -> None:
    issue = one_error(
        tmp_path,
        HEAD + "defaults: {model: doubao-seedance-2-0}\nmatrix: {style: [a]}\n"
        "prompts: ['a {styl} shot']\n",
    )
    assert issue.path == "prompts[0].prompt" and issue.line == 5
    assert "{styl}" in issue.message and "did you mean `style`" in issue.message


def test_unknown_matrix_key_near_an_api_field_is_an_error(tmp_path: Path) -> None:
    issue = one_error(
        tmp_path,
        HEAD + "defaults: {model: doubao-seedance-2-0}\nmatrix: {resolutoin: [480p]}\n"
        "prompts: [x]\n",
    )
    assert issue.path == "matrix.resolutoin" and "did you mean `resolution`" in issue.message


def test_unused_template_axis_warns(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        HEAD + "defaults: {model: doubao-seedance-2-0}\nmatrix: {mood: [a, b]}\nprompts: [x]\n",
    )
    assert len(plan.jobs) == 1 and plan.totals.merged_duplicates == 1
    assert [w.path for w in plan.warnings] == ["matrix.mood"]


def test_undocumented_exact_size_is_a_warning_not_an_error(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        HEAD + "defaults: {model: doubao-seedance-2-0, size: 1920x1080}\nprompts: [x]\n",
    )
    (warning,) = plan.warnings
    assert warning.severity == "warning" and warning.path == "defaults.size"
    assert "not a documented doubao-seedance-2-0 size at 720p" in warning.message
    documented = plan_of(
        tmp_path,
        HEAD + "defaults: {model: doubao-seedance-1-0-pro, size: 1248x704}\nprompts: [x]\n",
    )
    assert documented.warnings == []


def test_duplicate_prompt_ids(tmp_path: Path) -> None:
    issue = one_error(
        tmp_path,
        HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts:\n"
        "  - {id: a, prompt: x}\n  - {id: a, prompt: y}\n",
    )
    assert issue.path == "prompts[1].id" and "duplicate prompt id 'a'" in issue.message


def test_budget_exceeded(tmp_path: Path) -> None:
    issue = one_error(
        tmp_path,
        HEAD + "defaults: {model: doubao-seedance-2-0, seconds: 10}\nprompts: [x, y]\n"
        "pricing: {doubao-seedance-2-0: 0.5}\nbudget_usd: 9\n",
    )
    assert issue.path == "budget_usd" and issue.line == 6
    assert "$10.00 exceeds the budget of $9.00" in issue.message


def test_budget_needs_a_price_for_every_model(tmp_path: Path) -> None:
    issue = one_error(
        tmp_path,
        HEAD + "matrix: {model: [doubao-seedance-2-0, doubao-seedance-1-0-pro]}\nprompts: [x]\n"
        "pricing: {doubao-seedance-2-0: 0.1}\nbudget_usd: 100\n",
    )
    assert "doubao-seedance-1-0-pro" in issue.message


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    found = errors_of(
        write(
            tmp_path,
            textwrap.dedent("""\
            batch: b
            defaults: {model: doubao-seedance-9, seconds: 1}
            prompts: ['', 'a {x}']
            repeat: -1
            """),
        )
    )
    assert {i.path for i in found} == {
        "defaults.model",
        "defaults.seconds",
        "prompts[0]",
        "prompts[1].prompt",
        "repeat",
    }


def test_merge_keys_and_anchors_work(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        HEAD
        + textwrap.dedent("""\
        defaults: &base {model: doubao-seedance-1-0-pro, seconds: 3}
        prompts:
          - prompt: x
            <<: *base
            seconds: 4
        """),
    )
    assert (plan.jobs[0].model, plan.jobs[0].seconds) == ("doubao-seedance-1-0-pro", 4)


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        (b"", 1, "empty"),
        (b"# only a comment\n", 1, "no content"),
        (b"batch: b\nprompts: [a\n", 3, "YAML syntax error"),
        (b"batch: b\nprompts:\n  - caf\xe9\n", 3, "not UTF-8"),
        (b"- just\n- a list\n", 1, "must be a mapping"),
        (b"batch: b\n---\nbatch: c\n", 2, "YAML syntax error"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes, line: int, fragment: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(content)
    (issue,) = errors_of(path)
    assert issue.line == line and fragment in issue.message, str(issue)


def test_missing_file(tmp_path: Path) -> None:
    (issue,) = errors_of(tmp_path / "nope.yaml")
    assert str(issue) == f"{tmp_path / 'nope.yaml'}: no such file"


def test_a_10_mb_manifest_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    prompt = "  - " + "a" * 200 + "\n"
    path.write_text("batch: b\nprompts:\n" + prompt * (10 * 1024 * 1024 // len(prompt)))
    assert path.stat().st_size > MAX_MANIFEST_BYTES
    (issue,) = errors_of(path)
    assert issue.line == 1 and "MiB" in issue.message and "split" in issue.message


def test_alias_bomb_does_not_hang(tmp_path: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 9):
        prev, cur = chr(ord("a") + n - 1), chr(ord("a") + n)
        levels.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path = write(tmp_path, "\n".join(levels) + "\nbatch: b\nprompts: *i\n")
    found = errors_of(path)
    assert any(i.path.startswith("prompts[") for i in found)
    assert len(found) < 50


def test_the_retry_policy_defaults_and_overrides(tmp_path: Path) -> None:
    base = HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [hello]\n"
    assert plan_of(tmp_path, base).manifest.retry.as_dict() == {
        "error": 2,
        "failed": 0,
        "vanished": 1,
        "stalled": 0,
    }
    custom = plan_of(tmp_path, base + "retry: {error: 5, stalled: 1}\n").manifest.retry
    assert custom.as_dict() == {"error": 5, "failed": 0, "vanished": 1, "stalled": 1}
    assert str(custom) == "{error: 5, failed: 0, vanished: 1, stalled: 1}"


def test_retry_errors_are_located_and_in_doubt_is_refused_with_why(tmp_path: Path) -> None:
    text = HEAD + textwrap.dedent("""\
        defaults: {model: doubao-seedance-2-0}
        prompts: [hello]
        retry:
          eror: 1
          in_doubt: 1
          failed: 11
          vanished: -1
          stalled: two
        """)
    found = {i.path: (i.line, i.message) for i in errors_of(write(tmp_path, text))}
    assert found["retry.eror"] == (6, "unknown outcome (did you mean `error`?)")
    assert found["retry.in_doubt"][0] == 7
    assert "never retried automatically" in found["retry.in_doubt"][1]
    assert found["retry.failed"] == (8, "at most 10 new attempts, not 11")
    assert found["retry.vanished"] == (9, "must be at least 0, not -1")
    assert found["retry.stalled"][0] == 10 and "whole number" in found["retry.stalled"][1]
    bad = one_error(
        tmp_path, HEAD + "defaults: {model: doubao-seedance-2-0}\nprompts: [x]\nretry: 3\n"
    )
    assert (bad.path, bad.line, bad.message) == (
        "retry",
        5,
        "must be a mapping of key: value, not a number",
    )
