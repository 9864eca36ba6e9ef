"""The embedded backend: one SQLite file (WAL), one process per batch.

Everything here is SQLite's own: opening the file (WAL, pragmas, a read-only
mode for reports beside a run), applying the schema's steps through
sqlite-utils' ``Migrations`` (recorded in ``_sqlite_migrations``), the write
transaction (``BEGIN IMMEDIATE``: one writer at a time, so a row read in it
cannot change under us), durability per commit, the integrity pragmas, and
what SQLite's errors mean (busy, full, damaged).

WAL mode: every commit survives the process being killed.  The commits that
must also survive a power cut (a ``submitting`` intent, before its create
leaves, and the task id the create returned) are fsynced
(``synchronous=FULL`` for that commit, which also makes everything before it
durable); the rest are not, which keeps a busy batch from waiting on the disk.

Opening a ledger that is already current reads ``_sqlite_migrations`` with
plain SQL and never imports sqlite-utils (about 0.1 s of imports, most of what
``batchvid status`` would otherwise spend).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..errors import LedgerError, ledger_error
from .engine import Dialect, Params
from .schema import MIGRATION_SET, STEPS, unapplied

if TYPE_CHECKING:
    import sqlite_utils

__all__ = ["BUSY_TIMEOUT_MS", "DIALECT", "SqliteEngine", "migrations"]

#: How long a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_MS: Final = 10_000


def _take(columns: str, source: str, where: str, order: str) -> str:
    # One process per batch (a lock on the file): work is read, not claimed.
    return f"SELECT {columns} FROM {source} WHERE {where} ORDER BY {order} LIMIT :limit"


DIALECT: Final = Dialect(
    name="sqlite",
    real="REAL",
    int="INTEGER",
    id="INTEGER PRIMARY KEY",
    lock="",
    skip_locked="",
    serialize="",
    end_gone="",
    columns="SELECT name FROM pragma_table_info(?) ORDER BY cid",
    db_now="((julianday('now') - 2440587.5) * 86400.0)",
    hint=lambda index: f" INDEXED BY {index}",
    take=_take,
)


@functools.cache
def migrations() -> sqlite_utils.Migrations:
    """Every step, as the ``sqlite_utils.Migrations`` set that applies and records them."""
    import sqlite_utils

    steps = sqlite_utils.Migrations(MIGRATION_SET)
    for fn in STEPS:
        steps()(fn)
    return steps


class _Tx:
    """A write transaction on the engine's connection (see :class:`~.engine.Tx`)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> int:
        return int(self._conn.execute(sql, params).rowcount)

    def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        return int(self._conn.executemany(sql, rows).rowcount)

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._conn.execute(sql, params).fetchone()
        return row


class SqliteEngine:
    """One ledger file, open (created and migrated unless ``read_only``).

    ``create=False`` refuses a missing file; ``check=True`` a damaged one
    (SQLite's quick check).  ``read_only=True`` opens an existing, current
    ledger for queries only: nothing is created or migrated, and every write
    raises :class:`LedgerError`.
    """

    dialect = DIALECT
    shared = False

    def __init__(
        self, path: str | Path, *, create: bool = True, read_only: bool = False, check: bool = False
    ) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self.identity = str(self.path.resolve())
        self.read_only = read_only
        self._lock = threading.RLock()
        if read_only:
            self._conn = _open_read_only(self.path)
            return
        if not create and not self.path.exists():
            raise LedgerError(f"no ledger at {self.path}")
        self._conn = _open_connection(self.path)
        if check:
            self._check()

    def _check(self) -> None:
        """SQLite's quick check of the whole file: a damaged ledger is refused before any use."""
        try:
            found = [
                " ".join(row[0].split()) for row in self._conn.execute("PRAGMA quick_check(5)")
            ]
        except sqlite3.Error as exc:
            found = [str(exc)]
        if found != ["ok"]:
            self._conn.close()
            raise LedgerError(
                f"the ledger {self.path} is damaged ({'; '.join(found)}): nothing was sent. "
                f"Restore a copy, or rebuild it: sqlite3 {self.path} .recover | sqlite3 NEW.db"
            )

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise ledger_error(self.path, exc) from exc

    @contextmanager
    def write(self, *, durable: bool = False) -> Iterator[_Tx]:
        """One write transaction, holding the write lock from its first statement."""
        with self._lock:
            conn = self._conn
            try:
                if durable:
                    conn.execute("PRAGMA synchronous = FULL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield _Tx(conn)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise ledger_error(self.path, exc) from exc
            finally:
                if durable:
                    with suppress(sqlite3.Error):
                        conn.execute("PRAGMA synchronous = NORMAL")

    def become(self, worker: str, bound_s: float) -> None:
        """Nothing to do: one process writes an SQLite ledger (see ``Engine``)."""

    def integrity(self) -> list[str]:
        problems = [
            f"integrity: {r[0]}" for r in self.rows("PRAGMA integrity_check") if r[0] != "ok"
        ]
        return problems + [
            f"foreign key: {tuple(r)}" for r in self.rows("PRAGMA foreign_key_check")
        ]

    def close(self) -> None:
        with self._lock:
            if not self.read_only:
                with suppress(sqlite3.Error):  # closed already, or busy: the hint is optional
                    self._conn.execute("PRAGMA optimize")
            self._conn.close()


def _connect(path: Path, target: str | Path, *, uri: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (every write an explicit transaction), rows as tuples."""
    try:
        return sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open ledger {path}: {exc}") from exc


@contextmanager
def _closed_on_failure(conn: sqlite3.Connection, path: Path) -> Iterator[None]:
    """Setting up ``conn``: on any failure close it; SQLite's errors become LedgerErrors."""
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        yield
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
        raise


def _open_connection(path: Path) -> sqlite3.Connection:
    """Open (creating folders and file if need be), configure and migrate a ledger file.

    ``synchronous=NORMAL`` in WAL mode loses nothing when the process is
    killed; the writes that must also survive a power cut ask for ``FULL``
    for their own commit (see :meth:`SqliteEngine.write`).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
    conn = _connect(path, path)
    with _closed_on_failure(conn, path):
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise LedgerError(f"ledger {path}: WAL mode unavailable (got {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
    return conn


def _open_read_only(path: Path) -> sqlite3.Connection:
    """Open an existing, current ledger for reading only: no file is created or migrated.

    For reports and status beside a running batch (WAL lets them read while it
    writes).  A missing file, a non-ledger, or a ledger that still needs a
    migration is a :class:`LedgerError`.
    """
    if not path.is_file():
        raise LedgerError(f"no ledger at {path}")
    uri = path.resolve().as_uri()
    conn = _connect(path, f"{uri}?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        # A read-only mount: SQLite cannot make the WAL's shared-memory file.  With no
        # WAL content waiting, the file is all there is: read it as immutable.
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size:
            raise LedgerError(
                f"cannot read ledger {path} here: its recent changes are in {wal.name}, "
                "which needs a writable folder (copy the ledger and its -wal file elsewhere)"
            ) from None
        conn = _connect(path, f"{uri}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:  # not a database at all
        conn.close()
        raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
    with _closed_on_failure(conn, path):
        conn.execute("PRAGMA query_only = ON")
        pending = _pending(conn, path)
        if pending and len(pending) == len(STEPS):
            raise LedgerError(f"{path} is not a batchvid ledger")
        if pending:
            raise LedgerError(
                f"ledger {path} predates this batchvid (needs {', '.join(pending)}): "
                "any command that writes to it (such as `batchvid run`) upgrades it"
            )
    return conn


def _pending(conn: sqlite3.Connection, path: Path) -> list[str]:
    """Names of the steps not yet applied; a LedgerError for steps this batchvid doesn't know."""
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlite_migrations'"
    ).fetchone()
    applied = (
        [
            row[0]
            for row in conn.execute(
                "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid",
                (MIGRATION_SET,),
            )
        ]
        if has_table
        else []
    )
    return unapplied(applied, str(path))


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    if not _pending(conn, path):
        return
    import sqlite_utils

    db = sqlite_utils.Database(conn, execute_plugins=False, recursive_triggers=False)
    # One opener migrates; a concurrent one waits for the lock, then finds nothing pending.
    conn.execute("BEGIN IMMEDIATE")
    try:
        migrations().apply(db)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
