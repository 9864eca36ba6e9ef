"""The test infrastructure itself: the real PostgreSQL server (``pg_server``, ``pg_url``)
and the TCP proxy that partitions the network (``TcpProxy``). No mocks.

The only time bounds here detect a hang (a query that must *not* have finished yet,
a connection that must fail within its own ``connect_timeout``); none is about speed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from pg_server import SECRET_PASSWORD, SECRET_ROLE, PgServer
from tcp_proxy import TcpProxy

try:
    import psycopg
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs the dev dependencies: psycopg missing there is a failure
    pytest.skip("psycopg is not installed", allow_module_level=True)

#: Databases that ``pg_url`` handed to the tests below, across tests.
SEEN_DATABASES: set[str] = set()


def current_database(url: str) -> str:
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute("select current_database()").fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def proxy(pg_server: PgServer) -> Iterator[TcpProxy]:
    with TcpProxy((pg_server.host, pg_server.port)) as running:
        yield running


def test_pg_url_is_a_working_database(pg_url: str) -> None:
    with psycopg.connect(pg_url, connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("show fsync").fetchone() == ("off",)  # tests run non-durable


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_a_database_of_its_own(pg_url: str, turn: int) -> None:
    name = current_database(pg_url)
    assert name not in SEEN_DATABASES
    SEEN_DATABASES.add(name)
    with psycopg.connect(pg_url, connect_timeout=10) as conn:
        # Empty: nothing the other turn left behind.
        assert conn.execute("select to_regclass('mark')").fetchone() == (None,)
        conn.execute("create table mark (turn int)")
        conn.execute("insert into mark values (%s)", (turn,))


def test_create_database_gives_fresh_separate_databases(pg_server: PgServer) -> None:
    first, second = pg_server.create_database(), pg_server.create_database()
    assert first != second
    assert current_database(first) != current_database(second)
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute("create table only_here (x int)")
    with psycopg.connect(second, autocommit=True) as conn:
        assert conn.execute("select to_regclass('only_here')").fetchone() == (None,)
    assert pg_server.create_database("named_by_the_test").endswith("/named_by_the_test")
    assert pg_server.execute("select 1 from pg_database where datname = 'named_by_the_test'")


def test_a_wrong_password_is_refused(pg_server: PgServer) -> None:
    wrong = pg_server.url(user=SECRET_ROLE, password="wrong-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=10)
    right = pg_server.url(user=SECRET_ROLE, password=SECRET_PASSWORD)
    with psycopg.connect(right, connect_timeout=10) as conn:
        assert conn.execute("select current_user").fetchone() == (SECRET_ROLE,)


def test_the_proxy_forwards_queries(pg_url: str, proxy: TcpProxy) -> None:
    proxied = proxy.url_for(pg_url)
    assert f":{proxy.port}/" in proxied
    with psycopg.connect(proxied, connect_timeout=10) as conn:
        assert conn.execute("select repeat('x', 200000)").fetchone() == ("x" * 200000,)
        assert conn.execute("select inet_server_port()").fetchone() == (proxy.target[1],)
    assert current_database(proxied) == current_database(pg_url)


def test_a_hung_proxy_never_answers_until_cut_and_resume(pg_url: str, proxy: TcpProxy) -> None:
    proxied = proxy.url_for(pg_url)
    conn = psycopg.connect(proxied, autocommit=True, connect_timeout=10)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        proxy.hang()

        # A new connection is accepted, then nothing answers: the client's bound ends it.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxied, connect_timeout=2)

        # A query on the open connection waits...
        outcome: list[BaseException | object] = []

        def query() -> None:
            try:
                outcome.append(conn.execute("select 2").fetchone())
            except BaseException as error:
                outcome.append(error)

        waiter = threading.Thread(target=query, daemon=True)
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive(), f"the query finished through a hung proxy: {outcome}"

        # ...until the connection is cut, which it reports as an error.
        proxy.cut()
        waiter.join(10.0)
        assert not waiter.is_alive(), "the query still waits after cut()"
        assert len(outcome) == 1
        assert isinstance(outcome[0], psycopg.OperationalError), outcome
    finally:
        conn.close()

    proxy.resume()
    with psycopg.connect(proxied, connect_timeout=10) as again:
        assert again.execute("select 3").fetchone() == (3,)


def test_cut_resets_open_connections_and_new_ones_work(pg_url: str, proxy: TcpProxy) -> None:
    proxied = proxy.url_for(pg_url)
    with psycopg.connect(proxied, autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    with psycopg.connect(proxied, connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_url_for_keeps_everything_but_the_address() -> None:
    with TcpProxy(("127.0.0.1", 9)) as proxy:
        url = "postgresql://user:p%40ss@db.example:5432/name?sslmode=disable"
        assert (
            proxy.url_for(url)
            == f"postgresql://user:p%40ss@127.0.0.1:{proxy.port}/name?sslmode=disable"
        )
        assert proxy.url_for("postgresql://h:1/d") == f"postgresql://127.0.0.1:{proxy.port}/d"
