"""The ledger's schema: append-only migration steps, shared by every backend.

Each ``m00N_...`` step runs once, in a transaction, and is recorded by name
(SQLite: in sqlite-utils' ``_sqlite_migrations``; PostgreSQL: in
``batchvid_migrations``), so both backends share one history.  Steps are
written in SQLite's spelling (``db.execute(sql)``); the PostgreSQL backend
maps the column types (see :mod:`batchvid.ledger.postgres`).  Never edit a
step that has shipped: append a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from ..errors import LedgerError

__all__ = ["MIGRATION_SET", "NEVER", "STEPS", "Schema", "unapplied"]

#: The ``migration_set`` batchvid's steps are recorded under.
MIGRATION_SET: Final = "batchvid"


class Schema(Protocol):
    """What a step runs its DDL on (an ``sqlite_utils.Database``, or PostgreSQL's adapter)."""

    def execute(self, sql: str) -> Any: ...


#: Every step, in order.
STEPS: list[Callable[[Any], None]] = []


def _migration(fn: Callable[[Any], None]) -> None:
    """Register a schema step.  Append only; never edit one that has shipped."""
    STEPS.append(fn)


def unapplied(applied: Iterable[str], where: str) -> list[str]:
    """The names of the steps ``applied`` lacks, in order; a LedgerError for steps this
    batchvid does not know (a newer batchvid wrote the ledger: never downgrade it)."""
    done = list(applied)
    known = [fn.__name__ for fn in STEPS]
    unknown = [name for name in done if name not in known]
    if unknown:
        raise LedgerError(
            f"ledger {where} was written by a newer batchvid (migrations {unknown}): "
            "upgrade batchvid to use it"
        )
    return [name for name in known if name not in done]


def m001_initial(db: Schema) -> None:
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


def m002_axes_and_endpoint(db: Schema) -> None:
    """Each job's matrix values (for reports laid out on them); each batch's API endpoint.

    ``jobs.axes_json`` is a JSON list of ``[name, value]`` pairs in manifest order;
    ``batches.endpoint`` is the API base URL the batch ran against, or ``simulator``.
    """
    db.execute("ALTER TABLE jobs ADD COLUMN axes_json TEXT NOT NULL DEFAULT '[]'")
    db.execute("ALTER TABLE batches ADD COLUMN endpoint TEXT")


_migration(m002_axes_and_endpoint)


def m003_download_queue(db: Schema) -> None:
    """A small index over just the completed jobs: the runner's download queue."""
    db.execute(
        """CREATE INDEX jobs_download_queue ON jobs (batch, video_url_expires_at, idx)
        WHERE state = 'completed'"""
    )


_migration(m003_download_queue)


def m004_render_evidence(db: Schema) -> None:
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


def m005_download_schedule(db: Schema) -> None:
    """When a completed job's next download may start (runner-clock unix seconds).

    Set after a failed try (its back-off) and to :data:`NEVER` once its tries
    for the run are spent, so the download queue skips those jobs in SQL
    rather than filling every page with them; cleared when a run starts.
    """
    db.execute("ALTER TABLE jobs ADD COLUMN next_download_at REAL")


_migration(m005_download_schedule)

#: ``next_download_at`` of a job whose downloads are spent for this run.
NEVER: Final = 1e18


def m006_retries(db: Schema) -> None:
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


def m007_video_facts(db: Schema) -> None:
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


def m008_workers(db: Schema) -> None:
    """Workers sharing a batch (a PostgreSQL ledger), the jobs they hold, shared rate buckets.

    - ``workers``: one row per ``batchvid run`` process that joined a batch;
      its lease ends at ``lease_until`` (the database's clock, unix seconds),
      renewed every few seconds; ``alone``: it runs its own simulator, so no
      other worker may share the batch with it;
    - ``jobs.claimed_by``: the worker that has taken the job (``NULL``: none);
    - ``rate_buckets``: the rate limiter every worker using one API key shares
      (``key`` a hash of endpoint and key, never the key), its state as JSON;
    - ``ledger_info``: facts about the ledger itself (``id``: a name for a
      PostgreSQL ledger that does not change with the URL it is reached by).
    """
    db.execute("""
        CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            batch TEXT NOT NULL REFERENCES batches (name),
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            lease_s REAL NOT NULL,
            lease_until REAL NOT NULL,
            alone INTEGER NOT NULL DEFAULT 0,
            started_utc TEXT NOT NULL,
            stopped_utc TEXT
        )""")
    db.execute("CREATE INDEX workers_batch ON workers (batch, lease_until)")
    db.execute("ALTER TABLE jobs ADD COLUMN claimed_by TEXT")
    db.execute("CREATE INDEX jobs_claimed ON jobs (claimed_by) WHERE claimed_by IS NOT NULL")
    db.execute("""
        CREATE TABLE rate_buckets (
            key TEXT PRIMARY KEY,
            state_json TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""")
    db.execute("CREATE TABLE ledger_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


_migration(m008_workers)


def m009_object_etag(db: Schema) -> None:
    """``jobs.object_etag``: the ETag of the object a video went to in a store (its
    ``file_path`` then an ``s3://`` URI); ``NULL`` for a video in a folder."""
    db.execute("ALTER TABLE jobs ADD COLUMN object_etag TEXT")


_migration(m009_object_etag)
