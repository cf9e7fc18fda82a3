"""A keyless replica of one user's account in a second data folder (`strongroom-admin replicate`).

What is mirrored is exactly what the server holds: the account's row (login verifier, key
file, folder, quota, flags, policy) and its store's blobs and snapshots (encrypted records,
manifests, series, protection, received times). Nothing is decrypted; no user key is needed
or seen. The replica is a data folder like any other: a strongroom-server started on it lets
the user log in with their password and restore.

Incremental and crash-safe through the store's own write path: only snapshots the replica
lacks are copied, and of their blobs only those it does not store; blobs go into the
replica's packs (fsync'd, then indexed) and each snapshot is committed after them, in one
transaction. A run that is killed leaves durable blobs that the next run does not copy again.
Snapshots removed from the source are removed from the replica last (unless `keep_deleted`),
and its garbage collected.

The replica's store carries `replica_of` (the source's storage ID) in its metadata from its
creation on, so an unrelated account of the same name in the destination (whose store has
no such mark, or another) is refused before anything of it is changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, RepositoryError, StrongroomError, UsageError
from ..keys import KeyFile
from ..store import PackStore
from ..store.gc import collect_garbage
from .backend import Storage
from .datadir import DataDir
from .userdb import User, UserDB

BATCH = 1024  # blobs located and read per step (the reads are streamed)
_MARK = "replica_of"


@dataclass
class ReplicaReport:
    user: str
    account: str = "unchanged"  # "created", "updated" or "unchanged"
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    protection_changed: int = 0
    blobs_copied: int = 0
    bytes_copied: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def replicate(
    source: Storage,
    source_root: Path,
    source_db: UserDB,
    name: str,
    target_root: Path,
    *,
    keep_deleted: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ReplicaReport:
    user = source_db.get(name)
    if user is None:
        raise UsageError(f"no user {name} (see 'strongroom-admin user list')")
    if _same_folder(source_root, target_root):
        raise UsageError("the replica must be another data folder than the server's own")
    if target_root.exists() and not target_root.is_dir():
        raise UsageError(f"{target_root} is not a folder")
    foreign = target_root.is_dir() and not (target_root / "users.sqlite").is_file()
    if foreign and any(target_root.iterdir()):
        raise UsageError(
            f"{target_root} is not empty and is not a strongroom data folder; "
            "give a new or empty folder, or another server's data folder"
        )
    target = DataDir(target_root)
    target.ensure()
    target_db = UserDB(target.users_db)
    try:
        report = ReplicaReport(user.name)
        existing = target_db.get(user.name)
        if existing is not None:
            _check_mark(target, existing, user)  # before anything of it is changed
        replica = _mirror_account(user, target_db, report)
        _create_store(target, replica, user)
        if source.exists(user.storage_id):
            # A reader: a running server keeps its writer lock (embedded), or its nodes go on
            # writing (scale-out); only committed snapshots are copied.
            src = source.open(user.storage_id, writer=False)
            try:
                dst = _open_replica_store(target, replica, user)
                try:
                    _mirror_store(src, dst, report, keep_deleted, progress)
                finally:
                    dst.close()
            finally:
                src.close()
        return report
    finally:
        target_db.close()


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# ---- the account's row ---------------------------------------------------------------------


def _mirror_account(user: User, db: UserDB, report: ReplicaReport) -> User:
    replica = db.get(user.name)
    if replica is None:
        replica = db.add(
            user.name,
            directory=user.directory,
            salt=user.salt,
            kdf=user.kdf,
            auth_hash=user.auth_hash,
            quota=user.quota,
            append_only=user.append_only,
            protect_window_s=user.protect_window_s,
        )
        report.account = "created"
    before = _row(replica)
    if user.keyfile is not None and (
        replica.keyfile is None
        or KeyFile.from_json(replica.keyfile) != KeyFile.from_json(user.keyfile)
    ):
        db.set_keyfile(replica.id, KeyFile.from_json(user.keyfile), generation=replica.generation)
        replica = _reread(db, user.name)
    login = (user.salt, user.kdf, user.auth_hash, user.must_change_password)
    if (replica.salt, replica.kdf, replica.auth_hash, replica.must_change_password) != login:
        db.set_login(
            replica.id,
            salt=user.salt,
            kdf=user.kdf,
            auth_hash=user.auth_hash,
            must_change=user.must_change_password,
        )
    settings = _settings(user)
    if _settings(replica) != settings:
        db.update(user.name, **settings)
    after = _reread(db, user.name)
    if report.account == "unchanged" and _row(after) != before:
        report.account = "updated"
    return after


def _settings(user: User) -> dict[str, Any]:
    return {
        "directory": user.directory,
        "quota": user.quota,
        "append_only": user.append_only,
        "policy": user.policy,
        "protect_window_s": user.protect_window_s,
        "expected_interval_s": user.expected_interval_s,
        "notify_email": user.notify_email,
    }


def _row(user: User) -> tuple[Any, ...]:
    login = (user.salt, user.kdf, user.auth_hash, user.must_change_password, user.keyfile)
    return (*login, *_settings(user).values())


def _reread(db: UserDB, name: str) -> User:
    user = db.get(name)
    if user is None:
        raise StrongroomError(f"user {name} was deleted from the replica meanwhile")
    return user


# ---- the store -----------------------------------------------------------------------------


def _check_mark(target: DataDir, replica: User, user: User) -> None:
    """Refuse an account of that name that is not a replica of this one: its store exists
    and is not marked as ours. (A row without a store is what a run killed between the two
    leaves: it is ours.)"""
    path = target.storage_path(replica.storage_id)
    if not (path / "index.sqlite").is_file():
        return
    store = PackStore(path)
    try:
        mark = store.get_meta(_MARK)
    finally:
        store.close()
    if mark is None:
        raise UsageError(
            f"user {user.name} in {target.root} is not a replica of this account; "
            "delete it there or replicate to another folder"
        )
    if mark != user.storage_id.encode():
        raise UsageError(
            f"user {user.name} in {target.root} is a replica of another account of that "
            "name; delete it there or replicate to another folder"
        )


def _create_store(target: DataDir, replica: User, user: User) -> None:
    """The replica's store, marked from its creation on (PackStore.create is atomic)."""
    path = target.storage_path(replica.storage_id)
    if (path / "index.sqlite").is_file():
        return
    meta = {"repo_id": replica.storage_id.encode(), _MARK: user.storage_id.encode()}
    PackStore.create(path, meta=meta).close()


def _open_replica_store(target: DataDir, replica: User, user: User) -> PackStore:
    path = target.storage_path(replica.storage_id)
    try:
        dst = PackStore(path, writer=True)
    except RepositoryError as exc:
        if "in use" not in str(exc):
            raise
        raise RepositoryError(
            f"the replica of {user.name} is in use (by a server on {target.root}?); "
            "try again when it is idle"
        ) from None
    if dst.get_meta(_MARK) != user.storage_id.encode():  # changed since _check_mark
        dst.close()
        raise UsageError(f"user {user.name} in {target.root} is not a replica of this account")
    return dst


def _mirror_store(
    src: PackStore,
    dst: PackStore,
    report: ReplicaReport,
    keep_deleted: bool,
    progress: Callable[[str], None] | None,
) -> None:
    source_rows = src.list_snapshots()
    replica_rows = {r.snap_id: r for r in dst.list_snapshots()}
    for row in source_rows:
        if row.snap_id in replica_rows:
            if replica_rows[row.snap_id].protected != row.protected:
                dst.set_protected(row.snap_id, row.protected)
                report.protection_changed += 1
            continue
        # One SELECT: the whole manifest, or none if the snapshot was removed since the list.
        manifest = src.snapshot_manifest(row.snap_id)
        if not manifest:
            continue
        try:
            _copy_blobs(src, dst, sorted(manifest - dst.stored(manifest)), report)
        except IntegrityError as exc:
            if not any(r.snap_id == row.snap_id for r in src.list_snapshots()):
                continue  # removed from the source meanwhile: its blobs may be gone too
            report.problems.append(f"snapshot {row.snap_id[:8]} not copied: {exc}")
            continue
        dst.flush()
        dst.commit_snapshot(
            row.snap_id,
            row.time_ns,
            row.record,
            manifest,
            row.series,
            received_ns=row.received_ns,
        )
        if row.protected:
            dst.set_protected(row.snap_id, True)
        report.added.append(row.snap_id)
        if progress is not None:
            progress(row.snap_id)
    gone = sorted(set(replica_rows) - {r.snap_id for r in source_rows})
    if gone and not keep_deleted:
        for snap_id in gone:
            dst.set_protected(snap_id, False)
        dst.delete_snapshots(gone)
        report.removed = gone
        collect_garbage(dst)


def _copy_blobs(src: PackStore, dst: PackStore, ids: list[bytes], report: ReplicaReport) -> None:
    """Stored bytes as they are (checked against the source's checksums as they are read)."""
    for i in range(0, len(ids), BATCH):
        batch = ids[i : i + BATCH]
        types = {bid: loc.type for bid, loc in src.locate(batch).items()}
        for bid, data in src.read_blobs(batch):
            dst.add_blob(bid, types[bid], data)
            report.blobs_copied += 1
            report.bytes_copied += len(data)
