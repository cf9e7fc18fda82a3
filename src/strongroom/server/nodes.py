"""Who is backing up where: the sessions GC must wait for, on one node or on all of them.

GC deletes a condemned blob only if it was condemned before the login of the oldest session
still open on the same storage (store/gc.py): such a session may have listed the blob as live.
One node knows its own sessions (LocalSessions, the embedded mode). Several nodes share a
`sessions` table in PostgreSQL (SharedSessions): each row has the node, the storage, the login
time by the database's clock, and an expiry that the node's heartbeat pushes forward. A node
that dies stops beating; after `missed_heartbeats` intervals its sessions no longer hold GC
back and its quota reservations no longer count. A node that finds it was presumed dead (a
long pause) ends its own sessions: GC may have deleted what they relied on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Protocol

from ..db import Database, DatabaseError, Tx

log = logging.getLogger("strongroom.server")

COMMIT_LOG_WINDOW_NS = 3600 * 10**9
_LOCK_USER = {  # SQLite's one writer needs no row lock
    "postgresql": "SELECT id FROM users WHERE id = ? FOR UPDATE",
    "sqlite": "SELECT id FROM users WHERE id = ?",
}
KNOWN_LOGIN_NS = 86400 * 10**9


class SessionRegistry(Protocol):
    def now_ns(self) -> int:
        """The clock login times (and GC's condemn times) are read from."""

    def login(self, storage_id: str, user_id: int, token: object) -> None: ...

    def logout(self, token: object) -> None: ...

    def oldest_session_ns(self, storage_id: str, exclude: object = None) -> int | None:
        """Login time of the oldest live session on this storage but `exclude`; None if none."""

    def in_use(self, storage_id: str) -> bool:
        """Does any live session (on any node) hold this storage?"""


class LocalSessions:
    """The embedded mode: one process, its own clock. Each UserStore keeps its own sessions
    (UserStore.sessions), so there is nothing to share here."""

    def now_ns(self) -> int:
        return time.time_ns()

    def login(self, storage_id: str, user_id: int, token: object) -> None:
        pass

    def logout(self, token: object) -> None:
        pass

    def oldest_session_ns(self, storage_id: str, exclude: object = None) -> int | None:
        return None

    def in_use(self, storage_id: str) -> bool:
        return False


class SharedSessions:
    """Scale-out: the `sessions` and `nodes` tables (server/schema.py CLUSTER_DDL)."""

    def __init__(
        self, db: Database, node_id: str, address: str, *, interval_s: float, missed: int
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.address = address
        self.ttl_ns = int(interval_s * missed * 1e9)
        self._lock = threading.Lock()
        self._rows: dict[object, int] = {}  # token -> sessions.id
        self._lost = False  # the database was unreachable at the last beat

    def now_ns(self) -> int:
        return self.db.now_ns()

    def start(self) -> None:
        """Register this node (a restart under the same ID drops its old sessions)."""
        with self.db.transaction() as tx:
            now = tx.now_ns()
            tx.execute("DELETE FROM sessions WHERE node_id = ?", (self.node_id,))
            tx.execute("DELETE FROM quota_reservations WHERE node_id = ?", (self.node_id,))
            tx.execute(
                "INSERT INTO nodes(node_id, address, started_ns, expires_ns) VALUES(?, ?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET address = excluded.address, "
                "started_ns = excluded.started_ns, expires_ns = excluded.expires_ns",
                (self.node_id, self.address, now, now + self.ttl_ns),
            )

    def stop(self) -> None:
        """A clean shutdown: this node's rows go at once instead of expiring."""
        with contextlib.suppress(DatabaseError), self.db.transaction() as tx:
            for table in ("sessions", "quota_reservations", "nodes"):
                tx.execute(f"DELETE FROM {table} WHERE node_id = ?", (self.node_id,))  # noqa: S608 - constant

    def login(self, storage_id: str, user_id: int, token: object) -> None:
        with self.db.transaction(exclusive=False) as tx:
            now = tx.now_ns()
            row = tx.execute(
                "INSERT INTO sessions(node_id, storage_id, user_id, login_ns, expires_ns) "
                "VALUES(?, ?, ?, ?, ?) RETURNING id",
                (self.node_id, storage_id, user_id, now, now + self.ttl_ns),
            ).scalar()
        with self._lock:
            self._rows[token] = int(row)

    def logout(self, token: object) -> None:
        with self._lock:
            row = self._rows.pop(token, None)
        if row is not None:
            # A failure here only leaves a row that expires with this node's next silence.
            with contextlib.suppress(DatabaseError):
                self.db.execute("DELETE FROM sessions WHERE id = ?", (row,))

    def oldest_session_ns(self, storage_id: str, exclude: object = None) -> int | None:
        with self._lock:
            skip = self._rows.get(exclude, -1) if exclude is not None else -1
        with self.db.read_transaction() as tx:
            value = tx.execute(
                "SELECT MIN(login_ns) FROM sessions WHERE storage_id = ? AND id != ? "
                "AND expires_ns > ?",
                (storage_id, skip, tx.now_ns()),
            ).scalar()
        return None if value is None else int(value)

    def in_use(self, storage_id: str) -> bool:
        with self.db.read_transaction() as tx:
            row = tx.execute(
                "SELECT 1 FROM sessions WHERE storage_id = ? AND expires_ns > ? LIMIT 1",
                (storage_id, tx.now_ns()),
            ).fetchone()
        return row is not None

    def beat(self) -> bool:
        """Push this node's expiry forward and clear what dead nodes left. False if this
        node had been presumed dead meanwhile (its sessions must end)."""
        with self.db.transaction() as tx:
            now = tx.now_ns()
            alive = tx.execute(
                "UPDATE nodes SET expires_ns = ? WHERE node_id = ? AND expires_ns > ?",
                (now + self.ttl_ns, self.node_id, now),
            ).rowcount
            if not alive:
                tx.execute("DELETE FROM sessions WHERE node_id = ?", (self.node_id,))
                tx.execute(
                    "INSERT INTO nodes(node_id, address, started_ns, expires_ns) "
                    "VALUES(?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET "
                    "expires_ns = excluded.expires_ns",
                    (self.node_id, self.address, now, now + self.ttl_ns),
                )
            tx.execute(
                "UPDATE sessions SET expires_ns = ? WHERE node_id = ?",
                (now + self.ttl_ns, self.node_id),
            )
            _sweep(tx, now)
        if not alive:
            with self._lock:
                self._rows.clear()
        return bool(alive)


def _sweep(tx: Tx, now: int) -> None:
    """What expired: dead nodes and their sessions and reservations, the commit log beyond
    its hour, remembered logins beyond their day."""
    tx.execute("DELETE FROM sessions WHERE expires_ns < ?", (now,))
    tx.execute("DELETE FROM nodes WHERE expires_ns < ?", (now,))
    tx.execute("DELETE FROM quota_reservations WHERE node_id NOT IN (SELECT node_id FROM nodes)")
    tx.execute("DELETE FROM commit_log WHERE time_ns < ?", (now - COMMIT_LOG_WINDOW_NS,))
    tx.execute("DELETE FROM login_known WHERE time_ns < ?", (now - KNOWN_LOGIN_NS,))


class SharedCommitRate:
    """Commits per account in a sliding hour, counted across nodes (`commit_log`)."""

    WINDOW_NS = COMMIT_LOG_WINDOW_NS

    def __init__(self, db: Database, per_hour: int) -> None:
        self.db = db
        self.per_hour = per_hour

    def allow(self, user_id: int) -> bool:
        """Count one commit attempt; False if the account is over its hourly bound."""
        with self.db.transaction(exclusive=False) as tx:
            now = tx.now_ns()
            # The account's row lock serialises its commits on every node.
            tx.execute(_LOCK_USER[tx.dialect], (user_id,))
            count = tx.execute(
                "SELECT COUNT(*) FROM commit_log WHERE user_id = ? AND time_ns > ?",
                (user_id, now - self.WINDOW_NS),
            ).scalar()
            if int(count) >= self.per_hour:
                return False
            tx.execute("INSERT INTO commit_log(user_id, time_ns) VALUES(?, ?)", (user_id, now))
        return True
