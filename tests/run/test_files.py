"""File naming: pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchvid.run.files import job_filename, safe_destination, slug


def test_file_names_are_slugged_and_stay_inside(tmp_path: Path) -> None:
    name = job_filename(
        7,
        None,
        "Ünïcode / ../../etc/passwd <b>",
        "doubao-seedance-2-0-fast",
        "16:9",
        2,
        "3f9a1c2e77",
    )
    assert name == "0007-unicode-etc-passwd-b-seedance-2-0-fast-16x9-t2-3f9a1c2e.mp4"
    assert job_filename(1, "../x", "p", "doubao-seedance-1-0-pro", "1280x720", 1, "ab/../cd") == (
        "0001-x-seedance-1-0-pro-1280x720-t1-ab-cd.mp4"
    )
    assert safe_destination(tmp_path, name).parent == tmp_path.resolve()
    for bad in ("../x.mp4", "a/b.mp4", "", ".."):
        with pytest.raises(ValueError):
            safe_destination(tmp_path, bad)
    assert slug("!!!") == "video"
    assert len(slug("word " * 50)) <= 40


def test_two_jobs_that_differ_only_in_what_the_name_leaves_out_get_two_names() -> None:
    """An edited manifest keeps a job's index; 5 s and 10 s of one prompt are two jobs."""
    shared = (3, "sunrise", "a pier at dawn", "doubao-seedance-2-0", "16:9", 1)
    assert job_filename(*shared, "aaaa1111") != job_filename(*shared, "bbbb2222")
