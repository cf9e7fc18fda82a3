"""Pack objects plus an index; the durability rules live here.

One code path for both deployments: an embedded repository (an SQLite file and a local
`packs/` folder, one writing process holding the folder's writer lock) and a scale-out store
(a PostgreSQL schema and a prefix of an S3 bucket, written by any number of nodes at once).

Write path (see docs/FORMAT.md, "Durability"):
1. blobs are appended to an in-memory pack buffer;
2. a full buffer is registered in `pending_packs`, then stored as an object durably and
   atomically (local: ``packs/xx/NAME.tmp``, fsync, rename, folder fsync; S3: a PUT or a
   completed multipart upload), named by the BLAKE3 hash of its bytes;
3. only then, in one transaction, its pending row is removed and its blobs indexed;
4. a snapshot row and its manifest are inserted in one transaction that first checks that every
   blob of the manifest is in the index (a read-only store cannot commit at all).
A crash at any point leaves at worst a partial write or an object nobody indexed. Such
leftovers are removed later (`remove_leftovers`): by an embedded writer when it opens the
store; in scale-out mode only once their pending row is older than the grace period, by the
database's clock, so another node's write in progress is never taken for a leftover. Objects
are only ever deleted inside an index transaction that re-checks that no index row and no
pending row names them. Tested by tests/test_crash.py and tests/test_storage_conformance.py,
which SIGKILL real processes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import blake3

from ..crypto import content_checksum
from ..db import Database, DatabaseError, SqliteDatabase, Tx, translate_ddl
from ..errors import IntegrityError, RepositoryError
from . import trailer
from .lock import WriterLock
from .objects import LocalObjects, ObjectStore, PackMissing
from .schema import check_version, create_in_database, create_sqlite_file, ensure_pending

PACK_TARGET_SIZE = 8 * 1024 * 1024  # embedded mode; an object store sets its own
_WRITE_QUEUE_DEPTH = 1  # packs waiting for storage: memory stays under ~3 x the target size
_TREE = 1  # BlobType.TREE (blobs.py), named here without importing the codec
LEFTOVER_GRACE_NS = 3600 * 10**9  # a pack write older than this (database clock) is dead

__all__ = ["BlobLocation", "PackMissing", "PackStore", "RootNotInManifest", "SnapshotRow"]


@dataclass(frozen=True, slots=True)
class BlobLocation:
    blob_id: bytes
    type: int
    pack: str
    offset: int
    length: int
    checksum: bytes


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    snap_id: str
    time_ns: int
    record: bytes
    series: str = ""
    protected: bool = False
    received_ns: int = 0  # when the store committed it (its own clock; time_ns is the client's)


@dataclass(frozen=True, slots=True)
class PendingObject:
    """An object stored durably but not indexed yet; its pending row guards it."""

    name: str
    size: int
    token: bytes


class RootNotInManifest(IntegrityError):
    """A commit named a root that is not a stored tree among the blobs it references."""


class StoreHooks(Protocol):
    """The server's quota bookkeeping, run inside the store's own transactions."""

    def indexed(self, tx: Tx, blobs: int, stored_bytes: int) -> None:
        """A pack's rows were inserted: `blobs` new rows holding `stored_bytes`."""

    def committing(self, tx: Tx) -> None:
        """A snapshot is about to be inserted (the store's lock is held); may raise."""


@dataclass
class _PendingPack:
    parts: list[bytes]
    entries: list[trailer.TrailerEntry]
    size: int = 0


_LOCATE = 'SELECT b.blob_id, b.type, p.name, b."offset", b.length, b.checksum FROM '
_KEYS_DDL = "CREATE TEMP TABLE IF NOT EXISTS {name}(blob_id BLOB PRIMARY KEY)"


# S3 reads kept in flight while a request's blobs are streamed: up to READ_AHEAD packs' ranges,
# and at most READ_AHEAD_BYTES of them fetched ahead (memory per reading connection, which a
# client holding a stolen password can multiply by its connections: docs/SECURITY.md). One
# GET at a time left a restore through a node waiting on radosgw for half its time (Linux
# tree: 11 s; 4 in flight: 8.1 s; 8 did no better; embedded 6 s).
READ_AHEAD = 4
READ_AHEAD_BYTES = 48 * 1024 * 1024


class PackStore:
    """One repository's storage. Thread-safe; blobs may be added from many threads.

    `PackStore(root)` opens an embedded repository; `PackStore.attach(db, objects)` any
    index database and object store (scale-out)."""

    root: Path | None

    def __init__(self, root: Path, *, writer: bool = False, trailers: bool = False) -> None:
        index = root / "index.sqlite"
        if not index.is_file():
            raise RepositoryError(f"no strongroom repository at {root} (run 'strongroom init')")
        try:
            db = SqliteDatabase(index, create=False)
        except DatabaseError as exc:
            raise RepositoryError(f"repository index at {root} is unreadable: {exc}") from None
        lock = None
        try:
            check_version(db, str(root))
            if writer:
                lock = WriterLock(root / "lock")
                lock.acquire()
        except BaseException:
            db.close()
            raise
        self.root = root
        objects = LocalObjects(root / "packs", PACK_TARGET_SIZE)
        self._setup(db, objects, str(root), writer, lock, trailers=trailers)

    @classmethod
    def attach(
        cls,
        db: Database,
        objects: ObjectStore,
        *,
        writer: bool = False,
        label: str = "store",
        hooks: StoreHooks | None = None,
        trailers: bool = True,
        grace_ns: int = LEFTOVER_GRACE_NS,
    ) -> PackStore:
        """A store whose index is `db` and whose packs are `objects`, shared with other
        writers (other nodes): nothing here assumes it is the only one."""
        check_version(db, label)
        store = cls.__new__(cls)
        store.root = None
        store._setup(db, objects, label, writer, None, hooks, trailers, grace_ns)
        return store

    def _setup(
        self,
        db: Database,
        objects: ObjectStore,
        label: str,
        writer: bool,
        lock: WriterLock | None,
        hooks: StoreHooks | None = None,
        trailers: bool = False,
        grace_ns: int = LEFTOVER_GRACE_NS,
    ) -> None:
        self.db = db
        self.objects = objects
        self.label = label
        self.hooks = hooks
        self.grace_ns = grace_ns
        # Embedded packs stay exactly as they always were (blob bytes only); scale-out packs
        # carry the trailer index that `rebuild_index` reads (store/trailer.py).
        self.trailers = trailers
        self._writer = writer
        self._lock = lock  # embedded: the folder's writer lock (one writing process)
        self._pending_ids: set[bytes] = set()
        self._current = _PendingPack(parts=[], entries=[])
        self._buf_lock = threading.Lock()
        self._queue: queue.Queue[_PendingPack | None] = queue.Queue(_WRITE_QUEUE_DEPTH)
        self._writer_error: BaseException | None = None
        self._writer_thread: threading.Thread | None = None
        self.bytes_written = 0
        self._condemned: set[bytes] = set()  # as of opening: add_blob revives these
        if writer:
            try:
                ensure_pending(db)
                self.remove_leftovers(force=lock is not None)
                self._condemned = {
                    bytes(r[0])
                    for r in db.query("SELECT blob_id FROM blobs WHERE condemned_ns IS NOT NULL")
                }
            except BaseException:
                self._release()
                raise

    # ---- creation -------------------------------------------------------------------------

    @staticmethod
    def create(root: Path, meta: dict[str, bytes] | None = None) -> PackStore:
        """Create an embedded repository whose index holds `meta` (e.g. the key file) from
        the start; a crash during creation never leaves a half-made repository."""
        if meta and "schema" in meta:
            raise ValueError("'schema' is a reserved meta name")
        create_sqlite_file(root, meta)
        return PackStore(root, writer=True)

    @classmethod
    def create_attached(
        cls,
        db: Database,
        objects: ObjectStore,
        meta: dict[str, bytes] | None = None,
        *,
        label: str = "store",
        **kwargs: Any,
    ) -> PackStore:
        """Create the index in `db` (all of it in one transaction), then attach as a writer."""
        if meta and "schema" in meta:
            raise ValueError("'schema' is a reserved meta name")
        create_in_database(db, meta, label)
        return cls.attach(db, objects, writer=True, label=label, **kwargs)

    @property
    def target_pack_size(self) -> int:
        return self.objects.target_pack_size

    # ---- metadata -------------------------------------------------------------------------

    def get_meta(self, name: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, name: str, value: bytes) -> None:
        self.db.execute(
            "INSERT INTO meta(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (name, value),
        )

    # ---- blobs ----------------------------------------------------------------------------

    def all_blob_ids(self) -> set[bytes]:
        """Live blobs: those a new backup may reference without sending them again.

        Blobs GC has condemned are left out, so a backup that needs one sends it and thereby
        revives it (`revive`) instead of relying on something GC may be about to delete.
        """
        rows = self.db.query("SELECT blob_id FROM blobs WHERE condemned_ns IS NULL")
        return {bytes(r[0]) for r in rows}

    def missing(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        """Of these IDs, those that are not live (absent, or condemned by GC)."""
        wanted = set(blob_ids)
        return wanted - self._present(wanted, live_only=True)

    def stored(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        """Of these IDs, those whose bytes are stored (live or condemned)."""
        return self._present(set(blob_ids), live_only=False)

    def revive(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        """Un-condemn those of these blobs that are stored; returns every ID that is stored."""
        wanted = set(blob_ids)
        present = self._present(wanted, live_only=False)
        condemned = present - self._present(present, live_only=True)
        if condemned:
            with self.db.transaction() as tx:
                tx.executemany(
                    "UPDATE blobs SET condemned_ns = NULL WHERE blob_id = ?",
                    [(b,) for b in condemned],
                )
        return present

    def _present(self, wanted: set[bytes], *, live_only: bool) -> set[bytes]:
        if not wanted:
            return set()
        with self.db.read_transaction() as tx:
            _fill_keys(tx, "probe", wanted)
            rows = tx.query(
                "SELECT b.blob_id FROM probe w JOIN blobs b ON b.blob_id = w.blob_id "
                "WHERE (? = 0 OR b.condemned_ns IS NULL)",
                (int(live_only),),
            )
            tx.execute("DELETE FROM probe")
        return {bytes(r[0]) for r in rows}

    def add_blob(self, blob_id: bytes, blob_type: int, stored: bytes) -> bool:
        """Queue an encrypted blob for storage. Returns False if it was already pending, or
        already stored but condemned by GC (hidden from `all_blob_ids`, so a backup sends it
        again): such a blob is revived instead of being stored a second time."""
        self._raise_writer_error()
        self._check_writer()
        with self._buf_lock:
            if blob_id in self._pending_ids:
                return False
            condemned = blob_id in self._condemned
            self._condemned.discard(blob_id)
        if condemned and self.revive([blob_id]):
            return False
        full: _PendingPack | None = None
        checksum = content_checksum(stored)  # outside the lock: workers hash in parallel
        with self._buf_lock:
            if blob_id in self._pending_ids:
                return False
            self._pending_ids.add(blob_id)
            cur = self._current
            cur.entries.append(
                trailer.TrailerEntry(blob_id, blob_type, cur.size, len(stored), checksum)
            )
            cur.parts.append(stored)
            cur.size += len(stored)
            if cur.size >= self.objects.target_pack_size:
                full = cur
                self._current = _PendingPack(parts=[], entries=[])
        if full is not None:
            self._enqueue(full)
        return True

    def buffered_bytes(self) -> int:
        """Bytes added but not yet handed to the pack writer."""
        with self._buf_lock:
            return self._current.size

    def flush(self) -> None:
        """Write out everything added so far and wait until it is durable and indexed."""
        with self._buf_lock:
            cur = self._current
            self._current = _PendingPack(parts=[], entries=[])
        if cur.entries:
            self._enqueue(cur)
        if self._writer_thread is not None:
            self._queue.put(None)
            self._writer_thread.join()
            self._writer_thread = None
        self._raise_writer_error()

    def _enqueue(self, pack: _PendingPack) -> None:
        if self._writer_thread is None:
            self._writer_thread = threading.Thread(
                target=self._writer_loop, name="pack-writer", daemon=True
            )
            self._writer_thread.start()
        self._queue.put(pack)

    def _writer_loop(self) -> None:
        while True:
            pack = self._queue.get()
            if pack is None:
                return
            if self._writer_error is not None:
                self._forget(pack)  # drain so producers never block forever
                continue
            try:
                self._write_pack(pack)
            except BaseException as exc:
                self._forget(pack)
                self._writer_error = exc

    def _forget(self, pack: _PendingPack) -> None:
        """A pack that was not stored: its blobs may be added again (a retry sends them)."""
        with self._buf_lock:
            self._pending_ids.difference_update(e.blob_id for e in pack.entries)
        pack.parts.clear()

    def _raise_writer_error(self) -> None:
        """Report a failed pack write once; the next write starts afresh (an object store
        or a database that was away for a moment must not break a long-lived store)."""
        exc = self._writer_error
        if exc is None:
            return
        self._writer_error = None
        if isinstance(exc, OSError):
            raise RepositoryError(f"cannot write to repository: {exc.strerror or exc}") from None
        raise exc

    def _write_pack(self, pack: _PendingPack) -> None:
        obj = self.write_object(pack.parts, pack.entries)
        self.index_object(obj, pack.entries)
        # Indexed now: no longer pending. Kept in the set, a blob GC deletes later could never
        # be stored again by this (long-lived, on a server) store: add_blob would skip it.
        with self._buf_lock:
            self._pending_ids.difference_update(e.blob_id for e in pack.entries)
        pack.parts.clear()
        self.bytes_written += obj.size

    def write_object(
        self, parts: list[bytes], entries: list[trailer.TrailerEntry]
    ) -> PendingObject:
        """Store a pack durably under its content name (BLAKE3 of its bytes), registered as
        pending and not indexed yet; `claim_pending` in the indexing transaction ends that.

        Until then it is a leftover to `remove_leftovers` (once its pending row is older than
        the grace period, or at once if the writing process is gone in embedded mode), so a
        crash before indexing loses nothing that was ever visible.
        """
        if self.trailers:
            parts = [*parts, trailer.encode(entries)]
        # Hash and write the parts as they are: joining them would double the pack's memory.
        hasher = blake3.blake3()
        for part in parts:
            hasher.update(part)
        name = hasher.hexdigest()
        token = os.urandom(16)
        with self.db.transaction() as tx:  # serialised with deletions, which check this row
            tx.execute(
                "INSERT INTO pending_packs(name, token, started_ns) VALUES(?, ?, ?)",
                (name, token, tx.now_ns()),
            )
        try:
            self.objects.put(name, parts)
        except BaseException:
            with contextlib.suppress(Exception):
                self.db.execute(
                    "DELETE FROM pending_packs WHERE name = ? AND token = ?", (name, token)
                )
            raise
        return PendingObject(name, sum(len(p) for p in parts), token)

    def index_object(self, obj: PendingObject, entries: list[trailer.TrailerEntry]) -> None:
        """Index a pending object's blobs (those the index lacks) in one transaction."""
        with self.db.transaction() as tx:
            self.claim_pending(tx, obj)
            pack_id = tx.execute(
                "INSERT INTO packs(name, size, created_ns) VALUES(?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET size=excluded.size RETURNING id",
                (obj.name, obj.size, tx.now_ns()),
            ).scalar()
            before = _pack_rows(tx, pack_id) if self.hooks is not None else (0, 0)
            tx.executemany(
                'INSERT INTO blobs(blob_id, type, pack, "offset", length, checksum) '
                "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(e.blob_id, e.type, pack_id, e.offset, e.length, e.checksum) for e in entries],
            )
            if self.hooks is not None:
                after = _pack_rows(tx, pack_id)
                self.hooks.indexed(tx, after[0] - before[0], after[1] - before[1])

    def claim_pending(self, tx: Tx, obj: PendingObject) -> None:
        """Inside the transaction that indexes `obj`: end its pending state. If it is gone,
        leftover cleanup judged the write dead and may have deleted the object: refuse."""
        gone = tx.execute(
            "DELETE FROM pending_packs WHERE name = ? AND token = ?", (obj.name, obj.token)
        )
        if gone.rowcount != 1:
            raise RepositoryError(
                f"storing pack {obj.name[:16]} took longer than the leftover grace period "
                f"({self.grace_ns // 10**9} s) and was cleaned up; try again"
            )

    def discard_object(self, obj: PendingObject) -> None:
        """A pending object that will not be indexed after all (GC lost a race)."""
        with self.db.transaction() as tx:
            tx.execute(
                "DELETE FROM pending_packs WHERE name = ? AND token = ?", (obj.name, obj.token)
            )
            self.delete_unused(tx, [obj.name])

    def delete_unused_objects(self, names: Iterable[str]) -> list[str]:
        """Delete these objects unless an index row or a pending write names them (checked
        in the same serialised transaction, so no writer can be between check and delete)."""
        with self.db.transaction() as tx:
            return self.delete_unused(tx, list(names))

    def delete_unused(self, tx: Tx, names: list[str]) -> list[str]:
        """Delete those of these objects that no index row and no live pending row (younger
        than the grace period) names, with their expired pending rows (dead writes, doom
        marks): in the caller's exclusive transaction, so no writer is between check and
        delete."""
        cutoff = tx.now_ns() - self.grace_ns
        doomed = [
            n
            for n in names
            if tx.execute("SELECT 1 FROM packs WHERE name = ?", (n,)).fetchone() is None
            and tx.execute(
                "SELECT 1 FROM pending_packs WHERE name = ? AND started_ns >= ?", (n, cutoff)
            ).fetchone()
            is None
        ]
        if doomed:
            tx.executemany("DELETE FROM pending_packs WHERE name = ?", [(n,) for n in doomed])
            self.objects.delete(doomed)
        return doomed

    def doom(self, tx: Tx, name: str) -> None:
        """In the transaction that removes a pack's index rows (GC): mark its object for
        deletion, so that cleanup finishes the job if this process dies before it deletes
        the object. (Cleanup never deletes an object that no row explains: see
        remove_leftovers.)"""
        tx.execute(
            "INSERT INTO pending_packs(name, token, started_ns) VALUES(?, ?, 0) "
            "ON CONFLICT DO NOTHING",
            (name, b"doomed"),
        )

    # ---- transactions and queries ----------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """The index, serialised with every other writer of this store (GC, quota checks)."""
        self._check_writer()
        with self.db.transaction() as tx:
            yield tx

    def gc_lock(self, timeout_s: float | None = None) -> contextlib.AbstractContextManager[None]:
        """Held around a whole GC run: one at a time per store, across every node (two runs
        repacking the same pack would do the same work twice)."""
        return self.db.advisory_lock("gc", timeout_s=timeout_s)

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Read-only rows from the index (usage reports, scrub)."""
        return self.db.query(sql, params)

    def charge_counts(self, tx: Tx | None = None) -> tuple[int, int, int, int, int]:
        """What a quota counts: (pack bytes, blob rows, snapshot rows, record bytes,
        manifest rows), read in `tx` if given."""
        sql = (
            "SELECT (SELECT COALESCE(SUM(size), 0) FROM packs), (SELECT COUNT(*) FROM blobs), "
            "(SELECT COUNT(*) FROM snapshots), "
            "(SELECT COALESCE(SUM(LENGTH(record)), 0) FROM snapshots), "
            "(SELECT COUNT(*) FROM snapshot_blobs)"
        )
        row = (tx.query(sql) if tx is not None else self.db.query(sql))[0]
        a, b, c, d, e = (int(v) for v in row)
        return a, b, c, d, e

    def count_snapshots(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM snapshots").scalar())

    def locate(self, blob_ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        ids = blob_ids if isinstance(blob_ids, (list, set, tuple)) else list(blob_ids)
        if len(ids) <= 8:  # one folder's tree, say: plain indexed lookups beat a temp table
            return self._locate_few(ids)
        with self.db.read_transaction() as tx:
            # A temporary table instead of a long IN (...) list keeps the SQL fully parameterised.
            _fill_keys(tx, "wanted", ids)
            rows = tx.query(
                _LOCATE + "wanted w JOIN blobs b ON b.blob_id = w.blob_id "
                "JOIN packs p ON p.id = b.pack"
            )
            tx.execute("DELETE FROM wanted")
        return {loc.blob_id: loc for loc in map(_location, rows)}

    def _locate_few(self, blob_ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        out: dict[bytes, BlobLocation] = {}
        for blob_id in blob_ids:
            r = self.db.execute(
                _LOCATE + "blobs b JOIN packs p ON p.id = b.pack WHERE b.blob_id = ?", (blob_id,)
            ).fetchone()
            if r is not None:
                out[bytes(r[0])] = _location(r)
        return out

    # ---- reading --------------------------------------------------------------------------

    def read_blob(self, blob_id: bytes) -> bytes:
        for _bid, data in self.read_blobs([blob_id]):
            return data
        raise IntegrityError(f"blob {blob_id.hex()[:16]} is missing from the repository")

    def read_blobs(self, blob_ids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """Yield (blob_id, stored bytes) in pack order; raise IntegrityError for missing ones."""
        wanted = list(dict.fromkeys(blob_ids))
        for attempt in range(3):
            locs = self.locate(wanted)
            missing = [b for b in wanted if b not in locs]
            if missing:
                raise IntegrityError(
                    f"{len(missing)} blob(s) missing from the repository, "
                    f"e.g. {missing[0].hex()[:16]}"
                )
            ordered = sorted(locs.values(), key=lambda loc: (loc.pack, loc.offset))
            done: set[bytes] = set()
            try:
                for bid, data in self.read_locations(ordered):
                    done.add(bid)
                    yield bid, data
                return
            except PackMissing:
                if attempt == 2:
                    raise
                # A concurrent GC repacked these blobs: look up where they are now.
                wanted = [b for b in wanted if b not in done]

    def read_locations(self, ordered: list[BlobLocation]) -> Iterator[tuple[bytes, bytes]]:
        """The blobs at these locations (grouped by pack, as given), checksums verified.

        From S3 the next packs' ranges are fetched while this one's blobs are consumed
        (READ_AHEAD GETs, READ_AHEAD_BYTES, in flight), so the object store's latency
        overlaps the streaming."""
        groups: list[list[BlobLocation]] = []
        for loc in ordered:
            if groups and groups[-1][0].pack == loc.pack:
                groups[-1].append(loc)
            else:
                groups.append([loc])
        if self.objects.kind != "s3" or len(groups) < 2:
            for group in groups:  # a local file streams range by range
                ranges = [(g.offset, g.length) for g in group]
                yield from self._checked(group, self.objects.read_ranges(group[0].pack, ranges))
            return
        sizes = [sum(loc.length for loc in group) for group in groups]
        with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="pack-read") as pool:
            ahead: collections.deque[Future[list[bytes]]] = collections.deque()
            submitted = in_flight = 0
            for k, group in enumerate(groups):
                # The group needed now always goes; later ones while they fit the budget.
                while submitted < len(groups) and (
                    submitted == k
                    or (
                        len(ahead) < READ_AHEAD and in_flight + sizes[submitted] <= READ_AHEAD_BYTES
                    )
                ):
                    ahead.append(pool.submit(self._fetch, groups[submitted]))
                    in_flight += sizes[submitted]
                    submitted += 1
                datas = ahead.popleft().result()
                in_flight -= sizes[k]
                yield from self._checked(group, datas)

    def _fetch(self, group: list[BlobLocation]) -> list[bytes]:
        return list(self.objects.read_ranges(group[0].pack, [(g.offset, g.length) for g in group]))

    @staticmethod
    def _checked(
        group: list[BlobLocation], datas: Iterable[bytes]
    ) -> Iterator[tuple[bytes, bytes]]:
        for loc, data in zip(group, datas, strict=False):  # a short read is caught below
            if len(data) != loc.length or content_checksum(data) != loc.checksum:
                raise IntegrityError(
                    f"blob {loc.blob_id.hex()[:16]} in pack {loc.pack[:16]} is damaged"
                )
            yield loc.blob_id, data

    def pack_path(self, name: str) -> Path:
        """An embedded store's pack file."""
        if not isinstance(self.objects, LocalObjects):
            raise RepositoryError("this store's packs are not files")
        return self.objects.path(name)

    def iter_index(self) -> Iterator[BlobLocation]:
        rows = self.db.query(
            _LOCATE + 'blobs b JOIN packs p ON p.id = b.pack ORDER BY p.name, b."offset"'
        )
        yield from map(_location, rows)

    def iter_verified(self) -> Iterator[tuple[bytes, bool, bytes]]:
        """Every indexed blob in storage order as (id, intact, bytes); a blob whose checksum
        fails (or whose pack is gone) is reported as not intact instead of ending the walk.
        A blob a concurrent GC moved since the walk began is read where it is now; one it
        deleted is left out (both are no damage)."""
        for group in _by_pack(self.iter_index()):
            try:
                ranges = [(loc.offset, loc.length) for loc in group]
                datas = list(self.objects.read_ranges(group[0].pack, ranges))
            except PackMissing:
                for loc in group:
                    yield from self._verify_one(loc)
                continue
            except (IntegrityError, OSError):
                datas = []
            for k, loc in enumerate(group):
                data = datas[k] if k < len(datas) else b""
                ok = len(data) == loc.length and content_checksum(data) == loc.checksum
                yield loc.blob_id, ok, data if ok else b""

    def _verify_one(self, loc: BlobLocation) -> Iterator[tuple[bytes, bool, bytes]]:
        for _attempt in range(3):
            try:
                for bid, data in self.read_locations([loc]):
                    yield bid, True, data
                return
            except PackMissing:
                now = self._locate_few([loc.blob_id]).get(loc.blob_id)
                if now is None:
                    return  # deleted by GC
                if now == loc:
                    break
                loc = now
            except (IntegrityError, OSError):
                break
        yield loc.blob_id, False, b""

    def has_pack(self, name: str) -> bool:
        """Is this pack (still) in the index? A concurrent GC may just have removed it."""
        return self.db.execute("SELECT 1 FROM packs WHERE name = ?", (name,)).fetchone() is not None

    def storage_problems(self) -> list[str]:
        """Packs the index lists that are missing or have the wrong size."""
        problems = []
        indexed = self.packs()
        actual = self.objects.sizes(indexed)
        for name, size in indexed.items():
            have = actual.get(name)
            if have is None:
                if self.has_pack(name):  # else a concurrent GC removed it: not a problem
                    problems.append(f"pack {name[:16]} is missing")
            elif have != size:
                problems.append(f"pack {name[:16]} has size {have}, index says {size}")
        return problems

    def packs(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.db.query("SELECT name, size FROM packs")}

    def stored_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(size), 0) FROM packs").scalar())

    # ---- snapshots ------------------------------------------------------------------------

    def commit_snapshot(
        self,
        snap_id: str,
        time_ns: int,
        record: bytes,
        manifest: Iterable[bytes],
        series: str = "",
        *,
        root: bytes | None = None,
        received_ns: int | None = None,
    ) -> None:
        """Make a snapshot visible, atomically, only if every blob it references is stored.

        `manifest` is streamed into a temporary table (never held as one list), so a huge one
        costs disk pages, not memory. With `root`, the manifest must hold it and it must be a
        stored tree: a commit cannot name a root that is not part of what it keeps alive.
        `received_ns` defaults to the database's clock (in scale-out mode not any node's)."""
        self._check_writer()
        with self.db.transaction() as tx:
            try:
                received = tx.now_ns() if received_ns is None else received_ns
                self._check_and_insert(
                    tx, snap_id, time_ns, record, manifest, series, root, received
                )
            finally:
                with contextlib.suppress(DatabaseError):
                    tx.execute("DELETE FROM manifest")

    def _check_and_insert(
        self,
        tx: Tx,
        snap_id: str,
        time_ns: int,
        record: bytes,
        manifest: Iterable[bytes],
        series: str,
        root: bytes | None,
        received_ns: int,
    ) -> None:
        _fill_keys(tx, "manifest", manifest)
        wanted, found = tx.query(
            "SELECT (SELECT COUNT(*) FROM manifest), "
            "(SELECT COUNT(*) FROM manifest m JOIN blobs b ON b.blob_id = m.blob_id)"
        )[0]
        if found != wanted:
            raise IntegrityError(
                f"snapshot references {wanted - found} blob(s) the repository does not have"
            )
        if root is not None:
            row = tx.execute(
                "SELECT b.type FROM manifest m JOIN blobs b ON b.blob_id = m.blob_id "
                "WHERE m.blob_id = ?",
                (root,),
            ).fetchone()
            if row is None or row[0] != _TREE:
                raise RootNotInManifest(
                    "the snapshot's root tree is not a stored tree in its manifest"
                )
        if self.hooks is not None:
            self.hooks.committing(tx)
        row_id = tx.execute(
            "INSERT INTO snapshots(snap_id, time_ns, record, series, received_ns) "
            "VALUES(?, ?, ?, ?, ?) RETURNING id",
            (snap_id, time_ns, record, series, received_ns),
        ).scalar()
        # Referenced again: whatever GC condemned among these is live once more.
        tx.execute(
            "UPDATE blobs SET condemned_ns = NULL WHERE condemned_ns IS NOT NULL "
            "AND blob_id IN (SELECT blob_id FROM manifest)"
        )
        tx.execute(
            "INSERT INTO snapshot_blobs(snapshot, blob) "
            "SELECT ?, b.id FROM manifest m JOIN blobs b ON b.blob_id = m.blob_id",
            (row_id,),
        )

    def list_snapshots(self) -> list[SnapshotRow]:
        rows = self.db.query(
            "SELECT snap_id, time_ns, record, series, protected, received_ns FROM snapshots "
            "ORDER BY time_ns, snap_id"
        )
        return [SnapshotRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def set_protected(self, snap_id: str, protected: bool) -> bool:
        self._check_writer()
        cur = self.db.execute(
            "UPDATE snapshots SET protected = ? WHERE snap_id = ?", (int(protected), snap_id)
        )
        return cur.rowcount > 0

    def snapshot_manifest(self, snap_id: str) -> set[bytes]:
        rows = self.db.query(
            "SELECT b.blob_id FROM snapshot_blobs sb JOIN snapshots s ON s.id = sb.snapshot "
            "JOIN blobs b ON b.id = sb.blob WHERE s.snap_id = ?",
            (snap_id,),
        )
        return {bytes(r[0]) for r in rows}

    def delete_snapshot(self, snap_id: str) -> bool:
        """Remove a snapshot (never a protected one); its blobs become garbage for GC."""
        return self.delete_snapshots([snap_id]) > 0

    def delete_snapshots(self, snap_ids: Iterable[str]) -> int:
        """Remove snapshots in one transaction (all or none; never a protected one)."""
        self._check_writer()
        removed = 0
        with self.db.transaction() as tx:
            for snap_id in snap_ids:
                row = tx.execute(
                    "SELECT protected FROM snapshots WHERE snap_id = ?", (snap_id,)
                ).fetchone()
                if row is not None and row[0]:
                    raise RepositoryError(
                        f"snapshot {snap_id[:8]} is protected; unprotect it first"
                    )
                removed += tx.execute(
                    "DELETE FROM snapshots WHERE snap_id = ?", (snap_id,)
                ).rowcount
        return removed

    # ---- housekeeping ---------------------------------------------------------------------

    def remove_leftovers(self, *, force: bool = True) -> int:
        """Delete what dead writers left: unfinished writes and objects no index row names,
        unless a pending row younger than the grace period (database clock) says a writer is
        still at it. Returns how many objects went. One node at a time per store. Without
        `force` (a scale-out node opening the store) it runs only if no run finished within a
        quarter of the grace period: listing a big prefix at every open would slow logins,
        and a dead writer's objects cannot go before the grace period anyway."""
        self._check_writer()
        with self.db.try_advisory_lock("leftovers") as mine:
            if not mine or (not force and self._cleaned_recently()):
                return 0
            # List first, decide after: an object listed here that the index does not name
            # was registered as pending before it was written, so the decision sees that row.
            names = list(self.objects.names())
            partials = self.objects.partials()
            with self.db.transaction() as tx:
                now = tx.now_ns()
                cutoff = now - self.grace_ns
                live = {
                    r[0]
                    for r in tx.query(
                        "SELECT name FROM pending_packs WHERE started_ns >= ?", (cutoff,)
                    )
                }
                dead = {
                    r[0]
                    for r in tx.query(
                        "SELECT name FROM pending_packs WHERE started_ns < ?", (cutoff,)
                    )
                }
                indexed = {r[0] for r in tx.query("SELECT name FROM packs")}
                unindexed = [n for n in names if n not in indexed and n not in live]
                if self._lock is None:
                    # Shared: only what a row says is dead (a writer that never finished, a
                    # pack GC removed). An object no row explains is kept: it may be a pack a
                    # database restored from an older backup has forgotten (rebuild-index
                    # adopts it, or removes it if it holds nothing the index lacks).
                    unindexed = [n for n in unindexed if n in dead]
                doomed = self.delete_unused(tx, unindexed)
                tx.execute("DELETE FROM pending_packs WHERE started_ns < ?", (cutoff,))
                stale = [n for n in partials if n not in live]
                if stale:
                    self.objects.remove_partials(stale)
                if self._lock is None:  # shared: when the last run was (embedded: every open)
                    tx.execute(
                        "INSERT INTO meta(name, value) VALUES('leftovers_ns', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                        (str(now).encode(),),
                    )
            if self._lock is not None and isinstance(self.objects, LocalObjects):
                # The embedded writer is alone: anything else in packs/ is junk too.
                self.objects.remove_strays(indexed | live)
        return len(doomed)

    def _cleaned_recently(self) -> bool:
        last = self.get_meta("leftovers_ns")
        if last is None or not last.isdigit():
            return False
        return self.db.now_ns() - int(last) < self.grace_ns // 4

    def _check_writer(self) -> None:
        if not self._writer:
            raise RepositoryError("store was opened read-only")

    def close(self) -> None:
        try:
            # Blobs still buffered are written too: after an interrupted backup (client gone)
            # everything that reached us is kept, so the next run need not send it again.
            if self._writer and (self._writer_thread is not None or self._current.entries):
                self.flush()
        finally:
            self._release()

    def _release(self) -> None:
        self.db.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _location(r: tuple[Any, ...]) -> BlobLocation:
    return BlobLocation(bytes(r[0]), int(r[1]), str(r[2]), int(r[3]), int(r[4]), bytes(r[5]))


def _by_pack(locs: Iterable[BlobLocation]) -> Iterator[list[BlobLocation]]:
    group: list[BlobLocation] = []
    for loc in locs:
        if group and loc.pack != group[0].pack:
            yield group
            group = []
        group.append(loc)
    if group:
        yield group


def _pack_rows(tx: Tx, pack_id: int) -> tuple[int, int]:
    row = tx.query(
        "SELECT COUNT(*), COALESCE(SUM(length), 0) FROM blobs WHERE pack = ?", (pack_id,)
    )
    return int(row[0][0]), int(row[0][1])


_BATCH = 5000


def _fill_keys(tx: Tx, table: str, keys: Iterable[bytes]) -> None:
    """An empty TEMP table `table(blob_id)` filled with these keys (duplicates collapse).
    PostgreSQL takes them as arrays, thousands per statement; SQLite row by row (in-process,
    that is as fast)."""
    tx.execute(translate_ddl(_KEYS_DDL.format(name=table), tx.dialect))
    tx.execute(f"DELETE FROM {table}")  # noqa: S608 - a constant name
    if tx.dialect == "sqlite":
        tx.executemany(
            f"INSERT INTO {table}(blob_id) VALUES(?) ON CONFLICT DO NOTHING",
            ((k,) for k in keys),
        )
        return
    batch: list[bytes] = []
    insert = f"INSERT INTO {table}(blob_id) SELECT unnest(?::bytea[]) ON CONFLICT DO NOTHING"
    for key in keys:
        batch.append(key)
        if len(batch) >= _BATCH:
            tx.execute(insert, (batch,))
            batch = []
    if batch:
        tx.execute(insert, (batch,))
