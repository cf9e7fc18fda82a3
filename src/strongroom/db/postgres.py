"""PostgreSQL for scale-out: psycopg 3 with a connection pool shared by every Database that
names the same server, each Database scoped to one schema (a user's store: `store_<id>`).

Every connection is in autocommit mode; transactions are explicit BEGIN/COMMIT. Each
connection has libpq's connect timeout, a statement timeout and an idle-in-transaction
timeout, so a hung server or a stuck transaction never holds a node forever. The pool checks
a connection before lending it, so a PostgreSQL restart costs a reconnect, not an error.
"""

from __future__ import annotations

import contextlib
import re
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from .base import (
    ConstraintError,
    Database,
    DatabaseError,
    DatabaseUnavailable,
    Dialect,
    LockTimeout,
    Params,
    Result,
    Tx,
    lock_key,
    to_pyformat,
    translate_ddl,
)

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_NOW_NS = "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000)::BIGINT"
Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class PgSettings:
    connect_timeout_s: int = 10
    statement_timeout_s: float = 60.0
    idle_in_transaction_timeout_s: float = 300.0
    pool_min: int = 1
    pool_max: int = 16
    pool_wait_s: float = 15.0  # how long a caller waits for a free (or new) connection


class PgPool:
    """One pool per PostgreSQL server and process; Databases share it (see `PostgresDatabase`)."""

    def __init__(self, dsn: str, settings: PgSettings | None = None) -> None:
        s = settings or PgSettings()
        self.settings = s
        options = (
            f"-c statement_timeout={int(s.statement_timeout_s * 1000)} "
            f"-c idle_in_transaction_session_timeout={int(s.idle_in_transaction_timeout_s * 1000)}"
        )
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            dsn,
            min_size=s.pool_min,
            max_size=s.pool_max,
            kwargs={
                "autocommit": True,
                "connect_timeout": s.connect_timeout_s,
                "options": options,
                "application_name": "strongroom",
            },
            timeout=s.pool_wait_s,
            check=ConnectionPool.check_connection,
            open=False,
            name="strongroom",
        )
        try:
            self._pool.open(wait=True, timeout=float(s.connect_timeout_s))
        except PoolTimeout:
            self._pool.close()
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL within {s.connect_timeout_s} s; "
                "is it running, and are the address and credentials right?"
            ) from None
        # Which search_path each pooled connection has now (set outside any transaction, so
        # it stays until changed): one SET per change of schema, not per statement.
        self._paths: weakref.WeakKeyDictionary[Conn, str] = weakref.WeakKeyDictionary()
        self._paths_lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self, schema: str) -> Iterator[Conn]:
        try:
            with self._pool.connection() as conn:
                with self._paths_lock:
                    current = self._paths.get(conn)
                if current != schema:
                    with _mapped():
                        conn.execute(
                            sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema))
                        )
                    with self._paths_lock:
                        self._paths[conn] = schema
                yield conn
        except PoolTimeout:
            raise DatabaseUnavailable(
                "no PostgreSQL connection became free or could be made in "
                f"{self.settings.pool_wait_s:g} s; is PostgreSQL up?"
            ) from None

    def close(self) -> None:
        self._pool.close()


class PgTx(Tx):
    dialect: ClassVar[Dialect] = "postgresql"

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    def execute(self, sql_text: str, params: Params = ()) -> Result:
        with _mapped(), self._conn.cursor() as cur:
            cur.execute(to_pyformat(sql_text), tuple(params))
            rows = cur.fetchall() if cur.description is not None else []
            return Result(rows, cur.rowcount)

    def executemany(self, sql_text: str, rows: Iterable[Params]) -> None:
        with _mapped(), self._conn.cursor() as cur:
            cur.executemany(to_pyformat(sql_text), (tuple(r) for r in rows))

    def now_ns(self) -> int:
        return int(self.execute(_NOW_NS).scalar())

    def script(self, statements: str) -> None:
        """Several statements without parameters (psycopg then sends them as one query)."""
        with _mapped():
            self._conn.execute(statements.encode())


class PostgresDatabase(Database):
    """A schema of a PostgreSQL database, reached through a shared PgPool. The schema is
    created on first use (`create=True`). Exclusive transactions of one schema are serialised
    by `pg_advisory_xact_lock` on a key derived from the schema's name, across every node;
    advisory lock names are scoped to the schema too. The search path is the schema, then
    `public`: a store's transaction can read the server's shared tables (quotas) unqualified."""

    dialect: ClassVar[Dialect] = "postgresql"

    def __init__(self, pool: PgPool, schema: str = "public", *, create: bool = True) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"not a schema name: {schema!r}")
        self.pool = pool
        self.schema = schema
        self._tx_key = lock_key(f"strongroom-tx:{schema}")
        if create and schema != "public":
            with self.pool.connection("public") as conn, _mapped():
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )

    def scoped(self, schema: str, *, create: bool = True) -> PostgresDatabase:
        """Another schema through the same pool."""
        return PostgresDatabase(self.pool, schema, create=create)

    def schema_exists(self) -> bool:
        return self._exists("SELECT 1 FROM pg_namespace WHERE nspname = ?", (self.schema,))

    def drop_schema(self) -> None:
        """Remove the schema and everything in it (a purged user's store)."""
        with self.pool.connection("public") as conn, _mapped():
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )

    @contextlib.contextmanager
    def _begin(self, begin: str, lock: bool) -> Iterator[PgTx]:
        with self.pool.connection(self.schema) as conn:
            tx = PgTx(conn)
            tx.execute(begin)
            try:
                if lock:
                    tx.execute("SELECT pg_advisory_xact_lock(?)", (self._tx_key,))
                yield tx
            except BaseException:
                if not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
            tx.execute("COMMIT")

    def transaction(self, *, exclusive: bool = True) -> contextlib.AbstractContextManager[Tx]:
        return self._begin("BEGIN ISOLATION LEVEL READ COMMITTED", exclusive)

    def read_transaction(self) -> contextlib.AbstractContextManager[Tx]:
        # Not READ ONLY: that would refuse CREATE TEMP TABLE (callers only write TEMP tables).
        return self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ", False)

    def execute(self, sql_text: str, params: Params = ()) -> Result:
        with self.pool.connection(self.schema) as conn:
            return PgTx(conn).execute(sql_text, params)

    def executemany(self, sql_text: str, rows: Iterable[Params]) -> None:
        with self._begin("BEGIN", False) as tx:
            tx.executemany(sql_text, rows)

    def now_ns(self) -> int:
        return int(self.execute(_NOW_NS).scalar())

    @contextlib.contextmanager
    def advisory_lock(self, name: str, *, timeout_s: float | None = None) -> Iterator[None]:
        key = lock_key(f"{self.schema}:{name}")
        # A connection of its own for as long as the lock is held: the lock belongs to it,
        # and PostgreSQL releases it if this node dies (the connection ends).
        with self.pool.connection(self.schema) as conn:
            tx = PgTx(conn)
            wait_ms = 0 if timeout_s is None else max(1, int(timeout_s * 1000))
            # lock_timeout ends the wait; the statement timeout (later, or none when waiting
            # without a bound) must not end it first.
            stop_ms = 0 if timeout_s is None else wait_ms + 5000
            tx.execute("SELECT set_config('lock_timeout', ?, false)", (str(wait_ms),))
            tx.execute("SELECT set_config('statement_timeout', ?, false)", (str(stop_ms),))
            try:
                tx.execute("SELECT pg_advisory_lock(?)", (key,))
            except LockTimeout:
                raise LockTimeout(f"lock {name!r} is held elsewhere; try again later") from None
            finally:
                if not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("RESET lock_timeout")
                        conn.execute("RESET statement_timeout")
            try:
                yield
            finally:
                if not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    @contextlib.contextmanager
    def try_advisory_lock(self, name: str) -> Iterator[bool]:
        key = lock_key(f"{self.schema}:{name}")
        with self.pool.connection(self.schema) as conn:
            got = bool(PgTx(conn).execute("SELECT pg_try_advisory_lock(?)", (key,)).scalar())
            try:
                yield got
            finally:
                if got and not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def executescript(self, ddl: str) -> None:
        with self._begin("BEGIN", True) as tx:
            tx.script(translate_ddl(ddl, "postgresql"))

    def table_exists(self, name: str) -> bool:
        return self._exists(
            "SELECT 1 FROM pg_tables WHERE schemaname = ? AND tablename = ?", (self.schema, name)
        )

    def _exists(self, query: str, params: Params) -> bool:
        return self.execute(query, params).fetchone() is not None

    def close(self) -> None:
        """The pool is shared: closing a Database leaves it open (PgPool.close ends it)."""


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """psycopg's errors as the layer's own, one line each, never with the DSN."""
    try:
        yield
    except psycopg.errors.LockNotAvailable as exc:
        raise LockTimeout(_first_line(exc)) from exc
    except psycopg.IntegrityError as exc:
        raise ConstraintError(_first_line(exc)) from exc
    except psycopg.errors.QueryCanceled as exc:
        raise DatabaseError(f"PostgreSQL statement timed out: {_first_line(exc)}") from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"PostgreSQL is unreachable: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise DatabaseError(f"PostgreSQL error: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
