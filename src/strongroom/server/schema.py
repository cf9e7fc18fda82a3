"""The user database's schema and its migrations (server/userdb.py runs them).

One schema version for the whole file: accounts (userdb.py) and the operations tables (the
console's admins, usage history, events and alerts: server/opsdb.py) live side by side.
"""

from __future__ import annotations

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
