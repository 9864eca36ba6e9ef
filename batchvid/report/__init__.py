"""Reports from the ledger: what a batch made, what failed and why, what it cost.

Owns: the figures of one batch, read once and computed by pure functions
(``data``), what to do next about jobs that did not succeed (``data.advice``),
and the formats: text, CSV, JSON, Markdown (``formats``) and the HTML gallery
(``gallery``).  Reads the ledger, never writes it.

May import: the shared vocabulary and ``batchvid.ledger``.  Nothing else in
batchvid.
"""

from __future__ import annotations

from .data import FORMATS, ReportData, advice, build_report, load_report
from .formats import render

__all__ = ["FORMATS", "ReportData", "advice", "build_report", "load_report", "render"]
