"""Small ways of putting figures into words for people, shared by the library and the CLI."""

from __future__ import annotations

__all__ = ["span"]


def span(seconds: float) -> str:
    """A duration for a person: ``45 s``, ``12 min``, ``2.0 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
