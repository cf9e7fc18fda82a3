"""The user database's schema and its migrations (server/userdb.py runs them).

One schema version for the whole database: accounts (userdb.py) and the operations tables (the
console's admins, usage history, events and alerts: server/opsdb.py) live side by side. The
same migrations build SQLite's users.sqlite and PostgreSQL's tables (db.translate_ddl; user
names are unique case-insensitively through `lower(name)` there, COLLATE NOCASE here). In
PostgreSQL the version is kept in a table, in SQLite in `PRAGMA user_version` (as always).
PostgreSQL also gets the tables only a cluster of nodes needs (CLUSTER_DDL).
"""

from __future__ import annotations

from ..db import Database, Tx, translate_ddl
from ..errors import StrongroomError

SCHEMA_VERSION = 4
DEFAULT_PROTECT_WINDOW_S = 7 * 24 * 3600  # append-only: the server's policy keeps a week

# MIGRATIONS[i] takes the schema from version i to i + 1 (version 0 = empty file).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE users(
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE COLLATE NOCASE,
            storage_id TEXT NOT NULL UNIQUE,
            directory TEXT NOT NULL,
            salt BLOB NOT NULL,
            kdf_memory_kib INTEGER NOT NULL,
            kdf_iterations INTEGER NOT NULL,
            kdf_lanes INTEGER NOT NULL,
            auth_hash BLOB NOT NULL,
            keyfile BLOB,
            must_change_password INTEGER NOT NULL,
            quota INTEGER,
            append_only INTEGER NOT NULL,
            created_ns INTEGER NOT NULL,
            last_backup_ns INTEGER,
            last_backup_result TEXT
        )""",
    ),
    (
        # Retention: a per-user policy (JSON, see retention.Policy) and server-wide settings
        # such as the default policy, both changed by the admin while the server runs.
        "ALTER TABLE users ADD COLUMN policy TEXT",
        "CREATE TABLE settings(name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    (
        # Security: a generation bumped by every change of login, keys, append-only or
        # deletion (open sessions compare it on every request and end when it moved), and the
        # append-only protection window (seconds a received snapshot is safe from the policy).
        "ALTER TABLE users ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE users ADD COLUMN protect_window_s INTEGER NOT NULL DEFAULT "
        f"{DEFAULT_PROTECT_WINDOW_S:d}",
        # Storage folders to remove: written in the transaction that deletes the user, so a
        # crash half-way through `user delete --purge-data` is finished by the next start.
        "CREATE TABLE pending_purges(storage_id TEXT PRIMARY KEY)",
    ),
    (
        # Operations: when a user's backup is overdue (NULL = the server's default), whom to
        # tell besides the admin, and the last backup that succeeded.
        "ALTER TABLE users ADD COLUMN expected_interval_s INTEGER",
        "ALTER TABLE users ADD COLUMN notify_email TEXT",
        "ALTER TABLE users ADD COLUMN last_success_ns INTEGER",
        "UPDATE users SET last_success_ns = last_backup_ns WHERE last_backup_result = 'ok'",
        # Console admins: separate from backup users, an Argon2id hash of their password.
        """CREATE TABLE console_admins(
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE COLLATE NOCASE,
            salt BLOB NOT NULL,
            kdf_memory_kib INTEGER NOT NULL,
            kdf_iterations INTEGER NOT NULL,
            kdf_lanes INTEGER NOT NULL,
            hash BLOB NOT NULL,
            created_ns INTEGER NOT NULL
        )""",
        # Usage over time: one point per backup and one per day, per user.
        """CREATE TABLE usage_history(
            user_id INTEGER NOT NULL,
            time_ns INTEGER NOT NULL,
            stored_bytes INTEGER NOT NULL,
            snapshots INTEGER NOT NULL,
            kind TEXT NOT NULL
        )""",
        "CREATE INDEX usage_history_user ON usage_history(user_id, time_ns)",
        # The last errors of each user (failed backups, refusals, what a client reported).
        """CREATE TABLE events(
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL,
            time_ns INTEGER NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL
        )""",
        "CREATE INDEX events_user ON events(user_id, time_ns)",
        # Alerts in force (so a restart neither forgets nor repeats them): user 0 = server.
        """CREATE TABLE alerts(
            user_id INTEGER NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL,
            since_ns INTEGER NOT NULL,
            last_sent_ns INTEGER,
            PRIMARY KEY(user_id, kind)
        )""",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION


# What several nodes share besides accounts (scale-out only): nodes and their sessions (with
# heartbeats, for GC's horizon), login throttling, commit rate, quota reservations, the
# server's TLS identity and secret, and the progress of `strongroom-admin migrate`.
CLUSTER_DDL = """
CREATE TABLE IF NOT EXISTS nodes(
    node_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions(
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    storage_id TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    login_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_storage ON sessions(storage_id, login_ns);
CREATE INDEX IF NOT EXISTS sessions_node ON sessions(node_id);
CREATE TABLE IF NOT EXISTS login_throttle(
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_failure_ns INTEGER NOT NULL,
    locked_until_ns INTEGER NOT NULL,
    busy_until_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS login_known(
    user_key TEXT NOT NULL,
    address_key TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    PRIMARY KEY(user_key, address_key)
);
CREATE TABLE IF NOT EXISTS commit_log(user_id INTEGER NOT NULL, time_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS commit_log_user ON commit_log(user_id, time_ns);
CREATE TABLE IF NOT EXISTS quota_reservations(
    node_id TEXT NOT NULL,
    storage_id TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY(node_id, storage_id)
);
CREATE TABLE IF NOT EXISTS server_identity(name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS migration_progress(step TEXT PRIMARY KEY, done_ns INTEGER NOT NULL);
"""

_PG_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS strongroom_schema(name TEXT PRIMARY KEY, version BIGINT NOT NULL)"
)
# PostgreSQL has no NOCASE: a unique index on lower(name) instead (names are ASCII).
_PG_EXTRA = {
    0: ("CREATE UNIQUE INDEX users_name_folded ON users(lower(name))",),
    3: ("CREATE UNIQUE INDEX console_admins_name_folded ON console_admins(lower(name))",),
}


def migrate(db: Database) -> None:
    """Bring the database to SCHEMA_VERSION (in one transaction; another process may be
    doing the same: the transaction is exclusive and reads the version again)."""
    if db.dialect == "postgresql":
        db.execute(_PG_VERSION_TABLE)
    if _version(db) == SCHEMA_VERSION:
        _cluster_tables(db)
        return
    with db.transaction() as tx:
        version = _version(tx)
        if version > SCHEMA_VERSION:
            raise StrongroomError(
                f"the user database was written by a newer strongroom (schema {version}); "
                "upgrade strongroom"
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                tx.execute(_for_dialect(statement, db.dialect))
            if db.dialect == "postgresql":
                for statement in _PG_EXTRA.get(step, ()):
                    tx.execute(statement)
        _set_version(tx, db.dialect)
    _cluster_tables(db)


def _cluster_tables(db: Database) -> None:
    if db.dialect == "postgresql":
        db.executescript(CLUSTER_DDL)


def _for_dialect(statement: str, dialect: str) -> str:
    if dialect == "sqlite":
        return statement
    return translate_ddl(statement.replace(" COLLATE NOCASE", ""), "postgresql")


def _version(db: Database | Tx) -> int:
    if db.dialect == "sqlite":
        return int(db.execute("PRAGMA user_version").scalar())
    found = db.execute("SELECT version FROM strongroom_schema WHERE name = 'users'").scalar()
    return 0 if found is None else int(found)


def _set_version(tx: Tx, dialect: str) -> None:
    if dialect == "sqlite":
        tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        return
    tx.execute(
        "INSERT INTO strongroom_schema(name, version) VALUES('users', ?) "
        "ON CONFLICT(name) DO UPDATE SET version = excluded.version",
        (SCHEMA_VERSION,),
    )
