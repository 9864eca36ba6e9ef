"""Small ways of putting figures into words for people, shared by the library and the CLI."""

from __future__ import annotations

__all__ = ["clip", "span"]


def span(seconds: float) -> str:
    """A duration for a person: ``45 s``, ``12 min``, ``2.0 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def clip(text: str, width: int) -> str:
    """``text`` on one line (runs of white space as one space), cut to ``width`` with ``…``."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
