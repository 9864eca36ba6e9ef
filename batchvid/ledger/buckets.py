"""Rate buckets kept in the ledger, so every worker using one API key shares one rate.

A bucket is a row of ``rate_buckets``: the state of a rate limiter as JSON,
keyed by a hash of the endpoint and the API key (never the key itself).
:meth:`Buckets.update` applies a pure function to it atomically: the row is
locked for the transaction, the function gets the stored state (``None``
the first time) and the database server's clock, and what it returns is
stored.  What the state means and how it changes is the limiter's
(:mod:`batchvid.remote.ratelimit`); the ledger only keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from .core import Role

__all__ = ["BucketUpdate", "Buckets"]

T = TypeVar("T")
#: Given the stored state (``None``: none yet) and the database's clock (unix seconds):
#: the state to store, and what to return.
BucketUpdate = Callable[[dict[str, Any] | None, float], tuple[dict[str, Any], T]]


class Buckets(Role):
    """The ``rate_buckets`` table (see the module docstring)."""

    def update(self, key: str, change: BucketUpdate[T]) -> T:
        """Apply ``change`` to bucket ``key`` atomically; what it returned."""
        dialect = self._engine.dialect
        with self._engine.write() as tx:
            tx.execute(
                f"""INSERT INTO rate_buckets (key, state_json, updated_at)
                VALUES (?, 'null', {dialect.db_now}) ON CONFLICT (key) DO NOTHING""",
                (key,),
            )
            row = tx.one(
                f"SELECT state_json, {dialect.db_now} FROM rate_buckets WHERE key = ?"
                f"{dialect.lock}",
                (key,),
            )
            assert row is not None
            state, result = change(json.loads(row[0]), float(row[1]))
            tx.execute(
                "UPDATE rate_buckets SET state_json = ?, updated_at = ? WHERE key = ?",
                (json.dumps(state), float(row[1]), key),
            )
        return result
