"""Prompts from a spreadsheet: CSV, TSV, JSON Lines and text files, every problem located
in the file, keys that do not depend on a row's position."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from batchvid.errors import ManifestError
from batchvid.manifest.plan import load_plan
from batchvid.manifest.prompt_files import MAX_PROMPT_FILE_BYTES

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
HEAD = "version: 1\nbatch: b\ndefaults: {model: doubao-seedance-2-0-fast, resolution: 480p}\n"
CSV = (
    "id,prompt,model,seconds,size,resolution,input_reference,repeat,style\n"
    'dawn,"A pier at dawn, {style}",,6,9:16,,,,noir\n'
    'dusk,"A pier at dusk, ""quoted"", {style}",doubao-seedance-2-0,,,720p,a.png;b.png,2,pastel\n'
    "\n"
    ",A plain prompt,,,,,,,\n"
)


def manifest(tmp_path: Path, prompts: str, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + prompts)
    return path


def errors_of(path: Path) -> list[str]:
    """The errors, as printed, with the test's folder left out of file names."""
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    folder = f"{path.parent}/"
    return [str(i).replace(folder, "") for i in info.value.issues if i.severity == "error"]


def refs(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.png").write_bytes(PNG)


def test_a_csv_sets_fields_per_column_and_fills_templates_from_the_rest(tmp_path: Path) -> None:
    refs(tmp_path)
    plan = load_plan(manifest(tmp_path, "prompts: {file: prompts.csv}\n", {"prompts.csv": CSV}))
    assert plan.warnings == []
    dawn, dusk1, dusk2, plain = plan.jobs
    assert (dawn.prompt_id, dawn.prompt, dawn.seconds, dawn.size) == (
        "dawn", "A pier at dawn, noir", 6, "9:16"
    )  # fmt: skip
    assert dawn.model == "doubao-seedance-2-0-fast" and dawn.resolution == "480p"
    assert dusk1.prompt == 'A pier at dusk, "quoted", pastel'
    assert (dusk1.model, dusk1.resolution, dusk1.take, dusk2.take) == (
        "doubao-seedance-2-0", "720p", 1, 2
    )  # fmt: skip
    assert [r.name for r in dusk1.references] == ["a.png", "b.png"]
    assert dict(dawn.axes) == {"style": "noir"}  # the template value, shown in plan and gallery
    assert (plain.prompt_id, plain.prompt, plain.seconds) == (None, "A plain prompt", 5)


def test_tsv_jsonl_and_text_files_read_the_same_prompts(tmp_path: Path) -> None:
    refs(tmp_path)
    tsv = "id\tprompt\tseconds\tstyle\ndawn\tA pier at dawn, {style}\t6\tnoir\n"
    jsonl = (
        json.dumps({"id": "dawn-json", "prompt": "A pier at dawn, {style}", "seconds": 6,
                    "style": "noir"}) + "\n\n"
        + json.dumps({"prompt": "refs", "input_reference": ["a.png", "b.png"],
                      "model": "doubao-seedance-2-0"}) + "\n"
    )  # fmt: skip
    text = "# one prompt per line\nA pier at dawn, noir\n\n  A second prompt  \n"
    files = {"p.tsv": tsv, "p.jsonl": jsonl, "p.txt": text}
    plan = load_plan(
        manifest(
            tmp_path,
            "prompts:\n  - file: p.tsv\n  - file: p.jsonl\n  - file: p.txt\n  - an inline prompt\n",
            files,
        )
    )
    tsv_job, refs_job, text_job, second, inline = plan.jobs
    assert tsv_job.prompt == text_job.prompt == "A pier at dawn, noir"
    assert (tsv_job.prompt_id, tsv_job.seconds, text_job.seconds) == ("dawn", 6, 5)
    assert len(refs_job.references) == 2 and refs_job.model == "doubao-seedance-2-0"
    assert second.prompt == "A second prompt" and inline.prompt == "an inline prompt"
    # The JSON Lines row asks for what the TSV row asks: one job, said in the plan.
    assert plan.totals.merged_duplicates == 1
    assert plan.merges[0].path.endswith("p.jsonl:1")


def test_keys_do_not_depend_on_a_rows_position(tmp_path: Path) -> None:
    rows = [f"p{i},A pier number {i},{4 + i % 6}" for i in range(40)]
    first = tmp_path / "one"
    second = tmp_path / "two"
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)
    shuffled.insert(7, "new,A row inserted in the middle,5")
    header = "id,prompt,seconds\n"
    a = load_plan(manifest(first, "prompts: {file: p.csv}\n", {"p.csv": header + "\n".join(rows)}))
    b = load_plan(
        manifest(second, "prompts: {file: p.csv}\n", {"p.csv": header + "\n".join(shuffled)})
    )
    keys_a = {j.prompt_id: j.key for j in a.jobs}
    keys_b = {j.prompt_id: j.key for j in b.jobs}
    assert len(keys_a) == 40 and len(keys_b) == 41
    assert all(keys_b[pid] == key for pid, key in keys_a.items())


def test_a_prompt_file_edited_changes_the_manifests_fingerprint(tmp_path: Path) -> None:
    path = manifest(tmp_path, "prompts: {file: p.csv}\n", {"p.csv": "prompt\nA pier\n"})
    before = load_plan(path).manifest.sha256
    (tmp_path / "p.csv").write_text("prompt\nA pier at night\n")
    assert load_plan(path).manifest.sha256 != before


# -- every error, with its line ------------------------------------------------------------


def test_a_value_a_model_cannot_render_points_into_the_file(tmp_path: Path) -> None:
    rows = "".join(f"p{i},A pier {i},,\n" for i in range(15))  # lines 2-16
    csv = f"id,prompt,model,seconds\n{rows}x,A lighthouse,doubao-seedance-1-0-pro,12\n"
    found = errors_of(manifest(tmp_path, "prompts: {file: prompts.csv}\n", {"prompts.csv": csv}))
    assert "prompts.csv:17: seconds: 12 s is outside doubao-seedance-1-0-pro's range of 2-10 s" in (
        found
    )


def test_every_error_in_a_file_at_once_each_with_its_line(tmp_path: Path) -> None:
    csv = (
        "id,prompt,model,seconds,size,style\n"
        "a,A pier,doubao-seedance-9,,,\n"  # 2: unknown model
        "b,A pier,,sixty,,\n"  # 3: seconds not a number
        "c,A pier,,,16:10,\n"  # 4: size
        "d,,,,,\n"  # 5: empty prompt
        "e,A pier {mood},,,,\n"  # 6: undefined template variable
        "f,A pier,,5,,\n"
        "g,A pier,,,\n"  # 8: a cell short
        "f,Another,,,,\n"  # 9: duplicate id
    )
    found = errors_of(manifest(tmp_path, "prompts: {file: p.csv}\n", {"p.csv": csv}))
    lines = sorted(int(e.split(":")[1]) for e in found)
    assert lines == [2, 3, 4, 5, 6, 8, 9], found
    assert any("p.csv:2: model: unknown model 'doubao-seedance-9'" in e for e in found)
    assert any("p.csv:3: seconds: must be a whole number of seconds" in e for e in found)
    assert any("p.csv:8: has 5 cells; the header has 6 columns" in e for e in found)
    assert any("p.csv:9: id: duplicate prompt id 'f'" in e for e in found)
    assert any("p.csv:6: prompt: template variable {mood}" in e for e in found)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            'id,prompt\na,"never closed\nb,fine\n',
            "p.csv:2: a quote opened in this row is never closed",
        ),
        ("id,promt\na,x\n", "p.csv:1: promt: unknown column (did you mean `prompt`?)"),
        ("id,prompt,id\na,x,y\n", "p.csv:1: id: column 'id' appears twice (columns 1 and 3)"),
        ("id,text\na,x\n", "p.csv:1: no `prompt` column in the header (columns: id, text)"),
        ("\n\n", "p.csv:1: no prompts in the file"),
        (b"id,prompt\na,caf\xe9\n", "p.csv:2: is not UTF-8 (byte 0xE9"),
        (b"\xff\xfei\x00d\x00", "p.csv:1: is UTF-16 text; save it as UTF-8"),
        (b"PK\x03\x04\x14\x00\x06\x00" + bytes(200), "p.csv:1: is not a text file"),
    ],
    ids=[
        "unclosed quote",
        "near-miss column",
        "duplicate column",
        "no prompt column",
        "empty",
        "latin-1",
        "utf-16",
        "a binary file",
    ],
)
def test_a_broken_csv_gets_a_located_message(
    tmp_path: Path, content: str | bytes, expected: str
) -> None:
    found = errors_of(manifest(tmp_path, "prompts: {file: p.csv}\n", {"p.csv": content}))
    assert any(e.startswith(expected) for e in found), found


def test_a_bom_is_fine(tmp_path: Path) -> None:
    plan = load_plan(manifest(tmp_path, "prompts: {file: p.csv}\n",
                              {"p.csv": b"\xef\xbb\xbfid,prompt\na,caf\xc3\xa9\n"}))  # fmt: skip
    assert plan.jobs[0].prompt_id == "a" and plan.jobs[0].prompt == "café"


def test_jsonl_lines_that_are_not_objects_are_located(tmp_path: Path) -> None:
    jsonl = '{"prompt": "fine"}\n[1, 2]\nnot json\n{"prompt": "x", "sconds": 5}\n'
    found = errors_of(manifest(tmp_path, "prompts: {file: p.jsonl}\n", {"p.jsonl": jsonl}))
    assert found[0].startswith('p.jsonl:2: must be a JSON object with a "prompt", not list')
    assert found[1].startswith("p.jsonl:3: not valid JSON")
    assert found[2].startswith("p.jsonl:4: sconds: unknown key (did you mean `seconds`?)")


def test_a_file_reference_that_cannot_be_used_points_at_the_manifest(tmp_path: Path) -> None:
    for name, expected in (
        ("missing.csv", "prompt file not found"),
        ("p.xlsx", "not a prompt file format this reads"),
    ):
        found = errors_of(manifest(tmp_path, f"prompts:\n  - file: {name}\n", {}))
        assert found[0].startswith(f"m.yaml:5: prompts[0].file: {name}: {expected}"), found
    found = errors_of(manifest(tmp_path, "prompts:\n  - {file: p.csv, seconds: 5}\n",
                               {"p.csv": "prompt\nx\n"}))  # fmt: skip
    assert "takes only `file:`" in found[0]


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "p.csv"
    with big.open("wb") as out:  # sparse: 50 MB on paper, nothing on disk
        out.truncate(50 * 1024 * 1024)
    found = errors_of(manifest(tmp_path, "prompts: {file: p.csv}\n", {}))
    assert f"prompt files are read up to {MAX_PROMPT_FILE_BYTES // 2**20} MiB" in found[0]


def test_the_cli_says_where_and_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = manifest(tmp_path, "prompts: {file: p.csv}\n", {"p.csv": 'prompt\n"open\n'})
    done = subprocess.run(
        [sys.executable, "-m", "batchvid", "validate", str(path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2
    assert "p.csv:2: a quote opened in this row is never closed" in done.stderr
    assert "Traceback" not in done.stderr


# -- odd input never becomes a traceback ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("p.jsonl", '{"prompt": "x \\ud800"}\n', "p.jsonl:1: holds text that is not valid Unicode"),
        ("p.jsonl", "[" * 100_000 + "\n", "p.jsonl:1: not valid JSON"),
        ("p.jsonl", '{"prompt": "a", "prompt": "b"}\n', "p.jsonl:1: not valid JSON: the key"),
        ("p.csv", "prompt,seconds\nx,2024-13-45\n", "p.csv:2: seconds: must be a whole number"),
        ("p.csv", "prompt,seconds\nx," + "9" * 5000 + "\n", "p.csv:2: seconds: must be a whole"),
        ("p.csv", "prompt,repeat\nx,\u00b3\n", "p.csv:2: repeat: must be a whole number"),
        ("p.csv", "prompt,input_reference\nx,~nosuchuser_batchvid/a.png\n",
         "p.csv:2: input_reference: cannot use the path"),
        ("p.jsonl", '{"prompt": "x", "input_reference": ["a.png", null]}\n',
         "p.jsonl:1: input_reference: must be a list of image paths"),
        ("p.csv", 'prompt\n"open\n' + "x" * 300_000 + "\n",
         "p.csv:2: a quote opened in this row is never closed"),
    ],
    ids=["lone surrogate", "deep nesting", "duplicate json key", "a date for seconds",
         "5,000 digits", "a superscript repeat", "an unknown user's home", "a null reference",
         "an open quote before 300 KB"],
)  # fmt: skip
def test_odd_cells_get_located_messages(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    found = errors_of(manifest(tmp_path, f"prompts: {{file: {name}}}\n", {name: content}))
    assert any(e.startswith(expected) for e in found), found


def test_json_lines_with_a_line_separator_inside_a_string_keep_their_line_numbers(
    tmp_path: Path,
) -> None:
    jsonl = (
        json.dumps({"prompt": "two\u2028lines"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"prompt": "x", "seconds": 99})
        + "\n"
    )
    found = errors_of(manifest(tmp_path, "prompts: {file: p.jsonl}\n", {"p.jsonl": jsonl}))
    assert [e.split(": ")[0] for e in found] == ["p.jsonl:2"], found


def test_a_seconds_cell_is_a_plain_number(tmp_path: Path) -> None:
    plan = load_plan(
        manifest(tmp_path, "prompts: {file: p.csv}\n", {"p.csv": "prompt,seconds\nx,08\n"})
    )
    assert plan.jobs[0].seconds == 8  # not YAML 1.1's octal


def test_the_file_key_is_found_wherever_it_is_written(tmp_path: Path) -> None:
    found = errors_of(
        manifest(tmp_path, "prompts:\n  - {seconds: 5, file: p.csv}\n", {"p.csv": "prompt\nx\n"})
    )
    assert len(found) == 1 and "takes only `file:`" in found[0]


def test_a_sheet_with_one_bad_column_is_not_a_hundred_thousand_lines(tmp_path: Path) -> None:
    rows = "".join(f"A pier {i},doubao-seedance-9\n" for i in range(1000))
    found = errors_of(
        manifest(tmp_path, "prompts: {file: p.csv}\n", {"p.csv": "prompt,model\n" + rows})
    )
    assert 200 <= len(found) <= 202
    assert found[-1].endswith("were not checked: fix these 200 first")


def test_a_column_named_like_a_matrix_key_replaces_that_axis_for_its_row(tmp_path: Path) -> None:
    csv = 'prompt,style,prompt_en\n"A pier, {style}",noir,une jetée\n"A dock, {style}",,\n'
    path = manifest(tmp_path, "matrix: {style: [pastel, gold]}\nprompts: {file: p.csv}\n",
                    {"p.csv": csv})  # fmt: skip
    plan = load_plan(path)
    assert [j.prompt for j in plan.jobs] == ["A pier, noir", "A dock, pastel", "A dock, gold"]
    assert plan.totals.merged_duplicates == 0
    assert dict(plan.jobs[0].axes) == {"style": "noir"}  # once, not the axis and the column
