"""What the server keeps for its operators, beside the accounts: the console's admins, each
user's usage over time, their last errors, and the alerts in force.

Same database as the accounts (users.sqlite, or PostgreSQL in scale-out mode, where every
node writes the same tables; schema in server/schema.py); the web console, the alert loop and
the sessions all write here from threads. Nothing here is a user's secret; console admins'
passwords are Argon2id hashes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ..crypto import KdfParams
from ..db import ConstraintError, Database
from ..errors import UsageError

EVENTS_KEPT = 50  # per user
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class UsagePoint:
    time_ns: int
    stored_bytes: int
    snapshots: int
    kind: str  # "backup" or "day"


@dataclass(frozen=True)
class Event:
    time_ns: int
    kind: str
    message: str


@dataclass(frozen=True)
class Alert:
    user_id: int  # 0: the server itself
    kind: str  # "stale", "failed", "quota", "damage", "disk"
    detail: str
    since_ns: int
    last_sent_ns: int | None


@dataclass(frozen=True)
class ConsoleAdmin:
    id: int
    name: str
    salt: bytes
    kdf: KdfParams
    hash: bytes
    created_ns: int


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_text(text: str, limit: int = 300) -> str:
    """One printable line: what a client or a server error says, safe for logs and pages."""
    return _CONTROL.sub(" ", text)[:limit].strip()


class OpsDB:
    """The operations tables of `db` (the UserDB's database: it made the schema)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def close(self) -> None:
        """The database belongs to the UserDB, which closes it."""

    # ---- usage history --------------------------------------------------------------------

    def record_usage(self, user_id: int, stored_bytes: int, snapshots: int, kind: str) -> None:
        """A point after a backup, or the day's point (at most one per user and UTC day)."""
        now = time.time_ns()
        with self._db.transaction() as tx:  # several nodes may record the day's point at once
            if kind == "day":
                day = now - now % DAY_NS
                seen = tx.execute(
                    "SELECT 1 FROM usage_history WHERE user_id = ? AND kind = 'day' "
                    "AND time_ns >= ?",
                    (user_id, day),
                ).fetchone()
                if seen:
                    return
            tx.execute(
                "INSERT INTO usage_history(user_id, time_ns, stored_bytes, snapshots, kind) "
                "VALUES(?, ?, ?, ?, ?)",
                (user_id, now, stored_bytes, snapshots, kind),
            )

    def usage(self, user_id: int, since_ns: int = 0) -> list[UsagePoint]:
        rows = self._db.execute(
            "SELECT time_ns, stored_bytes, snapshots, kind FROM usage_history "
            "WHERE user_id = ? AND time_ns >= ? ORDER BY time_ns",
            (user_id, since_ns),
        ).fetchall()
        return [UsagePoint(int(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in rows]

    def total_usage(self, since_ns: int = 0) -> list[UsagePoint]:
        """The whole server's stored bytes over time, one point per day: at the end of each day,
        the sum of every account's latest figure so far (accounts carry their last value)."""
        rows = self._db.execute(
            "SELECT user_id, time_ns, stored_bytes, snapshots FROM usage_history "
            "WHERE time_ns >= ? ORDER BY time_ns",
            (since_ns,),
        ).fetchall()
        latest: dict[int, tuple[int, int]] = {}
        by_day: dict[int, UsagePoint] = {}
        for user_id, time_ns, stored, snaps in rows:
            latest[int(user_id)] = (int(stored), int(snaps))
            day = int(time_ns) - int(time_ns) % DAY_NS
            by_day[day] = UsagePoint(
                int(time_ns),
                sum(v[0] for v in latest.values()),
                sum(v[1] for v in latest.values()),
                "total",
            )
        return [by_day[d] for d in sorted(by_day)]

    # ---- events -------------------------------------------------------------------------------

    def add_event(self, user_id: int, kind: str, message: str) -> None:
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO events(user_id, time_ns, kind, message) VALUES(?, ?, ?, ?)",
                (user_id, time.time_ns(), kind, clean_text(message)),
            )
            tx.execute(
                "DELETE FROM events WHERE user_id = ? AND id NOT IN "
                "(SELECT id FROM events WHERE user_id = ? ORDER BY id DESC LIMIT ?)",
                (user_id, user_id, EVENTS_KEPT),
            )

    def events(self, user_id: int, limit: int = 20) -> list[Event]:
        rows = self._db.execute(
            "SELECT time_ns, kind, message FROM events WHERE user_id = ? ORDER BY id DESC LIMIT ?",
            (user_id, limit),
        ).fetchall()
        return [Event(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def forget_user(self, user_id: int) -> None:
        for table in ("usage_history", "events", "alerts"):
            self._db.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))  # noqa: S608

    # ---- alerts -------------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        rows = self._db.execute(
            "SELECT user_id, kind, detail, since_ns, last_sent_ns FROM alerts ORDER BY since_ns"
        ).fetchall()
        return [
            Alert(int(r[0]), str(r[1]), str(r[2]), int(r[3]), None if r[4] is None else int(r[4]))
            for r in rows
        ]

    def raise_alert(self, user_id: int, kind: str, detail: str) -> bool:
        """Record an alert; True if it is new (False: already in force, detail updated)."""
        cur = self._db.execute(
            "INSERT INTO alerts(user_id, kind, detail, since_ns) VALUES(?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (user_id, kind, clean_text(detail), time.time_ns()),
        )
        if cur.rowcount:
            return True
        self._db.execute(
            "UPDATE alerts SET detail = ? WHERE user_id = ? AND kind = ?",
            (clean_text(detail), user_id, kind),
        )
        return False

    def alert_sent(self, user_id: int, kind: str, time_ns: int) -> None:
        self._db.execute(
            "UPDATE alerts SET last_sent_ns = ? WHERE user_id = ? AND kind = ?",
            (time_ns, user_id, kind),
        )

    def clear_alert(self, user_id: int, kind: str) -> Alert | None:
        """Remove an alert; returns it if it was in force."""
        row = self._db.execute(
            "DELETE FROM alerts WHERE user_id = ? AND kind = ? "
            "RETURNING user_id, kind, detail, since_ns, last_sent_ns",
            (user_id, kind),
        ).fetchone()
        if row is None:
            return None
        return Alert(
            int(row[0]),
            str(row[1]),
            str(row[2]),
            int(row[3]),
            None if row[4] is None else int(row[4]),
        )

    # ---- console admins -----------------------------------------------------------------------

    def add_admin(self, name: str, salt: bytes, kdf: KdfParams, pw_hash: bytes) -> None:
        try:
            self._db.execute(
                "INSERT INTO console_admins(name, salt, kdf_memory_kib, kdf_iterations, "
                "kdf_lanes, hash, created_ns) VALUES(?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    salt,
                    kdf.memory_kib,
                    kdf.iterations,
                    kdf.lanes,
                    pw_hash,
                    time.time_ns(),
                ),
            )
        except ConstraintError:
            raise UsageError(f"console admin {name} already exists") from None

    def set_admin_password(self, name: str, salt: bytes, kdf: KdfParams, pw_hash: bytes) -> bool:
        cur = self._db.execute(
            "UPDATE console_admins SET salt = ?, kdf_memory_kib = ?, kdf_iterations = ?, "
            "kdf_lanes = ?, hash = ? WHERE lower(name) = lower(?)",
            (salt, kdf.memory_kib, kdf.iterations, kdf.lanes, pw_hash, name),
        )
        return cur.rowcount > 0

    def delete_admin(self, name: str) -> bool:
        cur = self._db.execute("DELETE FROM console_admins WHERE lower(name) = lower(?)", (name,))
        return cur.rowcount > 0

    def admin(self, name: str) -> ConsoleAdmin | None:
        row = self._db.execute(
            "SELECT id, name, salt, kdf_memory_kib, kdf_iterations, kdf_lanes, hash, "
            "created_ns FROM console_admins WHERE lower(name) = lower(?)",
            (name,),
        ).fetchone()
        if row is None:
            return None
        return ConsoleAdmin(
            int(row[0]),
            str(row[1]),
            bytes(row[2]),
            KdfParams(int(row[3]), int(row[4]), int(row[5])),
            bytes(row[6]),
            int(row[7]),
        )

    def admins(self) -> list[str]:
        rows = self._db.execute("SELECT name FROM console_admins ORDER BY lower(name)").fetchall()
        return [str(r[0]) for r in rows]
