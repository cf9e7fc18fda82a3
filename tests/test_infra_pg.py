"""The PostgreSQL test fixtures are real and usable: psycopg 3 against Debian's PostgreSQL 15
(tests/pgfixtures.py), including the restarts and crashes later storage tests will rely on."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import psycopg
import pytest

if TYPE_CHECKING:
    from pgfixtures import PgCluster

# The fixtures pg_cluster and pg_dsn. Nothing else imports pgfixtures before pytest does,
# so that pytest can rewrite its asserts.
pytest_plugins = ["pgfixtures"]
pytestmark = pytest.mark.timeout(120)


def connect(dsn: str, **kw: object) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, connect_timeout=10, **kw)  # type: ignore[arg-type]


def test_server_is_postgresql_15_on_loopback_with_a_password(
    pg_cluster: PgCluster, pg_dsn: str
) -> None:
    assert pg_dsn.startswith(f"postgresql://strongroom:{pg_cluster.password}@127.0.0.1:")
    with connect(pg_dsn) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and str(version[0]).startswith("15")
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        user = conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        assert user.fetchone() == ("strongroom", False)
    wrong = pg_dsn.replace(pg_cluster.password, "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(wrong)


def test_table_and_transactions(pg_dsn: str) -> None:
    with connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE blobs (id bytea PRIMARY KEY, pack text NOT NULL)")
        conn.commit()
        with conn.transaction():
            conn.execute("INSERT INTO blobs VALUES (%s, %s)", (b"\x01" * 32, "pack-1"))
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute("INSERT INTO blobs VALUES (%s, %s)", (b"\x02" * 32, "pack-2"))
            conn.execute("INSERT INTO blobs VALUES (%s, %s)", (b"\x01" * 32, "pack-3"))
        # The failed transaction left nothing behind; the committed one is visible elsewhere.
        with connect(pg_dsn) as other:
            rows = other.execute("SELECT id, pack FROM blobs").fetchall()
            assert rows == [(b"\x01" * 32, "pack-1")]


def test_each_test_gets_an_empty_database(pg_dsn: str) -> None:
    with connect(pg_dsn) as conn:
        n = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert n == (0,)


def test_advisory_lock_between_two_connections(pg_dsn: str) -> None:
    with connect(pg_dsn, autocommit=True) as a, connect(pg_dsn, autocommit=True) as b:
        assert a.execute("SELECT pg_try_advisory_lock(9)").fetchone() == (True,)
        assert b.execute("SELECT pg_try_advisory_lock(9)").fetchone() == (False,)

        # A blocking wait in b ends as soon as a lets go.
        got: list[float] = []

        def wait_in_b() -> None:
            b.execute("SET lock_timeout = '20s'")
            b.execute("SELECT pg_advisory_lock(9)")
            got.append(time.monotonic())

        waiter = threading.Thread(target=wait_in_b)
        waiter.start()
        time.sleep(0.3)
        assert not got, "b took a lock a holds"
        released = time.monotonic()
        assert a.execute("SELECT pg_advisory_unlock(9)").fetchone() == (True,)
        waiter.join(30)
        assert got and got[0] >= released
        assert a.execute("SELECT pg_try_advisory_lock(9)").fetchone() == (False,)

        # A closed session gives its locks back.
        b.close()
        deadline = time.monotonic() + 10
        while a.execute("SELECT pg_try_advisory_lock(9)").fetchone() != (True,):
            assert time.monotonic() < deadline, "lock not released when its session ended"
            time.sleep(0.05)


def test_lock_timeout_is_a_clear_error(pg_dsn: str) -> None:
    with connect(pg_dsn, autocommit=True) as a, connect(pg_dsn) as b:
        a.execute("SELECT pg_advisory_lock(7)")
        b.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            b.execute("SELECT pg_advisory_xact_lock(7)")


@pytest.mark.parametrize("mode", ["fast", "immediate", "kill"])
def test_restart_mid_session_then_reconnect(pg_cluster: PgCluster, pg_dsn: str, mode: str) -> None:
    port = pg_cluster.port
    with connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (2)")  # left uncommitted
        if mode == "kill":
            pg_cluster.kill()
        else:
            pg_cluster.stop(mode)
        assert not pg_cluster.is_running()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    # While it is down, a new connection fails fast and clearly (normally "Connection refused").
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match=r"connection to server at .* failed"):
        connect(pg_dsn)
    assert time.monotonic() - t0 < 5
    pg_cluster.start()
    assert pg_cluster.port == port, "a restart must keep the DSN valid"
    with connect(pg_dsn) as conn:
        assert conn.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,)]


def test_restart_keeps_connections_of_others_working(pg_cluster: PgCluster, pg_dsn: str) -> None:
    pg_cluster.restart()
    with connect(pg_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
