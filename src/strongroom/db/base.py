"""The database interface shared by SQLite (embedded) and PostgreSQL (scale-out).

Callers write one SQL text with `?` placeholders in the dialect both engines accept (SQLite
3.40 knows `ON CONFLICT ... DO NOTHING/UPDATE` and `RETURNING`); the PostgreSQL implementation
turns `?` into psycopg's `%s`. Only DDL differs, and `translate_ddl` derives PostgreSQL's from
SQLite's. Semantics both implementations keep (docs/DB-LAYER.md):

- `execute`/`query`/`executemany` outside a transaction: each call is its own transaction.
- `transaction()`: a write transaction serialised against every other `transaction()` of the
  same database (SQLite: BEGIN IMMEDIATE; PostgreSQL: READ COMMITTED plus a transaction-level
  advisory lock on the database's scope), so code written for SQLite's one writer behaves the
  same on PostgreSQL with many nodes.
- `read_transaction()`: one consistent snapshot for several reads (it may fill TEMP tables).
- `now_ns()`: the coordination clock: the database server's in PostgreSQL mode, never a node's.
"""

from __future__ import annotations

import contextlib
import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..errors import StrongroomError

Dialect = Literal["sqlite", "postgresql"]
Params = Sequence[object]
Row = tuple[Any, ...]


class DatabaseError(StrongroomError):
    """The database failed or is unreachable (the message says which, never a password)."""


class DatabaseUnavailable(DatabaseError):
    """The database server cannot be reached (down, restarting, or the network)."""


class ConstraintError(DatabaseError):
    """A statement broke a constraint (a UNIQUE value that is taken, a foreign key)."""


class LockTimeout(DatabaseError):
    """An advisory lock was not granted in time."""


@dataclass(slots=True)
class Result:
    """A statement's rows (fetched eagerly: a pooled connection goes back at once) and
    the number of rows it changed."""

    rows: list[Row] = field(default_factory=list)
    rowcount: int = -1

    def fetchone(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Row]:
        return self.rows

    def scalar(self) -> Any:
        """The first column of the first row (None without rows)."""
        return self.rows[0][0] if self.rows else None


class Tx(ABC):
    """Statements inside one transaction (from `Database.transaction` or `read_transaction`)."""

    dialect: ClassVar[Dialect]

    @abstractmethod
    def execute(self, sql: str, params: Params = ()) -> Result: ...

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        return self.execute(sql, params).rows

    @abstractmethod
    def now_ns(self) -> int:
        """The coordination clock (see the module's docstring)."""


class Database(ABC):
    """One database (SQLite file, or a PostgreSQL schema reached through a shared pool)."""

    dialect: ClassVar[Dialect]

    @abstractmethod
    def transaction(self, *, exclusive: bool = True) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction: commits on normal exit, rolls back on an exception.
        `exclusive` (the default) serialises it with every other exclusive transaction of this
        database; without it, PostgreSQL runs it at READ COMMITTED with no extra lock (the
        caller uses row locks or ON CONFLICT). SQLite has one writer either way."""

    @abstractmethod
    def read_transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """A consistent read snapshot (TEMP tables may be written in it)."""

    @abstractmethod
    def execute(self, sql: str, params: Params = ()) -> Result:
        """One statement in its own transaction."""

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        """One statement for many parameter rows, all in one transaction (not serialised
        with `transaction()`: use that when the rows depend on what is read first)."""

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        return self.execute(sql, params).rows

    @abstractmethod
    def now_ns(self) -> int: ...

    @abstractmethod
    def advisory_lock(
        self, name: str, *, timeout_s: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Exclusive across every process using this database (PostgreSQL: every node) until
        the block ends; released by the server if the holder dies. LockTimeout if it is not
        granted within `timeout_s` (None: wait)."""

    @abstractmethod
    def try_advisory_lock(self, name: str) -> contextlib.AbstractContextManager[bool]:
        """Like advisory_lock, without waiting: yields whether the lock is held."""

    @abstractmethod
    def executescript(self, ddl: str) -> None:
        """Run SQLite-dialect DDL (several statements, no parameters), translated for this
        engine by `translate_ddl`, in one transaction."""

    @abstractmethod
    def table_exists(self, name: str) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- SQL text -------------------------------------------------------------------------------

_DDL_RULES = (
    (
        re.compile(r"\bINTEGER PRIMARY KEY\b"),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),  # nanosecond times do not fit in INT4
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\)\s*WITHOUT ROWID\b"), ")"),
    (re.compile(r"\boffset\b(?= +BIGINT)"), '"offset"'),  # a reserved word in PostgreSQL
)


@functools.lru_cache(maxsize=256)
def translate_ddl(ddl: str, dialect: Dialect) -> str:
    """SQLite DDL as PostgreSQL accepts it: INTEGER -> BIGINT, INTEGER PRIMARY KEY -> an
    identity column (BY DEFAULT, so a migration may copy row IDs), BLOB -> BYTEA, no WITHOUT
    ROWID. Types and keywords are matched in upper case only, so a column named `blob` stays
    a column. Anything else must already be common SQL."""
    if dialect == "sqlite":
        return ddl
    for pattern, replacement in _DDL_RULES:
        ddl = pattern.sub(replacement, ddl)
    return ddl


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """`?` placeholders to psycopg's `%s` (and `%` to `%%`), leaving string literals,
    quoted identifiers and comments alone except for the `%` escape psycopg needs."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = sql.find(c, i + 1)
            while j != -1 and j + 1 < n and sql[j + 1] == c:  # a doubled quote inside
                j = sql.find(c, j + 2)
            j = n - 1 if j == -1 else j
            out.append(sql[i : j + 1].replace("%", "%%"))
            i = j + 1
            continue
        if c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j == -1 else j
            out.append(sql[i:j].replace("%", "%%"))
            i = j
            continue
        out.append("%s" if c == "?" else "%%" if c == "%" else c)
        i += 1
    return "".join(out)


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock (the same on every node)."""
    import blake3  # not hashlib: the embedded client's start-up does without OpenSSL's

    return int.from_bytes(blake3.blake3(name.encode()).digest(length=8), "big", signed=True)


def chunked(rows: Iterable[Params], size: int) -> Iterator[list[Params]]:
    batch: list[Params] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
