"""What a node (or the admin tool) stands on: the metadata database, the users and operations
tables, where each user's storage lives, and who holds which storage open.

Two deployments, one interface, chosen by the settings (server/deployment.py):
- embedded: users.sqlite and storage/<id>/ (SQLite index + pack files) in the data folder;
- scale-out: PostgreSQL (users, ops, cluster tables, and one schema `store_<id>` per user's
  index) and an S3 bucket (one key prefix per user's packs); the data folder is only this
  node's work folder (staged manifests, the admin socket, the TLS files it loads).
The session, GC and admin code call `Storage` and never ask which one they have.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..db import Database
from ..durable import fsync_dir
from ..errors import RepositoryError
from ..store import PackStore
from ..store.objects import ObjectStore
from ..store.packstore import StoreHooks
from .datadir import DataDir
from .nodes import LocalSessions, SessionRegistry, SharedSessions
from .opsdb import OpsDB
from .userdb import UserDB

if TYPE_CHECKING:
    from ..db.postgres import PostgresDatabase

TRASH_PREFIX = ".purge-"


class StorageMissing(RepositoryError):
    pass


class Storage(Protocol):
    kind: str

    def exists(self, storage_id: str) -> bool: ...

    def create(self, storage_id: str) -> None:
        """Make the user's empty store unless it exists (safe against a racing creator)."""

    def open(self, storage_id: str, *, writer: bool, hooks: StoreHooks | None = None) -> PackStore:
        """The user's store; StorageMissing if there is none (never creates one)."""

    def remove(self, storage_id: str) -> None:
        """Delete the store for good; safe to run again after a crash half-way."""


class _Storage:
    """What both deployments share: create and open check existence the same way."""

    def exists(self, storage_id: str) -> bool:
        raise NotImplementedError

    def _make(self, storage_id: str) -> PackStore:
        raise NotImplementedError

    def _attach(self, storage_id: str, writer: bool, hooks: StoreHooks | None) -> PackStore:
        raise NotImplementedError

    def create(self, storage_id: str) -> None:
        if self.exists(storage_id):
            return
        try:
            self._make(storage_id).close()
        except RepositoryError:  # another process made it meanwhile
            if not self.exists(storage_id):
                raise

    def open(self, storage_id: str, *, writer: bool, hooks: StoreHooks | None = None) -> PackStore:
        if not self.exists(storage_id):
            raise StorageMissing("this account's storage is missing; ask the admin")
        try:
            return self._attach(storage_id, writer, hooks)
        except OSError as exc:
            raise RepositoryError(f"cannot open user storage: {exc.strerror}") from None


class EmbeddedStorage(_Storage):
    """storage/<id>/ in the data folder: an SQLite index and a folder of pack files."""

    kind = "embedded"

    def __init__(self, datadir: DataDir) -> None:
        self.datadir = datadir

    def exists(self, storage_id: str) -> bool:
        return (self.datadir.storage_path(storage_id) / "index.sqlite").is_file()

    def _make(self, storage_id: str) -> PackStore:
        path = self.datadir.storage_path(storage_id)
        return PackStore.create(path, meta={"repo_id": storage_id.encode()})

    def _attach(self, storage_id: str, writer: bool, hooks: StoreHooks | None) -> PackStore:
        return PackStore(self.datadir.storage_path(storage_id), writer=writer)

    def remove(self, storage_id: str) -> None:
        # Renamed out of the way first (atomic): the store never looks half-removed.
        path = self.datadir.storage_path(storage_id)  # validates the ID
        root = self.datadir.storage_root
        trash = root / f"{TRASH_PREFIX}{storage_id}"
        if path.exists():
            os.replace(path, trash)
            fsync_dir(root)
        if trash.exists():
            shutil.rmtree(trash)
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(root)


class SharedStorage(_Storage):
    """Scale-out: schema store_<id> in PostgreSQL for the index, prefix <id>/ of the bucket
    (or of a shared folder, file://) for the packs."""

    kind = "scaleout"

    def __init__(self, db: PostgresDatabase, objects: Callable[[str], ObjectStore]) -> None:
        self.db = db
        self.objects = objects

    def _index(self, storage_id: str, *, create: bool = False) -> PostgresDatabase:
        DataDir.check_storage_id(storage_id)
        return self.db.scoped(f"store_{storage_id}", create=create)

    def exists(self, storage_id: str) -> bool:
        index = self._index(storage_id)
        return index.schema_exists() and index.table_exists("meta")

    def _make(self, storage_id: str) -> PackStore:
        return PackStore.create_attached(
            self._index(storage_id, create=True),
            self.objects(storage_id),
            {"repo_id": storage_id.encode()},
            label=_label(storage_id),
        )

    def _attach(self, storage_id: str, writer: bool, hooks: StoreHooks | None) -> PackStore:
        return PackStore.attach(
            self._index(storage_id),
            self.objects(storage_id),
            writer=writer,
            label=_label(storage_id),
            hooks=hooks,
        )

    def remove(self, storage_id: str) -> None:
        # Objects first, the index last: a crash half-way leaves an index that still names
        # the store, so the purge stays queued and runs again.
        objects = self.objects(storage_id)
        objects.remove_partials(objects.partials())
        objects.delete(list(objects.names()))
        self._index(storage_id).drop_schema()


def _label(storage_id: str) -> str:
    return f"user storage {storage_id[:8]}"


@dataclass
class Backend:
    kind: str  # "embedded" or "scaleout"
    datadir: DataDir  # the data folder, or (scale-out) this node's work folder
    userdb: UserDB
    ops: OpsDB
    storage: Storage
    sessions: SessionRegistry
    cluster: SharedSessions | None = None  # scale-out: this node's heartbeat
    describe: str = ""
    closers: list[Callable[[], None]] = field(default_factory=list)
    conninfo: str = field(default="", repr=False)  # scale-out: for the account listener

    @property
    def db(self) -> Database:
        return self.userdb.db

    def close(self) -> None:
        self.ops.close()
        self.userdb.close()
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                close()


def open_embedded(root: Path) -> Backend:
    datadir = DataDir(root)
    datadir.ensure()
    userdb = UserDB(datadir.users_db)
    return Backend(
        kind="embedded",
        datadir=datadir,
        userdb=userdb,
        ops=OpsDB(userdb.db),
        storage=EmbeddedStorage(datadir),
        sessions=LocalSessions(),
        describe=f"data folder: {root.resolve()}",
    )
