"""What the docs say the API renders: the size tables, and where it normalises a request."""

from __future__ import annotations

import pytest

from batchvid.catalogue import normalised_size, render_size, size_problem

V2, PRO15, V10 = "doubao-seedance-2-0", "doubao-seedance-1-5-pro", "doubao-seedance-1-0-pro"


@pytest.mark.parametrize(
    ("model", "size", "resolution", "rendered"),
    [
        (V2, "16:9", "720p", "1280x720"),  # a ratio: its documented size
        (V2, "9:16", "480p", "496x864"),
        (V10, "16:9", "1080p", "1920x1088"),  # the 1.0 series' own table
        (V2, "1920x1080", "720p", "1280x720"),  # the docs' example of normalising
        (PRO15, "1920x1080", "1080p", "1920x1080"),  # documented at 1080p: as asked
        (V2, "16:9", "1080p", "1280x720"),  # a resolution not offered: the 720p row
        (V2, "1000x1000", "720p", "960x960"),  # undocumented: nearest aspect's size
        (PRO15, "16:9", "1080p", "1280x720"),  # 1.5 Pro: a ratio renders the 720p row
        (PRO15, "9:16", "480p", "720x1280"),
        (PRO15, "864x496", "480p", "864x496"),  # an exact documented size is kept
    ],
)
def test_normalised_size_follows_the_docs(
    model: str, size: str, resolution: str, rendered: str
) -> None:
    assert normalised_size(model, size, resolution) == rendered


def test_asked_and_rendered_differ_only_where_the_docs_say() -> None:
    assert render_size(PRO15, "16:9", "1080p") == "1920x1080"
    assert normalised_size(PRO15, "16:9", "1080p") != render_size(PRO15, "16:9", "1080p")
    assert normalised_size(V10, "16:9", "1080p") == render_size(V10, "16:9", "1080p")


def test_a_ratio_that_renders_another_row_is_warned_about_before_anything_is_sent() -> None:
    problem = size_problem(PRO15, "16:9", "1080p")
    assert problem is not None and problem[0] == "warning"
    assert "renders 1280x720" in problem[1] and "ask for 1920x1080" in problem[1]
    assert size_problem(PRO15, "16:9", "720p") is None
    assert size_problem(V10, "16:9", "1080p") is None
    assert size_problem(V2, "16:9", "1080p") is None  # no 1080p at all: an error elsewhere
