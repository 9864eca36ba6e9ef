"""`batchvid validate` and `batchvid plan`: exit codes, messages, JSON, shipped examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchvid.cli import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests").glob("*.yaml"))


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_there_are_at_least_three_examples() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"minimal", "matrix", "image-to-video"} <= names


@pytest.mark.parametrize("manifest", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_example_validates(manifest: Path) -> None:
    code, out, err = invoke("validate", str(manifest))
    assert code == 0, err
    assert "valid:" in out
    assert err == ""


def test_matrix_example_plan_json_lists_the_expected_jobs() -> None:
    code, out, _ = invoke("plan", str(ROOT / "manifests" / "matrix.yaml"), "--json")
    assert code == 0
    data = json.loads(out)
    # 3 prompts x 2 models x 2 sizes x 2 styles x 2 takes
    assert len(data["jobs"]) == 48 == data["totals"]["jobs"]
    assert data["batch"] == "coastal-lookbook"
    job = data["jobs"][0]
    assert {
        "key", "index", "prompt", "model", "seconds", "size", "resolution", "input_reference"
    } <= set(job)  # fmt: skip
    assert data["totals"]["output_seconds"] == sum(j["seconds"] for j in data["jobs"])
    assert data["totals"]["cost_usd"] == pytest.approx(17.92)
    assert set(data["totals"]["by_model"]) == {
        "doubao-seedance-2-0-fast",
        "doubao-seedance-1-5-pro",
    }


def test_image_example_lists_references_in_order() -> None:
    _, out, _ = invoke("plan", str(ROOT / "manifests" / "image-to-video.yaml"), "--json")
    refs = [j["input_reference"] for j in json.loads(out)["jobs"]]
    assert refs == [["refs/lighthouse.jpg"], ["refs/palette.png", "refs/texture.webp"], []]


def test_plan_table_shows_totals_and_merges(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "batch: b\ndefaults: {model: doubao-seedance-2-0}\nprompts: [same, same, other]\n"
        "pricing: {doubao-seedance-2-0: 0.1}\n"
    )
    code, out, _ = invoke("plan", str(path))
    assert code == 0
    assert "jobs 2   output seconds 10" in out
    assert "1 identical requests merged" in out and "prompts[1]" in out
    assert "estimated cost $1.00" in out


def test_plan_limit_truncates_the_table_but_not_the_totals(tmp_path: Path) -> None:
    code, out, _ = invoke("plan", str(ROOT / "manifests" / "matrix.yaml"), "--limit", "5")
    assert code == 0 and "... and 43 more" in out and "jobs 48" in out


def test_invalid_manifest_exits_2_with_located_errors_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "batch: b\ndefaults: {model: doubao-seedance-1-0-pro, resolutoin: 720p}\nprompts:\n"
        "  - prompt: x\n    seconds: 12\n"
    )
    for command in ("validate", "plan"):
        code, out, err = invoke(command, str(path))
        assert code == 2
        assert out == ""
        lines = err.splitlines()
        assert (
            f"{path}:2: defaults.resolutoin: unknown API field (did you mean `resolution`?)"
            in lines
        )
        assert any(
            line.startswith(f"{path}:5: prompts[0].seconds: 12 s is outside") for line in lines
        )
        assert lines[-1] == "2 errors: nothing was submitted"
        assert "Traceback" not in err


def test_warnings_do_not_fail(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(
        "batch: b\ndefaults: {model: doubao-seedance-2-0, size: 1920x1080}\nprompts: [x]\n"
    )
    code, out, err = invoke("validate", str(path))
    assert code == 0 and "warning:" in err and "valid: 1 job," in out


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe\x00garbage", b"batch: [\n", b"a" * (11 * 1024 * 1024)],
    ids=["empty", "not-utf8", "syntax", "10MB"],
)
def test_bad_files_exit_2_without_traceback(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(content)
    code, out, err = invoke("validate", str(path))
    assert code == 2 and out == "" and err.startswith(f"{path}:")
    assert "Traceback" not in err


def test_missing_manifest_exits_2(tmp_path: Path) -> None:
    code, _, err = invoke("validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such file" in err


def test_every_command_has_help() -> None:
    import click

    ctx = click.Context(cli)
    names = cli.list_commands(ctx)  # the lazily loaded ones too
    assert {"validate", "plan", "run", "status", "retry", "report", "simulator"} <= set(names)
    for name in names:
        command = cli.get_command(ctx, name)
        assert command is not None and command.help, f"{name} has no help text"
        code, out, _ = invoke(name, "--help")
        assert code == 0 and "Usage:" in out


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batchvid", "validate", str(ROOT / "manifests" / "minimal.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid: 1 job," in result.stdout


def test_package_exports_resolve_lazily() -> None:
    """Every name in ``batchvid.__all__`` resolves (the package imports them on first use)."""
    import batchvid

    for name in batchvid.__all__:
        assert getattr(batchvid, name) is not None, name
    assert set(batchvid.__all__) == {*batchvid._EXPORTS, "__version__"}


def test_status_and_report_do_not_load_the_http_stack(tmp_path: Path) -> None:
    """`batchvid status` imports only the ledger: no httpx, YAML or sqlite-utils."""
    code = (
        "import sys; from batchvid.cli import main\n"
        "try:\n    main(['status', '--ledger', sys.argv[1]])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('httpx', 'yaml', 'sqlite_utils', 'anyio', 'rich')"
        " if m in sys.modules))"
    )
    from batchvid.ledger import Ledger

    ledger = tmp_path / "l.db"
    Ledger(ledger).close()  # created and migrated (this process loads sqlite-utils, not the child)
    out = subprocess.run(
        [sys.executable, "-c", code, str(ledger)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
