"""The ledger's file: opening it (WAL, pragmas) and its append-only schema migrations.

Every ``m00N_...`` step is registered with ``sqlite_utils.Migrations("batchvid")``
and runs once, in a transaction, recorded in ``_sqlite_migrations``.  Never
edit a step that has shipped: append a new one.

Opening a ledger that is already current reads ``_sqlite_migrations`` with
plain SQL and never imports sqlite-utils (about 0.1 s of imports, most of what
``batchvid status`` would otherwise spend); :func:`migrations` builds the
``Migrations`` set only when a step is pending.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..errors import LedgerError

if TYPE_CHECKING:
    import sqlite_utils

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MIGRATION_SET",
    "NEVER",
    "migrations",
    "open_connection",
    "open_read_only",
]

#: How long a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_MS: Final = 10_000
#: The ``migration_set`` of batchvid's rows in ``_sqlite_migrations``.
MIGRATION_SET: Final = "batchvid"

_STEPS: list[Callable[[sqlite_utils.Database], None]] = []


def _migration(fn: Callable[[sqlite_utils.Database], None]) -> None:
    """Register a schema step.  Append only; never edit one that has shipped."""
    _STEPS.append(fn)


@functools.cache
def migrations() -> sqlite_utils.Migrations:
    """Every step, as the ``sqlite_utils.Migrations`` set that applies and records them."""
    import sqlite_utils

    steps = sqlite_utils.Migrations(MIGRATION_SET)
    for fn in _STEPS:
        steps()(fn)
    return steps


def m001_initial(db: sqlite_utils.Database) -> None:
    """Batches, their jobs, and every job's state changes."""
    db.execute("""
        CREATE TABLE batches (
            name TEXT PRIMARY KEY,
            manifest_path TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            output_dir TEXT NOT NULL,
            limits_json TEXT NOT NULL DEFAULT '{}',
            pricing_json TEXT NOT NULL DEFAULT '{}',
            budget_usd REAL,
            created_utc TEXT NOT NULL,
            updated_utc TEXT NOT NULL
        )""")
    db.execute("""
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            batch TEXT NOT NULL REFERENCES batches (name),
            key TEXT NOT NULL,
            idx INTEGER NOT NULL,
            take INTEGER NOT NULL DEFAULT 1,
            prompt_id TEXT,
            prompt TEXT NOT NULL,
            model TEXT NOT NULL,
            seconds INTEGER NOT NULL,
            size TEXT NOT NULL,
            resolution TEXT NOT NULL,
            references_json TEXT NOT NULL DEFAULT '[]',
            est_cost_usd REAL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'submitting',
                'in_doubt', 'queued', 'in_progress', 'completed', 'downloaded', 'failed',
                'rejected', 'stalled')),
            task_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            billable_attempts INTEGER NOT NULL DEFAULT 0 CHECK (billable_attempts >= 0),
            remote_status TEXT,
            progress INTEGER,
            polls INTEGER NOT NULL DEFAULT 0,
            next_poll_at REAL,
            watch_started_at REAL,
            video_url TEXT,
            video_url_expires_at REAL,
            file_path TEXT,
            bytes INTEGER,
            sha256 TEXT,
            error_code TEXT,
            error_message TEXT,
            download_errors INTEGER NOT NULL DEFAULT 0,
            created_utc TEXT NOT NULL,
            submitted_utc TEXT,
            queued_utc TEXT,
            started_utc TEXT,
            completed_utc TEXT,
            downloaded_utc TEXT,
            finished_utc TEXT,
            updated_utc TEXT NOT NULL,
            UNIQUE (batch, key)
        )""")
    db.execute("CREATE INDEX jobs_batch_state ON jobs (batch, state, idx)")
    db.execute("CREATE INDEX jobs_batch_idx ON jobs (batch, idx)")
    db.execute("CREATE INDEX jobs_state_next_poll ON jobs (state, next_poll_at)")
    db.execute("""
        CREATE INDEX jobs_render_history ON jobs (model, seconds, resolution, completed_utc)
        WHERE completed_utc IS NOT NULL AND queued_utc IS NOT NULL""")
    db.execute("""
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL REFERENCES jobs (id),
            from_state TEXT NOT NULL,
            to_state TEXT NOT NULL,
            at_utc TEXT NOT NULL,
            detail_json TEXT
        )""")
    db.execute("CREATE INDEX events_job ON events (job_id, id)")


_migration(m001_initial)


def m002_axes_and_endpoint(db: sqlite_utils.Database) -> None:
    """Each job's matrix values (for reports laid out on them); each batch's API endpoint.

    ``jobs.axes_json`` is a JSON list of ``[name, value]`` pairs in manifest order;
    ``batches.endpoint`` is the API base URL the batch ran against, or ``simulator``.
    """
    db.execute("ALTER TABLE jobs ADD COLUMN axes_json TEXT NOT NULL DEFAULT '[]'")
    db.execute("ALTER TABLE batches ADD COLUMN endpoint TEXT")


_migration(m002_axes_and_endpoint)


def m003_download_queue(db: sqlite_utils.Database) -> None:
    """A small index over just the completed jobs: the runner's download queue."""
    db.execute(
        """CREATE INDEX jobs_download_queue ON jobs (batch, video_url_expires_at, idx)
        WHERE state = 'completed'"""
    )


_migration(m003_download_queue)


def m004_render_evidence(db: sqlite_utils.Database) -> None:
    """What each task proves about render times, so the poll schedule learns without drift.

    Runner-clock unix seconds (``..._at``): ``sent_at`` (the create left),
    ``answered_at`` (it answered with a task id), ``last_running_at`` (the last
    poll that saw the task not done).  The server's own ``created_at`` and
    ``completed_at`` as it sent them (``server_..._at``).  ``render_lo_s`` and
    ``render_hi_s`` bound the render's duration, worked out when the task was
    seen done; ``render_s`` is the best estimate within them.  The old history
    index (seen done - queued) goes: that figure includes the poller's own delay.
    """
    for column in (
        "sent_at",
        "answered_at",
        "last_running_at",
        "server_created_at",
        "server_completed_at",
        "render_lo_s",
        "render_hi_s",
        "render_s",
    ):
        db.execute(f"ALTER TABLE jobs ADD COLUMN {column} REAL")
    db.execute("DROP INDEX IF EXISTS jobs_render_history")
    db.execute(
        """CREATE INDEX jobs_render_samples ON jobs (model, seconds, resolution, completed_utc)
        WHERE render_hi_s IS NOT NULL"""
    )


_migration(m004_render_evidence)


def m005_download_schedule(db: sqlite_utils.Database) -> None:
    """When a completed job's next download may start (runner-clock unix seconds).

    Set after a failed try (its back-off) and to :data:`NEVER` once its tries
    for the run are spent, so the download queue skips those jobs in SQL
    rather than filling every page with them; cleared when a run starts.
    """
    db.execute("ALTER TABLE jobs ADD COLUMN next_download_at REAL")


_migration(m005_download_schedule)

#: ``next_download_at`` of a job whose downloads are spent for this run.
NEVER: Final = 1e18


def m006_retries(db: sqlite_utils.Database) -> None:
    """Automatic new attempts (the manifest's ``retry:``) and the earlier attempts they keep.

    - ``jobs.retries_json``: the automatic new attempts made so far, per kind of
      outcome (``{"error": 1}``);
    - ``jobs.retry_at``: a pending job's earliest next submission (the back-off);
    - ``jobs.extra_of``: this row is an earlier attempt of that job, split off
      when the job was retried after a stall: its task is still watched, and
      its video, if it comes, is an extra take;
    - ``batches.retry_json``: the policy the batch last ran under.
    """
    db.execute("ALTER TABLE jobs ADD COLUMN retries_json TEXT NOT NULL DEFAULT '{}'")
    db.execute("ALTER TABLE jobs ADD COLUMN retry_at REAL")
    db.execute("ALTER TABLE jobs ADD COLUMN extra_of INTEGER REFERENCES jobs (id)")
    db.execute("ALTER TABLE batches ADD COLUMN retry_json TEXT NOT NULL DEFAULT '{}'")
    db.execute(
        """CREATE INDEX jobs_retry_queue ON jobs (batch, retry_at)
        WHERE state = 'pending' AND retry_at IS NOT NULL"""
    )
    db.execute("CREATE INDEX jobs_extra_takes ON jobs (batch, state) WHERE extra_of IS NOT NULL")
    db.execute("CREATE INDEX jobs_retried ON jobs (batch) WHERE retries_json != '{}'")


_migration(m006_retries)


def m007_video_facts(db: sqlite_utils.Database) -> None:
    """What each downloaded video holds (probed), its poster, and bad files fetched.

    ``width``/``height``/``duration_s``/``fps``/``vcodec``/``has_audio`` are
    what probing the file found (``NULL``: not probed); ``normalised`` how the
    video differs from what was asked (``NULL``: as asked, or not probed);
    ``poster_path`` its poster; ``bad_downloads`` how many files arrived whole
    but did not decode.
    """
    for column, kind in (
        ("width", "INTEGER"),
        ("height", "INTEGER"),
        ("duration_s", "REAL"),
        ("fps", "REAL"),
        ("vcodec", "TEXT"),
        ("has_audio", "INTEGER"),
        ("normalised", "TEXT"),
        ("poster_path", "TEXT"),
    ):
        db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
    db.execute("ALTER TABLE jobs ADD COLUMN bad_downloads INTEGER NOT NULL DEFAULT 0")


_migration(m007_video_facts)


def _connect(path: Path, target: str | Path, *, uri: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (every write an explicit transaction), rows by name."""
    try:
        conn = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
    conn.row_factory = sqlite3.Row
    return conn


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


def open_connection(path: Path) -> sqlite3.Connection:
    """Open (creating folders and file if need be), configure and migrate a ledger file.

    The connection is in autocommit mode (``isolation_level=None``): every
    write is an explicit ``BEGIN IMMEDIATE ... COMMIT``.  WAL lets readers
    (``status``) run beside the writer.  ``synchronous=NORMAL`` in WAL mode
    loses nothing when the process is killed; the writes that must also
    survive a power cut (a create's intent and its task id) ask for
    ``FULL`` for their own commit, which makes every commit before them
    durable too (see ``Ledger._write``).
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


def open_read_only(path: Path) -> sqlite3.Connection:
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
        if pending and len(pending) == len(_STEPS):
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
    known = [fn.__name__ for fn in _STEPS]
    unknown = [name for name in applied if name not in known]
    if unknown:
        raise LedgerError(f"ledger {path} was written by a newer batchvid (migrations {unknown})")
    return [name for name in known if name not in applied]


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
