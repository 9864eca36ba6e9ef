"""A throwaway PostgreSQL server on 127.0.0.1, for the test suite and the benchmarks.

``PgServer`` runs ``initdb`` into a temporary directory and then the ``postgres``
binary itself (no ``pg_ctl`` daemonizing, so this process owns the server and can
always stop it). Authentication is ``trust`` for everyone except the role
``secretive`` (password ``right-password``, SCRAM over TCP), which lets tests check
that a wrong password is refused. ``durable=False`` (the default, for tests) turns
fsync, synchronous commit and full-page writes off; ``durable=True`` keeps
PostgreSQL's defaults, for benchmarks. A non-durable cluster lives in ``/dev/shm``
when that is a roomy tmpfs and ``TMPDIR`` is unset (CREATE DATABASE is ~10x faster
there than on a slow disk, fsync or not); otherwise, and always when durable, in the
usual temporary directory.

PostgreSQL refuses to run as root: under root the cluster runs as the ``postgres``
system user (else ``nobody``) in a directory that user owns.

Needs Debian's ``postgresql`` package (``.ci/run`` installs it) and ``psycopg``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from psycopg import sql as pgsql

#: How long the server gets to accept connections, and to shut down, before we give up.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

#: A role that must log in with a password over TCP (every other role is trusted).
SECRET_ROLE = "secretive"
SECRET_PASSWORD = "right-password"

#: What ``durable=False`` passes: a test's data may be lost in a crash, never mind.
NON_DURABLE_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")

#: A non-durable cluster lives in /dev/shm when it has this much room: up to max_wal_size
#: (1 GB) of WAL accumulates between checkpoints, in memory there. (Docker's default
#: /dev/shm is 64 MB: too small, so /tmp it is.)
SHM_MIN_FREE = 2 * 2**30

_HOST = "127.0.0.1"
_PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


class MissingPostgres(RuntimeError):
    """No PostgreSQL server binaries (``initdb`` and ``postgres``) were found."""


def _has_server_binaries(bindir: Path) -> bool:
    return (bindir / "initdb").is_file() and (bindir / "postgres").is_file()


def _version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: 9.6 < 10 < 15, numerically.
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))


def find_pg_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or ``None``.

    ``pg_config --bindir`` when it points at the server binaries, else the
    highest-version ``/usr/lib/postgresql/*/bin`` that has both.
    """
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.strip():
            bindir = Path(done.stdout.strip())
            if _has_server_binaries(bindir):
                return bindir
    candidates = [Path(found) for found in glob.glob(_PG_BIN_GLOB)]
    candidates = [path for path in candidates if _has_server_binaries(path)]
    if not candidates:
        return None
    return max(candidates, key=_version_key)


def free_port(host: str = _HOST) -> int:
    """A TCP port nobody listens on right now (someone may take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _world_traversable(path: Path) -> bool:
    """Whether any user can reach entries under ``path`` (o+x on it and its ancestors)."""
    path = path.resolve()
    for part in (path, *path.parents):
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _pick_base_dir(
    durable: bool, account: pwd.struct_passwd | None, base_dir: Path | str | None
) -> Path:
    """Where the cluster's temporary directory goes.

    ``base_dir`` if given. Else, for a non-durable cluster with no ``TMPDIR`` set,
    ``/dev/shm`` when it is a roomy tmpfs: even with fsync off, CREATE DATABASE
    on a slow disk takes ~10x longer (see ``SHM_MIN_FREE``). Else the usual temporary
    directory -- ``/tmp`` when that is not reachable by the account the server
    runs as.
    """
    if base_dir is not None:
        return Path(base_dir)
    if not durable and not os.environ.get("TMPDIR"):
        shm = Path("/dev/shm")
        with contextlib.suppress(OSError):
            stat = os.statvfs(shm)
            roomy = stat.f_bavail * stat.f_frsize >= SHM_MIN_FREE
            if roomy and shm.is_dir() and shm.stat().st_mode & 0o1777 == 0o1777:
                return shm
    base = Path(tempfile.gettempdir())
    if account is not None and not _world_traversable(base):
        base = Path("/tmp")
    return base


def _run_as_user() -> pwd.struct_passwd | None:
    """The unprivileged account the server runs as, or ``None`` to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists")


def _child_env(account: pwd.struct_passwd | None) -> dict[str, str]:
    """Our environment without libpq/PostgreSQL variables, messages in English."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    if account is not None:
        env["HOME"] = account.pw_dir
        env["USER"] = env["LOGNAME"] = account.pw_name
    return env


@dataclass
class _Resources:
    """What ``PgServer`` must release: held apart so that a finalizer can release it too."""

    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None


def _shutdown(resources: _Resources) -> None:
    """Stop the postmaster (fast shutdown, then SIGKILL) and delete the cluster."""
    proc = resources.proc
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: abort clients, checkpoint, exit
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)
    if resources.log is not None:
        resources.log.close()
    shutil.rmtree(resources.workdir, ignore_errors=True)


class PgServer:
    """A PostgreSQL cluster of its own, listening on 127.0.0.1, for as long as this lives.

    The constructor starts it and returns once it accepts connections;
    ``stop()`` (or leaving the ``with`` block) shuts it down and deletes it.
    """

    def __init__(
        self,
        *,
        durable: bool = False,
        bindir: Path | str | None = None,
        base_dir: Path | str | None = None,
    ) -> None:
        found = Path(bindir) if bindir is not None else find_pg_bindir()
        if found is None or not _has_server_binaries(found):
            raise MissingPostgres(
                "PostgreSQL server binaries (initdb, postgres) not found"
                + (f" in {found}" if found is not None else "")
            )
        self.bindir: Path = found
        self.durable = durable
        self._account = _run_as_user()
        self._env = _child_env(self._account)

        base = _pick_base_dir(durable, self._account, base_dir)
        self.workdir = Path(tempfile.mkdtemp(prefix="batchvid-pg-", dir=base))  # mode 0o700
        self.data_dir = self.workdir / "data"
        self.socket_dir = self.workdir / "sock"
        self.log_path = self.workdir / "postgres.log"
        self._port = 0
        self._resources = _Resources(self.workdir)
        # Stops the server even if stop() is never called (at the latest when Python exits).
        self._finalizer = weakref.finalize(self, _shutdown, self._resources)
        try:
            self.socket_dir.mkdir(mode=0o700)
            self._resources.log = open(self.log_path, "ab")  # noqa: SIM115 - _shutdown closes it
            if self._account is not None:
                for path in (self.workdir, self.socket_dir, self.log_path):
                    os.chown(path, self._account.pw_uid, self._account.pw_gid)
            self._initdb()
            self._start()
            self._create_secret_role()
        except BaseException:
            self.stop()
            raise

    # -- lifecycle ---------------------------------------------------------------

    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"env": self._env, "cwd": self.workdir}
        if self._account is not None:
            kwargs.update(user=self._account.pw_uid, group=self._account.pw_gid, extra_groups=[])
        return kwargs

    def _initdb(self) -> None:
        command = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # a throwaway cluster: no need to fsync the fresh files
        ]
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
            **self._popen_kwargs(),
        )
        output = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {done.returncode}):\n{output[-4000:]}")
        self._add_password_rule()

    def _add_password_rule(self) -> None:
        """``secretive`` needs a password over TCP: its rule goes before the trust lines."""
        hba = self.data_dir / "pg_hba.conf"
        lines = hba.read_text().splitlines(keepends=True)
        first_rule = next(
            (
                i
                for i, line in enumerate(lines)
                if line.strip() and not line.lstrip().startswith("#")
            ),
            len(lines),
        )
        rule = (
            "# batchvid tests: this role must give its password (the first matching line wins)\n"
            f"host    all    {SECRET_ROLE}    {_HOST}/32    scram-sha-256\n\n"
        )
        lines.insert(first_rule, rule)
        hba.write_text("".join(lines))  # rewritten in place: the owner stays the server's

    def _server_command(self, port: int) -> list[str]:
        command = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(port),
            "-k",
            str(self.socket_dir),
            "-c",
            f"listen_addresses={_HOST}",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=32MB",
        ]
        if not self.durable:
            for setting in NON_DURABLE_SETTINGS:
                command += ["-c", setting]
        return command

    def _start(self, attempts: int = 3) -> None:
        log = self._resources.log
        assert log is not None
        for attempt in range(1, attempts + 1):
            port = free_port()
            log_start = self.log_path.stat().st_size
            proc = subprocess.Popen(
                self._server_command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is for pytest, not for us
                **self._popen_kwargs(),
            )
            self._resources.proc = proc
            self._port = port
            if self._wait_until_ready(proc):
                return
            # It exited. Did someone else take the port in the meantime? Then try another.
            with open(self.log_path, "rb") as written:
                written.seek(log_start)
                said = written.read().decode(errors="replace")
            if "could not bind" not in said or attempt == attempts:
                raise RuntimeError(
                    f"postgres exited with code {proc.returncode} while starting;"
                    f" its log ends:\n{self.log_tail()}"
                )

    def _wait_until_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        """``True`` once it accepts connections, ``False`` if the postmaster exited."""
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with psycopg.connect(self.url(), connect_timeout=2, autocommit=True):
                    return True
            except psycopg.OperationalError as error:
                last_error = error
            time.sleep(0.02)
        raise RuntimeError(
            f"postgres did not accept connections on port {self._port} within"
            f" {START_TIMEOUT:g} s (last error: {last_error}); its log ends:\n{self.log_tail()}"
        )

    def _create_secret_role(self) -> None:
        from psycopg import sql as pgsql

        self.execute("SET password_encryption = 'scram-sha-256'")  # 15's default, made sure
        self.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                pgsql.Identifier(SECRET_ROLE), pgsql.Literal(SECRET_PASSWORD)
            )
        )

    def stop(self) -> None:
        """Shut the server down (fast, then SIGKILL) and delete its directory. Idempotent."""
        self._finalizer()

    @property
    def running(self) -> bool:
        proc = self._resources.proc
        return self._finalizer.alive and proc is not None and proc.poll() is None

    def __enter__(self) -> PgServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PgServer {_HOST}:{self._port} {state} in {self.workdir}>"

    # -- facts ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        return _HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        if self._resources.proc is None:
            raise RuntimeError("the server was never started")
        return self._resources.proc.pid

    def url(
        self, dbname: str = "postgres", user: str = "postgres", password: str | None = None
    ) -> str:
        """``postgresql://user[:password]@127.0.0.1:PORT/dbname``."""
        userinfo = quote(user, safe="")
        if password is not None:
            userinfo += ":" + quote(password, safe="")
        return f"postgresql://{userinfo}@{_HOST}:{self._port}/{quote(dbname, safe='')}"

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines the server wrote."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-n:])

    # -- helpers ---------------------------------------------------------------------

    def execute(
        self,
        sql: str | pgsql.Composable,
        dbname: str = "postgres",
        params: Sequence[Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement as ``postgres`` (autocommit); the rows it returned, if any."""
        import psycopg

        with (
            psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description is not None else []

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a unique ``test_...`` name when ``None``); its URL."""
        from psycopg import sql as pgsql

        name = name or f"test_{uuid.uuid4().hex[:16]}"
        self.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still in it."""
        from psycopg import sql as pgsql

        self.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )
