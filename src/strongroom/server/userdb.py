"""The server's user database: accounts, login verifiers, wrapped keys and policies.

It never holds a password or a data key: only the Argon2id salt and parameters, a hash of the
authentication key, and the client's key file (keys wrapped by a key only the password gives).
Every call goes to the database (no cache), so `strongroom-admin` changes take effect on a
running server at the next login or request. One code path for both engines (db/): SQLite's
users.sqlite in embedded mode (WAL lets the admin tool and the server share it), PostgreSQL
in scale-out mode, where every node reads the same rows.
"""

from __future__ import annotations

import builtins
import os
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from ..crypto import KdfParams
from ..db import Database, SqliteDatabase, Tx
from ..errors import StrongroomError, UsageError
from ..keys import KeyFile
from .schema import DEFAULT_PROTECT_WINDOW_S, SCHEMA_VERSION, migrate

__all__ = ["SCHEMA_VERSION", "User", "UserDB"]

_SELECT = (
    "SELECT id, name, storage_id, directory, salt, kdf_memory_kib, kdf_iterations, kdf_lanes, "
    "auth_hash, keyfile, must_change_password, quota, append_only, created_ns, "
    "last_backup_ns, last_backup_result, policy, generation, protect_window_s, "
    "expected_interval_s, notify_email, last_success_ns FROM users"
)


@dataclass(frozen=True)
class User:
    id: int
    name: str
    storage_id: str
    directory: str  # the folder on the user's computer to back up; "" if none recorded
    salt: bytes
    kdf: KdfParams
    auth_hash: bytes
    keyfile: bytes | None  # KeyFile JSON; None until the user's first password change
    must_change_password: bool
    quota: int | None  # bytes
    append_only: bool
    created_ns: int
    last_backup_ns: int | None
    last_backup_result: str | None
    policy: str | None = None  # retention policy JSON; None = the server's default
    generation: int = 0  # moves on every change of login, keys or append-only (sessions end)
    protect_window_s: int = DEFAULT_PROTECT_WINDOW_S  # append-only: policy never removes newer
    expected_interval_s: int | None = None  # a backup is overdue after this; None = default
    notify_email: str | None = None  # also tell the user about their alerts
    last_success_ns: int | None = None  # the last backup that committed


_USERNAME = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9._@-]{0,63}", re.ASCII)


def validate_username(name: str) -> None:
    if not _USERNAME.fullmatch(name):
        shown = name if len(name) <= 70 else name[:64] + "..."
        raise UsageError(
            f"invalid user name {shown!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
            "not starting with '.' or '-'"
        )


_WINDOWS_ABS = re.compile(r"[A-Za-z]:[\\/]")


def validate_directory(directory: str) -> None:
    """The folder to back up, as the client will see it: absolute (POSIX, Windows or UNC),
    '~'-relative, or "" for none. It lives on the user's computer, so it is not checked here."""
    if directory == "":
        return
    if len(directory) > 4096 or not directory.isprintable():
        raise UsageError("the folder name is too long or holds control characters")
    if not (directory.startswith(("/", "\\\\", "~")) or _WINDOWS_ABS.match(directory) is not None):
        raise UsageError(
            f"the folder {directory!r} is not an absolute path on the user's computer "
            "(e.g. /home/alice/Documents or C:\\Users\\alice\\Documents)"
        )


_SIZE = re.compile(
    r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(?:([KMGTPE])(?:i?B)?|B)?\s*", re.ASCII | re.IGNORECASE
)
_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
MAX_SIZE = 2**63 - 1  # SQLite's INTEGER
MAX_WINDOW_S = 100 * 366 * 24 * 3600


def parse_size(text: str) -> int:
    """'500M', '10G', '1.5T', '10GiB', '1024' -> bytes (binary units, fractions rounded down)."""
    match = _SIZE.fullmatch(text) if len(text) <= 40 else None
    if match is None:
        raise UsageError(f"invalid size {text[:40]!r}: use e.g. 500M, 10G, 1.5T or a byte count")
    power = _UNITS[(match.group(2) or "").upper()]
    try:
        value = int(Decimal(match.group(1)) * 1024**power)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimal numbers
        raise UsageError(f"invalid size {text!r}") from None
    if value > MAX_SIZE:
        raise UsageError(f"size {text!r} is too large")
    return value


_WINDOW = re.compile(r"\s*(\d{1,9})\s*([smhdw]?)\s*", re.ASCII | re.IGNORECASE)
_WINDOW_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_window(text: str) -> int:
    """'7d', '36h', '2w', '0' (days when no unit is given) -> seconds."""
    match = _WINDOW.fullmatch(text) if len(text) <= 20 else None
    if match is None:
        raise UsageError(f"invalid duration {text[:20]!r}: use e.g. 7d, 36h, 2w or 0")
    seconds = int(match.group(1)) * _WINDOW_UNITS[match.group(2).lower()]
    if seconds > MAX_WINDOW_S:
        raise UsageError(f"duration {text!r} is too long (at most 100 years)")
    return seconds


def format_window(seconds: int) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_EMAIL = re.compile(r"[^@\s,;<>\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}", re.ASCII)


def validate_email(address: str) -> None:
    """One plain address (what the alerts mail to); no display names, lists or headers."""
    if len(address) > 254 or not _EMAIL.fullmatch(address):
        raise UsageError(f"invalid e-mail address {address[:60]!r}")


def parse_quota(text: str) -> int | None:
    """A quota: a size of at least 1 byte, or 'none' (no limit)."""
    if text.strip().lower() in ("none", "unlimited"):
        return None
    value = parse_size(text)
    if value < 1:
        raise UsageError("a quota must be at least 1 byte (use 'none' for no limit)")
    return value


class UserDB:
    def __init__(self, db: Database | Path) -> None:
        """On a Database, or on the embedded mode's users.sqlite (created 0600 on first use)."""
        self.db = SqliteDatabase(db) if isinstance(db, Path) else db
        try:
            migrate(self.db)
        except BaseException:
            if isinstance(db, Path):
                self.db.close()
            raise

    @classmethod
    def open_file(cls, path: Path) -> UserDB:
        return cls(path)

    # ---- reads --------------------------------------------------------------------------

    def get(self, name: str) -> User | None:
        """The user called `name` (user names are case-insensitive)."""
        row = self.db.execute(_SELECT + " WHERE lower(name) = lower(?)", (name,)).fetchone()
        return _user(row) if row else None

    def get_by_id(self, uid: int) -> User | None:
        row = self.db.execute(_SELECT + " WHERE id = ?", (uid,)).fetchone()
        return _user(row) if row else None

    def list(self) -> list[User]:
        return [_user(r) for r in self.db.query(_SELECT + " ORDER BY lower(name)")]

    # ---- writes -------------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        directory: str,
        salt: bytes,
        kdf: KdfParams,
        auth_hash: bytes,
        quota: int | None = None,
        append_only: bool = False,
        protect_window_s: int = DEFAULT_PROTECT_WINDOW_S,
    ) -> User:
        validate_username(name)
        validate_directory(directory)
        _check_quota(quota)
        if not 0 <= protect_window_s <= MAX_WINDOW_S:
            raise UsageError("the protection window must be between 0 and 100 years")
        with self.db.transaction() as tx:
            taken = tx.execute("SELECT 1 FROM users WHERE lower(name) = lower(?)", (name,))
            if taken.fetchone():
                raise UsageError(f"user {name} already exists")
            uid = tx.execute(
                "INSERT INTO users(name, storage_id, directory, salt, kdf_memory_kib, "
                "kdf_iterations, kdf_lanes, auth_hash, keyfile, must_change_password, quota, "
                "append_only, created_ns, protect_window_s) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?, NULL, 1, ?, ?, ?, ?) RETURNING id",
                (
                    name,
                    os.urandom(16).hex(),
                    directory,
                    salt,
                    kdf.memory_kib,
                    kdf.iterations,
                    kdf.lanes,
                    auth_hash,
                    quota,
                    int(append_only),
                    time.time_ns(),
                    protect_window_s,
                ),
            ).scalar()
            row = tx.execute(_SELECT + " WHERE id = ?", (uid,)).fetchone()
        return _user(row)

    def delete(self, name: str, *, purge: bool = False) -> User | None:
        """Remove the user's row and return it (None if there was no such user). With `purge`,
        their storage is queued for removal in the same transaction (see pending_purges)."""
        with self.db.transaction() as tx:
            row = tx.execute(_SELECT + " WHERE lower(name) = lower(?)", (name,)).fetchone()
            if row is not None:
                tx.execute("DELETE FROM users WHERE id = ?", (row[0],))
                announce_change(tx, int(row[0]))
                if purge:
                    tx.execute(
                        "INSERT INTO pending_purges(storage_id) VALUES(?) ON CONFLICT DO NOTHING",
                        (row[2],),
                    )
        return _user(row) if row else None

    def pending_purges(self) -> builtins.list[str]:
        return [str(r[0]) for r in self.db.query("SELECT storage_id FROM pending_purges")]

    def purge_done(self, storage_id: str) -> None:
        self.db.execute("DELETE FROM pending_purges WHERE storage_id = ?", (storage_id,))

    def set_login(
        self, uid: int, *, salt: bytes, kdf: KdfParams, auth_hash: bytes, must_change: bool
    ) -> None:
        """An admin password reset: a new login verifier; the key file is left as it is."""
        with self.db.transaction() as tx:
            cur = tx.execute(
                "UPDATE users SET salt = ?, kdf_memory_kib = ?, kdf_iterations = ?, "
                "kdf_lanes = ?, auth_hash = ?, must_change_password = ?, "
                "generation = generation + 1 WHERE id = ?",
                (salt, kdf.memory_kib, kdf.iterations, kdf.lanes, auth_hash, int(must_change), uid),
            )
            if cur.rowcount == 0:
                raise StrongroomError("this user no longer exists")
            announce_change(tx, uid)

    def set_keyfile(self, uid: int, keyfile: KeyFile, *, generation: int) -> int:
        """The user's own password change: their key file becomes their login verifier too.

        Only if the account is still at `generation` (nobody reset, changed or deleted it
        since the caller's session read it); returns the new generation."""
        with self.db.transaction() as tx:
            cur = tx.execute(
                "UPDATE users SET keyfile = ?, salt = ?, kdf_memory_kib = ?, kdf_iterations = ?, "
                "kdf_lanes = ?, auth_hash = ?, must_change_password = 0, "
                "generation = generation + 1 WHERE id = ? AND generation = ?",
                (
                    keyfile.to_json().encode(),
                    keyfile.salt,
                    keyfile.kdf.memory_kib,
                    keyfile.kdf.iterations,
                    keyfile.kdf.lanes,
                    keyfile.auth_hash,
                    uid,
                    generation,
                ),
            )
            if cur.rowcount == 0:
                raise StrongroomError("this account was changed or deleted meanwhile; log in again")
            announce_change(tx, uid)
        return generation + 1

    def set_recovery_wrapping(
        self, uid: int, keyfile: KeyFile, *, generation: int, current: bytes
    ) -> None:
        """The user's recovery key made, replaced or removed: only the key file's recovery
        wrapping changes (the caller checked that its password part is `current`'s), so the
        login and the keys stay as they are and the generation does not move: no session
        ends. Only if the row still holds `current` at `generation` and no reset is pending."""
        with self.db.transaction() as tx:
            cur = tx.execute(
                "UPDATE users SET keyfile = ? WHERE id = ? AND generation = ? "
                "AND must_change_password = 0 AND keyfile = ?",
                (keyfile.to_json().encode(), uid, generation, current),
            )
            if cur.rowcount == 0:
                raise StrongroomError("this account was changed or deleted meanwhile; log in again")

    def update(
        self,
        name: str,
        *,
        directory: str | None = None,
        quota: int | Literal["unset"] | None = "unset",
        append_only: bool | None = None,
        policy: str | Literal["unset"] | None = "unset",
        protect_window_s: int | None = None,
        expected_interval_s: int | Literal["unset"] | None = "unset",
        notify_email: str | Literal["unset"] | None = "unset",
    ) -> User:
        """Change the given settings (None / "unset" = leave alone; quota=None removes it,
        policy=None returns the user to the server's default policy)."""
        if protect_window_s is not None and not 0 <= protect_window_s <= MAX_WINDOW_S:
            raise UsageError("the protection window must be between 0 and 100 years")
        if expected_interval_s not in ("unset", None) and not (
            60 <= int(expected_interval_s) <= MAX_WINDOW_S
        ):
            raise UsageError("the expected backup interval must be between 1 minute and 100 years")
        if isinstance(notify_email, str) and notify_email != "unset":
            validate_email(notify_email)
        if directory is not None:
            validate_directory(directory)
        if quota != "unset":
            _check_quota(quota)
        changes: builtins.list[tuple[str, tuple[object, ...]]] = []
        if directory is not None:
            changes.append(("directory = ?", (directory,)))
        if quota != "unset":
            changes.append(("quota = ?", (quota,)))
        if protect_window_s is not None:
            changes.append(("protect_window_s = ?", (protect_window_s,)))
        if expected_interval_s != "unset":
            changes.append(("expected_interval_s = ?", (expected_interval_s,)))
        if notify_email != "unset":
            changes.append(("notify_email = ?", (notify_email,)))
        if policy != "unset":
            changes.append(("policy = ?", (policy,)))
        with self.db.transaction() as tx:
            row = tx.execute("SELECT id FROM users WHERE lower(name) = lower(?)", (name,))
            found = row.fetchone()
            if found is None:
                raise UsageError(f"no user {name}")
            uid = int(found[0])
            for assignment, params in changes:
                tx.execute(f"UPDATE users SET {assignment} WHERE id = ?", (*params, uid))  # noqa: S608 - constant columns
            # A change of the append-only flag ends open sessions (they were admitted under
            # the other rule); setting it to what it is changes nothing.
            if append_only is not None and (
                tx.execute(
                    "UPDATE users SET append_only = ?, generation = generation + 1 "
                    "WHERE id = ? AND append_only != ?",
                    (int(append_only), uid, int(append_only)),
                ).rowcount
            ):
                announce_change(tx, uid)
            row = tx.execute(_SELECT + " WHERE id = ?", (uid,))
            return _user(row.fetchone())

    def record_backup(self, uid: int, time_ns: int, result: str) -> None:
        """Note the time and outcome of the user's last backup (no-op if they were deleted);
        an "ok" is also their last success (what makes a backup overdue or not)."""
        self.db.execute(
            "UPDATE users SET last_backup_ns = ?, last_backup_result = ?, "
            "last_success_ns = CASE WHEN ? = 'ok' THEN ? ELSE last_success_ns END "
            "WHERE id = ?",
            (time_ns, result, result, time_ns, uid),
        )

    def get_setting(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, name: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM settings WHERE name = ?", (name,))
            return
        self.db.execute(
            "INSERT INTO settings(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def close(self) -> None:
        self.db.close()


ACCOUNT_CHANNEL = "strongroom_accounts"


def announce_change(tx: Tx, uid: int) -> None:
    """Scale-out: tell every node, when this transaction commits, that the account's login,
    keys or append-only setting changed (or it is gone): its sessions there end at once
    (server/listener.py). SQLite has one server, told through the admin socket instead."""
    if tx.dialect == "postgresql":
        tx.execute("SELECT pg_notify(?, ?)", (ACCOUNT_CHANNEL, str(uid)))


def _check_quota(quota: int | None) -> None:
    if quota is not None and not 1 <= quota <= MAX_SIZE:
        raise UsageError("a quota must be at least 1 byte")


def _user(row: Any) -> User:
    return User(
        id=int(row[0]),
        name=str(row[1]),
        storage_id=str(row[2]),
        directory=str(row[3]),
        salt=bytes(row[4]),
        kdf=KdfParams(memory_kib=int(row[5]), iterations=int(row[6]), lanes=int(row[7])),
        auth_hash=bytes(row[8]),
        keyfile=None if row[9] is None else bytes(row[9]),
        must_change_password=bool(row[10]),
        quota=None if row[11] is None else int(row[11]),
        append_only=bool(row[12]),
        created_ns=int(row[13]),
        last_backup_ns=None if row[14] is None else int(row[14]),
        last_backup_result=None if row[15] is None else str(row[15]),
        policy=None if row[16] is None else str(row[16]),
        generation=int(row[17]),
        protect_window_s=int(row[18]),
        expected_interval_s=None if row[19] is None else int(row[19]),
        notify_email=None if row[20] is None else str(row[20]),
        last_success_ns=None if row[21] is None else int(row[21]),
    )
