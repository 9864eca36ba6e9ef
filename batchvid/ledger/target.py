"""Where a ledger lives: a file path (SQLite) or a ``postgresql://`` URL.

``--ledger`` and ``BATCHVID_LEDGER`` take either.  Anything that looks like a
URL but is not PostgreSQL's is refused by name: a ledger is never a file
named after a URL.  A URL is shown without its password, always.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from ..errors import LedgerError

__all__ = ["DEFAULT_LEDGER", "PG_SCHEMES", "LedgerTarget", "ledger_target", "redact"]

#: Where the ledger lives unless --ledger or BATCHVID_LEDGER say otherwise.
DEFAULT_LEDGER: Final = Path("state/batchvid.db")
#: The URL schemes of a PostgreSQL ledger (libpq's own two).
PG_SCHEMES: Final = ("postgresql", "postgres")
_URL: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True, slots=True)
class LedgerTarget:
    """A ledger's place: ``path`` (SQLite) or ``url`` (PostgreSQL); ``shown`` is safe to print."""

    path: Path | None = None
    url: str | None = None

    @property
    def shown(self) -> str:
        if self.url is None:
            return str(self.path)
        return redact(self.url)

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:  # never show a password
        return f"LedgerTarget({self.shown!r})"


def ledger_target(value: str | Path | LedgerTarget) -> LedgerTarget:
    """Read a ``--ledger`` value; a LedgerError for a URL scheme no backend speaks."""
    if isinstance(value, LedgerTarget):
        return value
    if isinstance(value, Path):
        return LedgerTarget(path=value)
    match = _URL.match(value)
    if match is None:
        return LedgerTarget(path=Path(value))
    scheme = match.group(1).lower()
    if scheme not in PG_SCHEMES:
        raise LedgerError(
            f"--ledger {redact(value)}: {scheme}:// is not a ledger batchvid can use; give a "
            "file path (SQLite) or a postgresql:// URL"
        )
    return LedgerTarget(url=value)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the netloc and in ``password=``)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
        query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<a URL that cannot be read>"
