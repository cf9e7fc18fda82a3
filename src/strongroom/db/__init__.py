"""The database layer: one interface, SQLite (embedded) and PostgreSQL (scale-out).

See docs/DB-LAYER.md. PostgreSQL support is imported only when used (`db.postgres`), so the
embedded mode never loads psycopg.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .base import (
    ConstraintError,
    Database,
    DatabaseError,
    DatabaseUnavailable,
    LockTimeout,
    Result,
    Tx,
    translate_ddl,
)
from .sqlite import SqliteDatabase

if TYPE_CHECKING:
    from .postgres import PgPool, PgSettings, PostgresDatabase

__all__ = [
    "ConstraintError",
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "LockTimeout",
    "Result",
    "SqliteDatabase",
    "Tx",
    "postgres_database",
    "translate_ddl",
]

_POOLS: dict[str, PgPool] = {}
_POOLS_LOCK = threading.Lock()


def postgres_database(
    dsn: str, schema: str = "public", *, settings: PgSettings | None = None, create: bool = True
) -> PostgresDatabase:
    """A schema of the PostgreSQL database at `dsn`, through this process's one pool for that
    DSN (made on first use with `settings`)."""
    from .postgres import PgPool, PostgresDatabase

    with _POOLS_LOCK:
        pool = _POOLS.get(dsn)
        if pool is None:
            pool = _POOLS[dsn] = PgPool(dsn, settings)
    return PostgresDatabase(pool, schema, create=create)


def close_pools() -> None:
    """Close every shared pool (server shutdown, tests)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()
