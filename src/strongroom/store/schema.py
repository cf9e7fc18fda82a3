"""The index's tables, their migrations, and how a new index comes into being.

One schema text serves both engines: SQLite's DDL as it always was (existing repositories are
opened unchanged), translated for PostgreSQL by `db.translate_ddl`. Scale-out stores add one
table, `pending_packs` (objects being written, docs/FORMAT.md "Leftovers"); in embedded mode the
same table is a TEMP table of the single writing process, so the file's schema is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from ..db import Database, DatabaseError, Tx, translate_ddl
from ..durable import fsync_dir
from ..errors import RepositoryError

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS packs(
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    size INTEGER NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs(
    id INTEGER PRIMARY KEY,
    blob_id BLOB UNIQUE NOT NULL,
    type INTEGER NOT NULL,
    pack INTEGER NOT NULL REFERENCES packs(id),
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    checksum BLOB NOT NULL,
    condemned_ns INTEGER  -- set by GC when unreferenced; NULL = live (see store/gc.py)
);
CREATE INDEX IF NOT EXISTS blobs_pack ON blobs(pack);
CREATE TABLE IF NOT EXISTS snapshots(
    id INTEGER PRIMARY KEY,
    snap_id TEXT UNIQUE NOT NULL,
    time_ns INTEGER NOT NULL,
    record BLOB NOT NULL,
    series TEXT NOT NULL DEFAULT '',  -- keyed hash of host + paths: groups for retention
    protected INTEGER NOT NULL DEFAULT 0,
    received_ns INTEGER NOT NULL DEFAULT 0  -- the store's clock at commit, not the client's
);
CREATE TABLE IF NOT EXISTS snapshot_blobs(
    snapshot INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    blob INTEGER NOT NULL REFERENCES blobs(id),
    PRIMARY KEY(snapshot, blob)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snapshot_blobs_blob ON snapshot_blobs(blob);
"""

# An object a writer has started to store but not indexed yet (one row per write: two nodes
# may write the same content-named pack). Leftover cleanup and GC never delete an object that
# has a row younger than the grace period.
PENDING = """
CREATE {temp}TABLE IF NOT EXISTS pending_packs(
    name TEXT NOT NULL,
    token BLOB NOT NULL,
    started_ns INTEGER NOT NULL,
    PRIMARY KEY(name, token)
)
"""

# Schema 1 -> 2: retention groups, protection, and GC's two-phase deletion.
# Schema 2 -> 3: the time each snapshot was received; older ones get their own time, never
# one later than the migration (a future time a client chose must not outlive it).
MIGRATIONS = {
    1: (
        "ALTER TABLE blobs ADD COLUMN condemned_ns INTEGER",
        "ALTER TABLE snapshots ADD COLUMN series TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE snapshots ADD COLUMN protected INTEGER NOT NULL DEFAULT 0",
    ),
    2: (
        "ALTER TABLE snapshots ADD COLUMN received_ns INTEGER NOT NULL DEFAULT 0",
        "UPDATE snapshots SET received_ns = "
        "MIN(time_ns, CAST(strftime('%s', 'now') AS INTEGER) * 1000000000)",
    ),
}

INIT_PREFIX = "index.sqlite.init-"


def statements(ddl: str, db: Database) -> list[str]:
    """The DDL for this engine, one statement each (comments dropped: they hold semicolons)."""
    lines = [line.split("--", 1)[0] for line in translate_ddl(ddl, db.dialect).splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def check_version(db: Database, label: str) -> None:
    """Migrate an older index in one transaction; refuse one this code does not know."""
    try:
        row = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
    except DatabaseError as exc:
        raise RepositoryError(f"repository index at {label} is unreadable: {exc}") from None
    version = _version(row)
    if version == SCHEMA_VERSION:
        return
    if version not in MIGRATIONS or db.dialect != "sqlite":
        raise RepositoryError(f"repository at {label} has an unsupported schema")
    with db.transaction() as tx:
        current = _version(tx.execute("SELECT value FROM meta WHERE name='schema'").fetchone())
        while current in MIGRATIONS:
            for statement in MIGRATIONS[current]:
                tx.execute(statement)
            current += 1
        if current != SCHEMA_VERSION:
            raise RepositoryError(f"repository at {label} has an unsupported schema")
        tx.execute("UPDATE meta SET value=? WHERE name='schema'", (str(SCHEMA_VERSION),))


def _version(row: tuple[object, ...] | None) -> int:
    if row is None:
        return -1
    value = row[0]
    text = value.decode() if isinstance(value, bytes) else str(value)
    return int(text) if text.isdigit() else -1


def ensure_pending(db: Database) -> None:
    """The pending_packs table: TEMP in SQLite (one writing process), shared in PostgreSQL."""
    temp = "TEMP " if db.dialect == "sqlite" else ""
    db.execute(translate_ddl(PENDING.format(temp=temp), db.dialect))


def create_in_database(db: Database, meta: dict[str, bytes] | None, label: str) -> None:
    """Make a new index in an empty database (scale-out: the user's schema), all in one
    transaction: tables, schema version and `meta`. RepositoryError if one exists."""
    with db.transaction() as tx:
        for statement in statements(SCHEMA, db):
            tx.execute(statement)
        for statement in statements(PENDING.format(temp=""), db):
            tx.execute(statement)
        if tx.execute("SELECT 1 FROM meta WHERE name='schema'").fetchone() is not None:
            raise RepositoryError(f"a repository already exists at {label}")
        _insert_meta(tx, meta)


def _insert_meta(tx: Tx, meta: dict[str, bytes] | None) -> None:
    tx.execute("INSERT INTO meta(name, value) VALUES('schema', ?)", (str(SCHEMA_VERSION).encode(),))
    tx.executemany("INSERT INTO meta(name, value) VALUES(?, ?)", sorted((meta or {}).items()))


def create_sqlite_file(root: Path, meta: dict[str, bytes] | None) -> None:
    """A new embedded index: built under a temporary name, with its initial metadata, and
    linked into place last, so a crash during creation leaves no index at all (`create`
    accepts the folder again) or a complete one."""
    index = root / "index.sqlite"
    if index.exists():
        raise RepositoryError(f"a repository already exists at {root}")
    if root.exists() and not _only_init_leftovers(root):
        raise RepositoryError(f"{root} exists and is not empty; choose an empty folder")
    if _mkdir(root, parents=True):
        fsync_dir(root.parent)  # the repository folder's own entry must survive a crash
    for entry in root.iterdir():  # an earlier create that was killed
        if entry.name.startswith(INIT_PREFIX):
            with contextlib.suppress(OSError):
                entry.unlink()
    (root / "packs").mkdir(exist_ok=True)
    tmp = root / f"{INIT_PREFIX}{os.urandom(8).hex()}"
    try:
        db = sqlite3.connect(tmp)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            with db:
                db.execute(
                    "INSERT INTO meta(name, value) VALUES('schema', ?)", (str(SCHEMA_VERSION),)
                )
                db.executemany(
                    "INSERT INTO meta(name, value) VALUES(?, ?)", sorted((meta or {}).items())
                )
        finally:
            db.close()
        _fsync_file(tmp)
        _link_new(tmp, index)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(root)


def _only_init_leftovers(root: Path) -> bool:
    """True if `root` holds nothing but what a killed `create` can leave behind."""
    for entry in root.iterdir():
        if entry.name.startswith(INIT_PREFIX) or entry.name == "lock":
            continue
        if entry.name == "packs" and entry.is_dir() and not any(entry.iterdir()):
            continue
        return False
    return True


def _link_new(src: Path, dest: Path) -> None:
    """Give `src` the name `dest` atomically, failing if `dest` exists (two concurrent creates)."""
    try:
        os.link(src, dest)
    except FileExistsError:
        raise RepositoryError(f"a repository already exists at {dest.parent}") from None
    except OSError:  # a filesystem without hard links: a plain rename, checked first
        if dest.exists():
            raise RepositoryError(f"a repository already exists at {dest.parent}") from None
        os.replace(src, dest)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))  # Windows needs write access
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(path: Path, *, parents: bool = False) -> bool:
    """Create a folder; True if this call created it (its parent then needs an fsync)."""
    try:
        path.mkdir(parents=parents)
    except FileExistsError:
        if not path.is_dir():
            raise
        return False
    return True
