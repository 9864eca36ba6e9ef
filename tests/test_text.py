"""Figures put into words for people."""

from __future__ import annotations

from batchvid.text import clip, span


def test_span_reads_like_a_person_would_say_it() -> None:
    assert [span(s) for s in (45, 600, 7200)] == ["45 s", "10 min", "2.0 h"]


def test_clip_keeps_one_line_and_marks_the_cut() -> None:
    assert clip("a  prompt\nover two lines", 100) == "a prompt over two lines"
    assert clip("x" * 50, 10) == "x" * 9 + "…"
