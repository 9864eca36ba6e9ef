"""The manifest: a YAML file of prompts and settings, read into a validated plan of jobs.

Owns: located YAML (``source``), the manifest's fields and their errors
(``parse``, ``reader``), prompt files (CSV, TSV, JSON Lines, text) read into
located rows (``prompt_files``), expansion into jobs with stable keys and
per-combination checks against the model catalogue (``expand``), the plan with
its totals and cost estimate (``plan``), and the starter batch ``batchvid
init`` writes (``starter``).  Nothing here touches the network or the ledger.

May import: the shared vocabulary (``batchvid.errors``, ``catalogue``,
``request``, ``text``), ``outputs.target`` (what an ``output_dir`` may be) and
PyYAML.  Nothing else in batchvid.
"""

from __future__ import annotations

from .expand import JobSpec, expand, job_key
from .model import Limits, Manifest, Retries
from .parse import parse_manifest
from .plan import Plan, Totals, batch_name_of, load_plan

__all__ = [
    "JobSpec",
    "Limits",
    "Manifest",
    "Plan",
    "Retries",
    "Totals",
    "batch_name_of",
    "expand",
    "job_key",
    "load_plan",
    "parse_manifest",
]
