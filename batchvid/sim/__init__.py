"""The built-in simulator: a local stand-in for CometAPI's Seedance video API.

Owns: what a create must look like (``requests``), its knobs (``config``), the
simulated world: tasks, render clock, signed URLs, faults and counters (``state``), and
the HTTP listeners for the API and the CDN (``server``).  It follows the API
docs, not batchvid's client: both vocabularies, both error shapes, whole-second
timestamps, normalised sizes, real videos of the size and length rendered.

May import: the shared vocabulary (``batchvid.catalogue``, ``request``),
``batchvid.media`` (to make its videos), starlette and uvicorn.  Nothing else
in batchvid.
"""

from __future__ import annotations

from .config import SimConfig
from .server import Simulator, SimulatorThread, run_simulator, serve_simulator

__all__ = ["SimConfig", "Simulator", "SimulatorThread", "run_simulator", "serve_simulator"]
