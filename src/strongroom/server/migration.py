"""`strongroom-admin migrate`: an embedded data folder into PostgreSQL + S3, resumable.

Steps, each idempotent and recorded in `migration_progress` when done, so a run that was
killed (or failed on an unreachable bucket) is simply run again:
1. identity: the TLS certificate, its key and the server secret, so clients keep their pinned
   fingerprint and unknown users keep their fake salts;
2. one step per table of users.sqlite (accounts with their IDs, settings, pending purges,
   console admins, usage history, events, alerts), each copied in one transaction that also
   records the step;
3. one step per user's storage: packs copied (checked against their hashes and checksums on
   the way), then snapshots with their manifests, received times and protection
   (store/copy.py; a pack already copied is skipped);
4. verify: every copied store is scrubbed through the object store and its snapshot and blob
   counts compared with the source. Only then does the migration count as complete.
The data folder is left as it was (only its users database is brought to the current schema,
as any start would); keep it until the new deployment has served for a while.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..db import Database, Tx
from ..errors import StrongroomError
from ..store.copy import copy_store
from ..store.scrub import scrub
from .backend import Backend
from .datadir import DataDir

# Table -> its columns, in the order of the copy (users first: the others refer to them).
TABLES: dict[str, tuple[str, ...]] = {
    "users": (
        "id, name, storage_id, directory, salt, kdf_memory_kib, kdf_iterations, kdf_lanes, "
        "auth_hash, keyfile, must_change_password, quota, append_only, created_ns, "
        "last_backup_ns, last_backup_result, policy, generation, protect_window_s, "
        "expected_interval_s, notify_email, last_success_ns",
    ),
    "settings": ("name, value",),
    "pending_purges": ("storage_id",),
    "console_admins": (
        "id, name, salt, kdf_memory_kib, kdf_iterations, kdf_lanes, hash, created_ns",
    ),
    "usage_history": ("user_id, time_ns, stored_bytes, snapshots, kind",),
    "events": ("id, user_id, time_ns, kind, message",),
    "alerts": ("user_id, kind, detail, since_ns, last_sent_ns",),
}
IDENTITY_COLUMNS = ("users", "console_admins", "events")  # their id sequences move past the copy


class MigrationError(StrongroomError):
    pass


@dataclass
class MigrationReport:
    steps_done: list[str] = field(default_factory=list)
    steps_skipped: list[str] = field(default_factory=list)  # done by an earlier run
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "steps_skipped": self.steps_skipped,
            "stores": self.stores,
        }


def migrate(
    source: Backend, dest: Backend, *, say: Callable[[str], None] = lambda _s: None
) -> MigrationReport:
    if source.kind != "embedded" or dest.kind != "scaleout":
        raise MigrationError("migrate copies an embedded data folder into PostgreSQL + S3")
    report = MigrationReport()
    db = dest.db

    def step(name: str, work: Callable[[], None]) -> None:
        if _done(db, name):
            report.steps_skipped.append(name)
            return
        say(f"{name} ...")
        work()
        _mark(db, name)
        report.steps_done.append(name)

    step("identity", lambda: _identity(source.datadir, db))
    for table, (columns,) in TABLES.items():
        if _done(db, f"table:{table}"):
            report.steps_skipped.append(f"table:{table}")
            continue
        say(f"table {table} ...")
        _copy_table(source.db, db, table, columns)
        report.steps_done.append(f"table:{table}")
    _check_users(source, dest)
    purged = set(source.userdb.pending_purges())
    for user in source.userdb.list():
        sid = user.storage_id
        if sid in purged or not source.storage.exists(sid):
            continue
        step(f"storage:{sid}", functools.partial(_copy_storage, source, dest, sid, user.name, say))
    for user in source.userdb.list():
        if user.storage_id in purged or not source.storage.exists(user.storage_id):
            continue
        report.stores[user.name] = _verify(source, dest, user.storage_id, user.name)
    _mark(db, "verified")
    return report


def _done(db: Database, step: str) -> bool:
    return (
        db.execute("SELECT 1 FROM migration_progress WHERE step = ?", (step,)).fetchone()
        is not None
    )


def _mark(db: Database | Tx, step: str) -> None:
    db.execute(
        "INSERT INTO migration_progress(step, done_ns) VALUES(?, ?) ON CONFLICT(step) DO NOTHING",
        (step, db.now_ns()),
    )


def _identity(datadir: DataDir, db: Database) -> None:
    from .identity import NAMES, store_identity
    from .tls import ensure_certificate

    ensure_certificate(datadir)  # a folder whose server never started has none yet
    mine = {
        "tls_cert": datadir.cert_path.read_bytes(),
        "tls_key": datadir.key_path.read_bytes(),
        "server_secret": datadir.server_secret(),
    }
    held = store_identity(db, mine)
    if any(held.get(n) != mine[n] for n in NAMES):
        raise MigrationError(
            "PostgreSQL already holds another server identity (a node started there before "
            "the migration); migrate into an empty database, or clients would have to accept "
            "a new certificate"
        )


def _copy_table(src: Database, dst: Database, table: str, columns: str) -> None:
    rows = src.query(f"SELECT {columns} FROM {table}")  # noqa: S608 - constant names
    marks = ", ".join("?" * len(columns.split(",")))
    with dst.transaction() as tx:
        tx.executemany(
            f"INSERT INTO {table}({columns}) VALUES({marks}) ON CONFLICT DO NOTHING",
            rows,
        )
        if table in IDENTITY_COLUMNS:
            tx.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                f"GREATEST((SELECT MAX(id) FROM {table}), 1))"
            )
        _mark(tx, f"table:{table}")


def _check_users(source: Backend, dest: Backend) -> None:
    """Every account arrived as it was (a name taken by another account in PostgreSQL would
    have been skipped by the copy)."""
    for user in source.userdb.list():
        there = dest.userdb.get_by_id(user.id)
        if there is None or there.storage_id != user.storage_id or there.name != user.name:
            raise MigrationError(
                f"PostgreSQL already holds another account where {user.name!r} belongs; "
                "migrate into an empty database"
            )


def _copy_storage(
    source: Backend, dest: Backend, storage_id: str, name: str, say: Callable[[str], None]
) -> None:
    dest.storage.create(storage_id)
    src = source.storage.open(storage_id, writer=False)
    try:
        dst = dest.storage.open(storage_id, writer=True)
        try:
            copied = copy_store(src, dst, progress=lambda pack: say(f"  {name}: pack {pack[:12]}"))
        finally:
            dst.close()
    finally:
        src.close()
    say(
        f"  {name}: {copied.packs_copied} of {copied.packs} packs and "
        f"{copied.snapshots_copied} of {copied.snapshots} snapshots copied"
    )


def _verify(source: Backend, dest: Backend, storage_id: str, name: str) -> dict[str, Any]:
    src = source.storage.open(storage_id, writer=False)
    dst = dest.storage.open(storage_id, writer=False)
    try:
        checked = scrub(dst).to_json()
        expected = (src.count_snapshots(), src.charge_counts()[1])
        found = (dst.count_snapshots(), dst.charge_counts()[1])
    finally:
        src.close()
        dst.close()
    if not checked["ok"] or expected != found:
        raise MigrationError(
            f"verification failed for {name}: {len(checked['problems'])} problem(s) found by "
            f"scrub; snapshots and blobs {found}, expected {expected}"
        )
    return {"snapshots": found[0], "blobs": found[1], "packs": checked["packs"], "ok": True}
