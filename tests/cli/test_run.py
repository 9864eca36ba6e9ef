"""`batchvid run`, `status` and `retry` as a user runs them: real processes, real signals."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from run_helpers import matrix_manifest

from batchvid.cli import cli
from batchvid.ledger import Ledger
from batchvid.sim.config import SimConfig
from batchvid.sim.server import Simulator, SimulatorThread

ROOT = Path(__file__).resolve().parents[2]
SCALE = 0.01


def batchvid(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchvid", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchvid", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
    )


def manifest(tmp_path: Path, prompts: int = 3) -> Path:
    """prompts x 2 models x 5 sizes = 10 jobs per prompt, in batch ``crash``."""
    return matrix_manifest(tmp_path, prompts=prompts, batch="crash")


@pytest.fixture
def external_sim() -> Iterator[Simulator]:
    """A simulator that outlives the batchvid processes under test."""
    with SimulatorThread(SimConfig(time_scale=SCALE, seed=21)) as sim:
        yield sim


def sim_env(sim: Simulator, ledger: Path, key: str | None = None) -> dict[str, str]:
    return {
        "COMETAPI_BASE_URL": sim.base_url,
        "COMETAPI_KEY": key or sim.api_key,
        "BATCHVID_LEDGER": str(ledger),
    }


def run_args(path: Path) -> list[str]:
    return ["run", str(path), "--time-scale", str(SCALE), "--concurrency", "4"]


def check_ledger(ledger: Path) -> None:
    with sqlite3.connect(ledger) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    with Ledger(ledger) as store:
        assert store.reads.verify() == []


def test_simulate_runs_the_shipped_matrix_example(tmp_path: Path) -> None:
    ledger = tmp_path / "state" / "batchvid.db"
    result = batchvid(
        "run", str(ROOT / "manifests" / "matrix.yaml"), "--simulate", "--ledger", str(ledger)
    )
    assert result.returncode == 0, result.stderr
    assert "downloaded=48" in result.stdout
    out = tmp_path / "state" / "videos" / "coastal-lookbook"
    files = sorted(out.glob("*.mp4"))
    assert len(files) == 48 and not list(out.glob("*.part"))
    assert str(out) in result.stdout
    if shutil.which("ffprobe"):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0",
             str(files[0])],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert probe.stdout.strip() == "h264", probe.stderr
    again = batchvid(
        "run", str(ROOT / "manifests" / "matrix.yaml"), "--simulate", "--ledger", str(ledger)
    )
    assert again.returncode == 0 and "(0 new)" in again.stderr


def test_a_refused_key_exits_3_and_fails_no_job(tmp_path: Path, external_sim: Simulator) -> None:
    ledger = tmp_path / "l.db"
    result = batchvid(*run_args(manifest(tmp_path)), env=sim_env(external_sim, ledger, "bad-key"))
    assert result.returncode == 3, result.stderr
    assert "COMETAPI_KEY" in result.stderr and "Traceback" not in result.stderr
    assert "bad-key" not in result.stderr + result.stdout
    with Ledger(ledger) as store:
        assert store.reads.status("crash")["states"]["pending"] == 30
    assert external_sim.stats()["creates"] == 0


def test_no_key_is_a_usage_error(tmp_path: Path) -> None:
    env = {"COMETAPI_KEY": "", "BATCHVID_LEDGER": str(tmp_path / "l.db")}
    result = batchvid("run", str(manifest(tmp_path)), env=env)
    assert result.returncode == 2 and "COMETAPI_KEY" in result.stderr


def test_sigint_stops_cleanly_with_130_and_the_run_resumes(
    tmp_path: Path, external_sim: Simulator
) -> None:
    ledger = tmp_path / "l.db"
    env = sim_env(external_sim, ledger)
    external_sim.configure(time_scale=0.05)  # renders of a few seconds: still busy at SIGINT
    path = manifest(tmp_path)
    process = start(*run_args(path), env=env)
    deadline = time.monotonic() + 30
    while external_sim.stats()["creates"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted" in out and "resumes it" in out
    check_ledger(ledger)
    external_sim.configure(time_scale=SCALE)
    result = batchvid(*run_args(path), env=env)
    assert result.returncode in (0, 1), result.stderr
    with Ledger(ledger) as store:
        states = store.reads.status("crash")["states"]
    assert states["downloaded"] + states["in_doubt"] == 30
    assert external_sim.stats()["duplicate_creates"] == 0


def test_twenty_kills_in_a_night_with_faults_lose_nothing_and_pay_nothing_twice(
    tmp_path: Path, external_sim: Simulator
) -> None:
    ledger = tmp_path / "l.db"
    env = sim_env(external_sim, ledger)
    path = manifest(tmp_path, prompts=5)
    # Renders of 2-6 s and at most 10 live tasks: the batch is busy for ~20 s of run time,
    # so the kills land during submits, polls and downloads alike; and the night is rough.
    external_sim.configure(
        time_scale=0.05,
        p_5xx=0.05,
        p_drop_after_create=0.03,
        p_truncate=0.2,
        p_cdn_error=0.05,
        url_ttl=2.0,
    )
    slow = [*run_args(path), "--time-scale", "0.05", "--max-active", "10"]
    rng = random.Random(1234)
    kills = 0
    for _ in range(24):
        process = start(*slow, env=env)
        time.sleep(rng.uniform(0.3, 1.6))
        if process.poll() is None:
            process.kill()
            kills += 1
        process.communicate(timeout=30)
        check_ledger(ledger)
    assert kills >= 20
    final = batchvid(*slow, env=env)
    assert final.returncode in (0, 1), final.stderr
    stats = external_sim.stats()
    with Ledger(ledger) as store:
        jobs = list(store.reads.jobs("crash"))
    assert len(jobs) == 50  # no job lost
    states = {j.state for j in jobs}
    assert states <= {"downloaded", "in_doubt"}, states
    # No unexplained duplicate: nothing was ever re-created without `retry --in-doubt`.
    assert stats["duplicate_creates"] == 0
    # Every task upstream belongs to exactly one job; in-doubt jobs may or may not have one.
    downloaded = [j for j in jobs if j.state == "downloaded"]
    assert {j.task_id for j in downloaded} <= set(stats["tasks"])
    assert len(downloaded) <= stats["creates"] <= len(jobs)
    out = tmp_path / "out"
    on_disk = {p.name: p for p in out.glob("*.mp4")}
    for job in jobs:
        if job.state == "downloaded":
            data = Path(job.file_path).read_bytes()
            assert (
                hashlib.sha256(data).hexdigest()
                == job.sha256
                == (stats["tasks"][job.task_id]["sha256"])
            )
    # Nothing half-written sits under a final name.
    assert set(on_disk) == {Path(j.file_path).name for j in jobs if j.state == "downloaded"}


def test_a_second_interrupt_says_which_creates_will_be_in_doubt(
    tmp_path: Path, external_sim: Simulator
) -> None:
    ledger = tmp_path / "l.db"
    external_sim.configure(create_delay=5.0)  # every create is answered after 5 s
    process = start(*run_args(manifest(tmp_path)), env=sim_env(external_sim, ledger))
    deadline = time.monotonic() + 30
    while external_sim.stats()["creates"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "second interrupt" in err and "in flight will be in_doubt on the next run" in err
    assert "retry crash --in-doubt" in err


def test_status_and_retry(tmp_path: Path, external_sim: Simulator) -> None:
    ledger = tmp_path / "l.db"
    external_sim.configure(fail_rate=0.5)
    env = sim_env(external_sim, ledger)
    first = batchvid(*run_args(manifest(tmp_path, prompts=1)), env=env)
    assert first.returncode == 1
    assert "retry crash --failed" in first.stdout
    runner = CliRunner()
    status = runner.invoke(cli, ["status", "--ledger", str(ledger), "--json"])
    data = json.loads(status.stdout)
    assert isinstance(data, list) and data[0]["batch"] == "crash" and data[0]["total"] == 10
    failed = data[0]["states"]["failed"]
    assert failed > 0
    text = runner.invoke(cli, ["status", "crash", "--ledger", str(ledger)])
    assert text.exit_code == 0 and f"failed {failed}" in text.stdout
    failure_lines = [line for line in text.stdout.splitlines() if line.startswith("  failed ")]
    assert len(failure_lines) == failed
    assert all("{" not in line for line in failure_lines)  # reasons read as text, not JSON
    assert runner.invoke(cli, ["retry", "crash", "--ledger", str(ledger)]).exit_code == 2
    assert runner.invoke(cli, ["retry", "nope", "--failed", "--ledger", str(ledger)]).exit_code == 2
    retried = runner.invoke(cli, ["retry", "crash", "--failed", "--ledger", str(ledger)])
    assert retried.exit_code == 0 and f"{failed} failed jobs are pending again" in retried.stdout
    external_sim.configure(fail_rate=0.0)
    second = batchvid(*run_args(manifest(tmp_path, prompts=1)), env=env)
    assert second.returncode == 0, second.stdout
    assert external_sim.stats()["creates"] == 10 + failed


def test_status_without_a_ledger_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "--ledger", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no ledger" in result.stderr


def test_an_invalid_manifest_still_finishes_what_was_paid_for(
    tmp_path: Path, external_sim: Simulator
) -> None:
    ledger = tmp_path / "l.db"
    env = sim_env(external_sim, ledger)
    path = manifest(tmp_path, prompts=3)
    external_sim.configure(time_scale=0.05)  # renders of seconds: tasks are live at the kill
    process = start(*run_args(path), "--max-active", "6", env=env)
    deadline = time.monotonic() + 30
    while external_sim.stats()["creates"] < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.communicate(timeout=30)
    creates = external_sim.stats()["creates"]
    # The user breaks the manifest before resuming: seconds 99 is out of range.
    path.write_text(path.read_text().replace("seconds: 5", "seconds: 99"))
    external_sim.configure(time_scale=SCALE)
    result = batchvid(*run_args(path), env=env)
    assert result.returncode == 2, result.stderr
    assert "defaults.seconds" in result.stderr and "nothing new is submitted" in result.stderr
    assert external_sim.stats()["creates"] == creates  # nothing new was sent
    with Ledger(ledger) as store:
        jobs = list(store.reads.jobs("crash"))
    sent = [j for j in jobs if j.task_id]
    assert sent and all(j.state == "downloaded" for j in sent)
    assert {j.state for j in jobs if not j.task_id} <= {"pending", "in_doubt"}
    # Nothing waiting on the API: the same invalid manifest is just an invalid manifest.
    again = batchvid(*run_args(path), env=env)
    assert again.returncode == 2 and "nothing was submitted" in again.stderr


def test_status_lists_the_first_failures_of_each_state_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    """A batch with 25 failed jobs: 20 listed with their reason, then '... and 5 more failed'."""
    from batchvid.ledger.rows import NewJob

    path = tmp_path / "l.db"
    with Ledger(path) as store:
        store.plans.upsert_batch(
            "many", manifest_path="m.yaml", manifest_sha256="0" * 64, output_dir="o"
        )
        store.plans.upsert_jobs(
            "many", [NewJob(key=f"k{i}", index=i, prompt=f"p{i}", model="m") for i in range(30)]
        )
        for job in list(store.reads.jobs("many"))[:25]:
            store.moves.begin_submit(job.id)
            store.moves.record_submitted(job.id, f"t{job.idx}", "queued", 0.0)
            store.moves.record_failed(job.id, "OutputModeration", f"flagged #{job.idx}")
    result = CliRunner().invoke(cli, ["status", "many", "--ledger", str(path)])
    assert result.exit_code == 0, result.output
    listed = [line for line in result.stdout.splitlines() if line.startswith("  failed ")]
    assert len(listed) == 20
    assert listed[0].endswith("flagged #0") and listed[-1].endswith("flagged #19")
    assert "... and 5 more failed" in result.stdout
    assert "many: 30 jobs  pending 5  failed 25" in result.stdout


def test_a_wrong_base_url_stops_the_run_and_rejects_no_job(
    tmp_path: Path, external_sim: Simulator
) -> None:
    """404 on create is the endpoint's fault, not the job's: exit 2, every job still pending."""
    ledger = tmp_path / "l.db"
    env = {**sim_env(external_sim, ledger), "COMETAPI_BASE_URL": external_sim.base_url + "/nope"}
    result = batchvid(*run_args(manifest(tmp_path)), env=env)
    assert result.returncode == 2, result.stderr
    assert "COMETAPI_BASE_URL" in result.stderr and "Traceback" not in result.stderr
    assert "No job was marked rejected" in result.stderr
    with Ledger(ledger) as store:
        states = store.reads.status("crash")["states"]
    assert states["pending"] == 30 and states["rejected"] == 0, states
    assert external_sim.stats()["creates"] == 0
    # Fixed, the same command finishes the batch.
    assert (
        batchvid(*run_args(manifest(tmp_path)), env=sim_env(external_sim, ledger)).returncode == 0
    )


def test_videos_that_cannot_be_fetched_end_the_run_with_exit_1_and_the_way_on(
    tmp_path: Path, external_sim: Simulator
) -> None:
    """The CDN refuses everything and there is no /content: each job has its tries, the
    run ends (it does not hang), exits 1 and says the next run downloads them."""
    ledger = tmp_path / "l.db"
    external_sim.configure(p_cdn_error=1.0, content=False)
    result = batchvid(*run_args(manifest(tmp_path, prompts=1)), env=sim_env(external_sim, ledger))
    assert result.returncode == 1, result.stderr
    assert "completed=10" in result.stdout and "download failed 5 times" in result.stdout
    assert "rendered, not downloaded (10)" in result.stdout
    with Ledger(ledger) as store:
        assert store.reads.status("crash")["states"]["completed"] == 10


def test_a_run_stopped_by_a_fault_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    from batchvid.cli.run import _print_summary, exit_code_of
    from batchvid.run.options import RunReport

    halt = "the disk holding the videos has been full for 10 min: stopped, nothing marked failed"
    report = RunReport("b", {"completed": 3, "downloaded": 7}, Path("out"), 900.0, halted=halt)
    _print_summary(report, Path("l.db"), "m.yaml")
    out = capsys.readouterr().out
    assert "b: stopped in 15 min" in out and f"stopped early: {halt}" in out
    assert exit_code_of(report) == 1


def test_the_retry_policy_from_the_command_line(tmp_path: Path, external_sim: Simulator) -> None:
    """``--retry error=0`` turns ERROR retries off; by default they are made and summed up."""
    external_sim.configure(error_rate=0.3)
    none = batchvid(
        *run_args(manifest(tmp_path, prompts=1)),
        "--retry",
        "error=0",
        env=sim_env(external_sim, tmp_path / "none.db"),
    )
    assert none.returncode == 1 and "automatic retries" not in none.stdout
    assert external_sim.stats()["creates"] == 10
    retried = batchvid(
        *run_args(manifest(tmp_path, prompts=1)), env=sim_env(external_sim, tmp_path / "on.db")
    )
    status = batchvid("status", "crash", "--json", "--ledger", str(tmp_path / "on.db"))
    made = json.loads(status.stdout)["retries"]["error"]
    assert f"automatic retries: {made} new attempt" in retried.stdout and made > 0
    assert external_sim.stats()["creates"] == 10 + 10 + made
    text = batchvid("status", "crash", "--ledger", str(tmp_path / "on.db")).stdout
    assert f"automatic retries: error {made} (retry {{error: 2, failed: 0" in text
    for bad, why in (("in_doubt=1", "never retried automatically"), ("error=x", "whole number")):
        refused = batchvid("run", "m.yaml", "--simulate", "--retry", bad)
        assert refused.returncode == 2 and why in refused.stderr
