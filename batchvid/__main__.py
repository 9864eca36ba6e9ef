"""``python -m batchvid``: the same as the ``batchvid`` command."""

from __future__ import annotations

from .cli.main import main

main()
