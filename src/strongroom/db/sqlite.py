"""SQLite, the embedded default: one file, WAL, one connection per Database, one writer."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

from .base import ConstraintError, Database, DatabaseError, Dialect, LockTimeout, Params, Result, Tx

# Advisory locks of SQLite databases are process-wide (across the threads of one process):
# in embedded mode one process writes a data folder (the store's WriterLock), so that is enough.
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class SqliteTx(Tx):
    dialect: ClassVar[Dialect] = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> Result:
        with _mapped():
            cur = self._conn.execute(sql, params)
            return Result(cur.fetchall(), cur.rowcount)

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with _mapped():
            self._conn.executemany(sql, rows)

    def now_ns(self) -> int:
        return time.time_ns()


class SqliteDatabase(Database):
    """One SQLite file. Thread-safe: one connection behind a lock (SQLite has one writer
    anyway). `synchronous=FULL`: a committed row survives a power loss."""

    dialect: ClassVar[Dialect] = "sqlite"

    def __init__(
        self, path: Path, *, create: bool = True, timeout_s: float = 30.0, mode: int = 0o600
    ) -> None:
        self.path = path
        if not path.exists():
            if not create:
                raise DatabaseError(f"no database at {path}")
            # SQLite gives its -wal and -shm files the database file's mode.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), mode)
            os.close(fd)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=timeout_s
        )
        try:
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000):d}")
            self._set_wal()
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise DatabaseError(f"database {path} is unreadable: {exc}") from None
        self._tx = SqliteTx(self._conn)

    def _set_wal(self) -> None:
        # Switching a new file to WAL needs a moment alone with it; another process doing the
        # same can make it fail at once, without waiting on the busy timeout.
        for attempt in range(100):
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError:
                if attempt == 99:
                    raise
                time.sleep(0.05)

    @contextlib.contextmanager
    def _begin(self, statement: str) -> Iterator[Tx]:
        with self._lock:
            with _mapped():
                self._conn.execute(statement)
            try:
                yield self._tx
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            with _mapped():
                self._conn.execute("COMMIT")

    def transaction(self, *, exclusive: bool = True) -> contextlib.AbstractContextManager[Tx]:
        # IMMEDIATE: the write lock from the start, so reads inside see what writes change.
        return self._begin("BEGIN IMMEDIATE")

    def read_transaction(self) -> contextlib.AbstractContextManager[Tx]:
        return self._begin("BEGIN")

    def execute(self, sql: str, params: Params = ()) -> Result:
        with self._lock:
            return self._tx.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with self.transaction() as tx:
            tx.executemany(sql, rows)

    def now_ns(self) -> int:
        return time.time_ns()

    @contextlib.contextmanager
    def advisory_lock(self, name: str, *, timeout_s: float | None = None) -> Iterator[None]:
        lock = self._named_lock(name)
        if not lock.acquire(timeout=-1 if timeout_s is None else timeout_s):
            raise LockTimeout(f"lock {name!r} is held elsewhere; try again later")
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def try_advisory_lock(self, name: str) -> Iterator[bool]:
        lock = self._named_lock(name)
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()

    def _named_lock(self, name: str) -> threading.Lock:
        key = (os.path.realpath(self.path), name)
        with _LOCKS_GUARD:
            return _LOCKS.setdefault(key, threading.Lock())

    def executescript(self, ddl: str) -> None:
        with self._lock, _mapped():
            # executescript commits first; the explicit BEGIN/COMMIT makes the script atomic.
            self._conn.executescript(f"BEGIN IMMEDIATE;\n{ddl}\nCOMMIT;")

    def table_exists(self, name: str) -> bool:
        row = self.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """Driver errors as the layer's own (a taken UNIQUE value is ConstraintError)."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise ConstraintError(str(exc)) from exc
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc):
            raise
        raise DatabaseError(f"database error: {exc}") from exc
