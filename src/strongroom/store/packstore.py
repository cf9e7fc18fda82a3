"""Pack files plus an SQLite index; the durability rules live here.

Write path (see docs/FORMAT.md, "Durability"):
1. blobs are appended to an in-memory pack buffer;
2. a full buffer is written to ``packs/xx/NAME.tmp``, fsync'd, renamed to ``NAME`` and the
   folder fsync'd (and ``packs/`` too when ``xx`` was just created);
3. only then are its blobs inserted into the index, in one transaction;
4. a snapshot row and its manifest are inserted in one transaction that first checks that every
   blob of the manifest is in the index (a read-only store cannot commit at all).
A crash at any point leaves at worst a ``.tmp`` file or a pack nobody indexed; both are removed
the next time a writer opens the store (never by a reader: it holds no lock, so it cannot tell
them from a live writer's pack between its rename and its index commit). A write that fails
removes its own ``.tmp``. A new repository's index is built under a temporary name, with its
initial metadata, and linked into place last: a crash during creation leaves no index at all.
Tested by tests/test_crash.py, which SIGKILLs real processes.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from ..crypto import content_checksum
from ..durable import fsync_dir
from ..errors import IntegrityError, RepositoryError
from .lock import WriterLock

PACK_TARGET_SIZE = 8 * 1024 * 1024
_WRITE_QUEUE_DEPTH = 1  # packs waiting for disk: memory stays under ~3 x PACK_TARGET_SIZE
_SCHEMA_VERSION = 3
_TREE = 1  # BlobType.TREE (blobs.py), named here without importing the codec

_SCHEMA = """
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


class RootNotInManifest(IntegrityError):
    """A commit named a root that is not a stored tree among the blobs it references."""


class PackMissing(IntegrityError):
    """A pack the index named is gone (a concurrent GC may have moved its blobs)."""


# Schema 1 -> 2: retention groups, protection, and GC's two-phase deletion.
# Schema 2 -> 3: the time each snapshot was received; older ones get their own time, never
# one later than the migration (a future time a client chose must not outlive it).
_MIGRATIONS = {
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


@dataclass
class _PendingPack:
    parts: list[bytes]
    entries: list[tuple[bytes, int, int, int, bytes]]  # blob_id, type, offset, length, checksum
    size: int = 0


class PackStore:
    """One repository's storage. Thread-safe; blobs may be added from many threads."""

    def __init__(self, root: Path, *, writer: bool = False) -> None:
        self.root = root
        index = root / "index.sqlite"
        if not index.is_file():
            raise RepositoryError(f"no strongroom repository at {root} (run 'strongroom init')")
        self._db = _connect(index)
        self._db_lock = threading.Lock()
        self._check_schema()
        self._lock: WriterLock | None = None
        self._pending_ids: set[bytes] = set()
        self._current = _PendingPack(parts=[], entries=[])
        self._buf_lock = threading.Lock()
        self._queue: queue.Queue[_PendingPack | None] = queue.Queue(_WRITE_QUEUE_DEPTH)
        self._writer_error: BaseException | None = None
        self._writer_thread: threading.Thread | None = None
        self.bytes_written = 0
        self._condemned: set[bytes] = set()  # as of opening: add_blob revives these
        if writer:
            self._lock = WriterLock(root / "lock")
            self._lock.acquire()
            self._remove_unindexed_packs()
            self._condemned = {
                bytes(r[0])
                for r in self.query("SELECT blob_id FROM blobs WHERE condemned_ns IS NOT NULL")
            }

    # ---- creation -------------------------------------------------------------------------

    @staticmethod
    def create(root: Path, meta: dict[str, bytes] | None = None) -> PackStore:
        """Create a repository whose index holds `meta` (e.g. the key file) from the start.

        The index is built under a temporary name and linked into place last, so a crash during
        creation never leaves a half-made repository: the folder has either no index (and
        `create` accepts it again) or a complete one.
        """
        index = root / "index.sqlite"
        if index.exists():
            raise RepositoryError(f"a repository already exists at {root}")
        if root.exists() and not _only_init_leftovers(root):
            raise RepositoryError(f"{root} exists and is not empty; choose an empty folder")
        if meta and "schema" in meta:
            raise ValueError("'schema' is a reserved meta name")
        if _mkdir(root, parents=True):
            fsync_dir(root.parent)  # the repository folder's own entry must survive a crash
        for entry in root.iterdir():  # an earlier create that was killed
            if entry.name.startswith(_INIT_PREFIX):
                with contextlib.suppress(OSError):
                    entry.unlink()
        (root / "packs").mkdir(exist_ok=True)
        tmp = root / f"{_INIT_PREFIX}{os.urandom(8).hex()}"
        try:
            db = sqlite3.connect(tmp)
            try:
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
                with db:
                    db.execute(
                        "INSERT INTO meta(name, value) VALUES('schema', ?)", (str(_SCHEMA_VERSION),)
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
        return PackStore(root, writer=True)

    def _check_schema(self) -> None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise RepositoryError(f"repository index at {self.root} is unreadable: {exc}") from None
        version = int(row[0]) if row is not None and str(row[0]).isdigit() else -1
        if version in _MIGRATIONS:
            self._migrate()
        elif version != _SCHEMA_VERSION:
            raise RepositoryError(f"repository at {self.root} has an unsupported schema")

    def _migrate(self) -> None:
        """Bring an older index up to date in one transaction (all or nothing)."""
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
                current = int(row[0])
                while current in _MIGRATIONS:
                    for statement in _MIGRATIONS[current]:
                        self._db.execute(statement)
                    current += 1
                if current != _SCHEMA_VERSION:
                    raise RepositoryError(f"repository at {self.root} has an unsupported schema")
                self._db.execute(
                    "UPDATE meta SET value=? WHERE name='schema'", (str(_SCHEMA_VERSION),)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # ---- metadata -------------------------------------------------------------------------

    def get_meta(self, name: str) -> bytes | None:
        with self._db_lock:
            row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, name: str, value: bytes) -> None:
        with self._db_lock, self._db:
            self._db.execute(
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
        with self._db_lock:
            return {
                bytes(r[0])
                for r in self._db.execute("SELECT blob_id FROM blobs WHERE condemned_ns IS NULL")
            }

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
            with self._db_lock, self._db:
                self._db.executemany(
                    "UPDATE blobs SET condemned_ns = NULL WHERE blob_id = ?",
                    ((b,) for b in condemned),
                )
        return present

    def _present(self, wanted: set[bytes], *, live_only: bool) -> set[bytes]:
        if not wanted:
            return set()
        with self._db_lock, self._db:
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS probe(blob_id BLOB PRIMARY KEY)")
            self._db.execute("DELETE FROM temp.probe")
            self._db.executemany(
                "INSERT OR IGNORE INTO temp.probe(blob_id) VALUES(?)", ((b,) for b in wanted)
            )
            rows = self._db.execute(
                "SELECT b.blob_id FROM temp.probe w JOIN blobs b ON b.blob_id = w.blob_id "
                "WHERE (? = 0 OR b.condemned_ns IS NULL)",
                (int(live_only),),
            ).fetchall()
            self._db.execute("DELETE FROM temp.probe")
        return {bytes(r[0]) for r in rows}

    def add_blob(self, blob_id: bytes, blob_type: int, stored: bytes) -> bool:
        """Queue an encrypted blob for storage. Returns False if it was already pending, or
        already stored but condemned by GC (hidden from `all_blob_ids`, so a backup sends it
        again): such a blob is revived instead of being stored a second time."""
        self._raise_writer_error()
        if self._lock is None:
            raise RepositoryError("store was opened read-only")
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
            cur.entries.append((blob_id, blob_type, cur.size, len(stored), checksum))
            cur.parts.append(stored)
            cur.size += len(stored)
            if cur.size >= PACK_TARGET_SIZE:
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
                continue  # drain so producers never block forever
            try:
                self._write_pack(pack)
            except BaseException as exc:
                self._writer_error = exc

    def _raise_writer_error(self) -> None:
        exc = self._writer_error
        if exc is None:
            return
        if isinstance(exc, OSError):
            raise RepositoryError(f"cannot write to repository: {exc.strerror or exc}") from None
        raise exc

    def _write_pack(self, pack: _PendingPack) -> None:
        name = self.write_pack_file(pack.parts)
        with self._db_lock, self._db:
            cur = self._db.execute(
                "INSERT INTO packs(name, size, created_ns) VALUES(?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET size=excluded.size RETURNING id",
                (name, pack.size, time.time_ns()),
            )
            pack_id = cur.fetchone()[0]
            self._db.executemany(
                "INSERT OR IGNORE INTO blobs(blob_id, type, pack, offset, length, checksum) "
                "VALUES(?, ?, ?, ?, ?, ?)",
                [(b, t, pack_id, o, n, c) for (b, t, o, n, c) in pack.entries],
            )
        # Indexed now: no longer pending. Kept in the set, a blob GC deletes later could never
        # be stored again by this (long-lived, on a server) store: add_blob would skip it.
        with self._buf_lock:
            self._pending_ids.difference_update(e[0] for e in pack.entries)
        pack.parts.clear()
        self.bytes_written += pack.size

    def write_pack_file(self, parts: list[bytes]) -> str:
        """Write a pack durably under its content name (BLAKE3 of its bytes); not indexed yet.

        Until its blobs are indexed such a pack is a leftover that the next writer's open
        removes, so a crash before indexing loses nothing that was ever visible.
        """
        # Hash and write the parts as they are: joining them would double the pack's memory.
        hasher = blake3.blake3()
        for part in parts:
            hasher.update(part)
        name = hasher.hexdigest()
        folder = self.root / "packs" / name[:2]
        if _mkdir(folder):
            # A new subfolder is only durable once its parent is fsync'd; without this a power
            # loss could drop the folder, and with it a pack the index already points to.
            fsync_dir(folder.parent)
        final = folder / name
        tmp = folder / (name + ".tmp")
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600
            )
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            # Do not leave a partial pack behind (on a full disk it holds space we need).
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(folder)
        return name

    def remove_pack_file(self, name: str) -> None:
        """Delete a pack file the index no longer names (GC, after its transaction)."""
        path = self.pack_path(name)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fsync_dir(path.parent)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The index, locked and inside one transaction (for GC, which lives in store/gc.py)."""
        if self._lock is None:
            raise RepositoryError("store was opened read-only")
        with self._db_lock, self._db:
            yield self._db

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Read-only rows from the index (usage reports, scrub)."""
        with self._db_lock:
            return list(self._db.execute(sql, params).fetchall())

    def locate(self, blob_ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        ids = blob_ids if isinstance(blob_ids, (list, set, tuple)) else list(blob_ids)
        if len(ids) <= 8:  # one folder's tree, say: plain indexed lookups beat a temp table
            return self._locate_few(ids)
        out: dict[bytes, BlobLocation] = {}
        with self._db_lock, self._db:
            # A temporary table instead of a long IN (...) list keeps the SQL fully parameterised.
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted(blob_id BLOB PRIMARY KEY)")
            self._db.execute("DELETE FROM temp.wanted")
            self._db.executemany(
                "INSERT OR IGNORE INTO temp.wanted(blob_id) VALUES(?)", ((b,) for b in blob_ids)
            )
            rows = self._db.execute(
                "SELECT b.blob_id, b.type, p.name, b.offset, b.length, b.checksum "
                "FROM temp.wanted w JOIN blobs b ON b.blob_id = w.blob_id "
                "JOIN packs p ON p.id = b.pack"
            ).fetchall()
            self._db.execute("DELETE FROM temp.wanted")
        for r in rows:
            loc = BlobLocation(bytes(r[0]), r[1], r[2], r[3], r[4], bytes(r[5]))
            out[loc.blob_id] = loc
        return out

    def _locate_few(self, blob_ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        out: dict[bytes, BlobLocation] = {}
        with self._db_lock:
            for blob_id in blob_ids:
                r = self._db.execute(
                    "SELECT b.blob_id, b.type, p.name, b.offset, b.length, b.checksum "
                    "FROM blobs b JOIN packs p ON p.id = b.pack WHERE b.blob_id = ?",
                    (blob_id,),
                ).fetchone()
                if r is not None:
                    out[bytes(r[0])] = BlobLocation(
                        bytes(r[0]), r[1], r[2], r[3], r[4], bytes(r[5])
                    )
        return out

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
        current: str | None = None
        fd = -1
        try:
            for loc in ordered:
                if loc.pack != current:
                    if fd >= 0:
                        os.close(fd)
                        fd = -1
                    try:
                        fd = os.open(
                            self.pack_path(loc.pack), os.O_RDONLY | getattr(os, "O_BINARY", 0)
                        )
                    except FileNotFoundError:
                        raise PackMissing(f"pack {loc.pack[:16]} is missing") from None
                    current = loc.pack
                data = (
                    os.pread(fd, loc.length, loc.offset)
                    if hasattr(os, "pread")
                    else _pread(fd, loc)
                )
                if len(data) != loc.length or content_checksum(data) != loc.checksum:
                    raise IntegrityError(
                        f"blob {loc.blob_id.hex()[:16]} in pack {loc.pack[:16]} is damaged"
                    )
                yield loc.blob_id, data
        finally:
            if fd >= 0:
                os.close(fd)

    def pack_path(self, name: str) -> Path:
        return self.root / "packs" / name[:2] / name

    def iter_index(self) -> Iterator[BlobLocation]:
        with self._db_lock:
            rows = self._db.execute(
                "SELECT b.blob_id, b.type, p.name, b.offset, b.length, b.checksum "
                "FROM blobs b JOIN packs p ON p.id = b.pack ORDER BY p.name, b.offset"
            ).fetchall()
        for r in rows:
            yield BlobLocation(bytes(r[0]), r[1], r[2], r[3], r[4], bytes(r[5]))

    def iter_verified(self) -> Iterator[tuple[bytes, bool, bytes]]:
        """Every indexed blob in storage order as (id, intact, bytes); a blob whose checksum
        fails (or whose pack is gone) is reported as not intact instead of ending the walk.
        A blob a concurrent GC moved since the walk began is read where it is now; one it
        deleted is left out (both are no damage)."""
        for loc in self.iter_index():
            for _attempt in range(3):
                try:
                    for bid, data in self.read_locations([loc]):
                        yield bid, True, data
                    break
                except PackMissing:
                    now = self._locate_few([loc.blob_id]).get(loc.blob_id)
                    if now is None:
                        break  # deleted by GC
                    if now == loc:
                        yield loc.blob_id, False, b""
                        break
                    loc = now
                except (IntegrityError, OSError):
                    yield loc.blob_id, False, b""
                    break
            else:
                yield loc.blob_id, False, b""

    def has_pack(self, name: str) -> bool:
        """Is this pack (still) in the index? A concurrent GC may just have removed it."""
        with self._db_lock:
            return (
                self._db.execute("SELECT 1 FROM packs WHERE name = ?", (name,)).fetchone()
                is not None
            )

    def storage_problems(self) -> list[str]:
        """Packs the index lists that are missing or have the wrong size."""
        problems = []
        for name, size in self.packs().items():
            try:
                actual = os.stat(self.pack_path(name)).st_size
            except FileNotFoundError:
                if self.has_pack(name):  # else a concurrent GC removed it: not a problem
                    problems.append(f"pack {name[:16]} is missing")
                continue
            if actual != size:
                problems.append(f"pack {name[:16]} has size {actual}, index says {size}")
        return problems

    def packs(self) -> dict[str, int]:
        with self._db_lock:
            return {r[0]: r[1] for r in self._db.execute("SELECT name, size FROM packs")}

    def stored_bytes(self) -> int:
        with self._db_lock:
            row = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM packs").fetchone()
        return int(row[0])

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
        stored tree: a commit cannot name a root that is not part of what it keeps alive."""
        if self._lock is None:
            raise RepositoryError("store was opened read-only")
        received = time.time_ns() if received_ns is None else received_ns
        with self._db_lock, self._db:
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS manifest(blob_id BLOB PRIMARY KEY)")
            self._db.execute("DELETE FROM temp.manifest")
            try:
                self._check_and_insert(snap_id, time_ns, record, manifest, series, root, received)
            finally:
                self._db.execute("DELETE FROM temp.manifest")

    def _check_and_insert(
        self,
        snap_id: str,
        time_ns: int,
        record: bytes,
        manifest: Iterable[bytes],
        series: str,
        root: bytes | None,
        received_ns: int,
    ) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO temp.manifest(blob_id) VALUES(?)", ((b,) for b in manifest)
        )
        wanted, found = self._db.execute(
            "SELECT (SELECT COUNT(*) FROM temp.manifest), "
            "(SELECT COUNT(*) FROM temp.manifest m JOIN blobs b ON b.blob_id = m.blob_id)"
        ).fetchone()
        if found != wanted:
            raise IntegrityError(
                f"snapshot references {wanted - found} blob(s) the repository does not have"
            )
        if root is not None:
            row = self._db.execute(
                "SELECT b.type FROM temp.manifest m JOIN blobs b ON b.blob_id = m.blob_id "
                "WHERE m.blob_id = ?",
                (root,),
            ).fetchone()
            if row is None or row[0] != _TREE:
                raise RootNotInManifest(
                    "the snapshot's root tree is not a stored tree in its manifest"
                )
        cur = self._db.execute(
            "INSERT INTO snapshots(snap_id, time_ns, record, series, received_ns) "
            "VALUES(?, ?, ?, ?, ?) RETURNING id",
            (snap_id, time_ns, record, series, received_ns),
        )
        row_id = cur.fetchone()[0]
        # Referenced again: whatever GC condemned among these is live once more.
        self._db.execute(
            "UPDATE blobs SET condemned_ns = NULL WHERE condemned_ns IS NOT NULL "
            "AND blob_id IN (SELECT blob_id FROM temp.manifest)"
        )
        self._db.execute(
            "INSERT INTO snapshot_blobs(snapshot, blob) "
            "SELECT ?, b.id FROM temp.manifest m JOIN blobs b ON b.blob_id = m.blob_id",
            (row_id,),
        )

    def list_snapshots(self) -> list[SnapshotRow]:
        with self._db_lock:
            rows = self._db.execute(
                "SELECT snap_id, time_ns, record, series, protected, received_ns FROM snapshots "
                "ORDER BY time_ns, snap_id"
            ).fetchall()
        return [SnapshotRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def set_protected(self, snap_id: str, protected: bool) -> bool:
        if self._lock is None:
            raise RepositoryError("store was opened read-only")
        with self._db_lock, self._db:
            cur = self._db.execute(
                "UPDATE snapshots SET protected = ? WHERE snap_id = ?", (int(protected), snap_id)
            )
            return cur.rowcount > 0

    def snapshot_manifest(self, snap_id: str) -> set[bytes]:
        with self._db_lock:
            rows = self._db.execute(
                "SELECT b.blob_id FROM snapshot_blobs sb JOIN snapshots s ON s.id = sb.snapshot "
                "JOIN blobs b ON b.id = sb.blob WHERE s.snap_id = ?",
                (snap_id,),
            ).fetchall()
        return {bytes(r[0]) for r in rows}

    def delete_snapshot(self, snap_id: str) -> bool:
        """Remove a snapshot (never a protected one); its blobs become garbage for GC."""
        return self.delete_snapshots([snap_id]) > 0

    def delete_snapshots(self, snap_ids: Iterable[str]) -> int:
        """Remove snapshots in one transaction (all or none; never a protected one)."""
        if self._lock is None:
            raise RepositoryError("store was opened read-only")
        removed = 0
        with self._db_lock, self._db:
            for snap_id in snap_ids:
                row = self._db.execute(
                    "SELECT protected FROM snapshots WHERE snap_id = ?", (snap_id,)
                ).fetchone()
                if row is not None and row[0]:
                    raise RepositoryError(
                        f"snapshot {snap_id[:8]} is protected; unprotect it first"
                    )
                cur = self._db.execute("DELETE FROM snapshots WHERE snap_id = ?", (snap_id,))
                removed += cur.rowcount
        return removed

    # ---- housekeeping ---------------------------------------------------------------------

    def _remove_unindexed_packs(self) -> None:
        """Remove leftovers of a writer that died; safe because we hold the writer lock."""
        known = set(self.packs())
        packs_dir = self.root / "packs"
        if not packs_dir.is_dir():
            return
        for sub in packs_dir.iterdir():
            if not sub.is_dir():
                continue
            for entry in sub.iterdir():
                if entry.name.endswith(".tmp") or entry.name not in known:
                    with contextlib.suppress(OSError):
                        entry.unlink()

    def close(self) -> None:
        try:
            # Blobs still buffered are written too: after an interrupted backup (client gone)
            # everything that reached us is kept, so the next run need not send it again.
            if self._lock is not None and (
                self._writer_thread is not None or self._current.entries
            ):
                self.flush()
        finally:
            with self._db_lock:
                self._db.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.isolation_level = "DEFERRED"
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a committed index row survives power loss
    db.execute("PRAGMA foreign_keys=ON")
    return db


_INIT_PREFIX = "index.sqlite.init-"


def _only_init_leftovers(root: Path) -> bool:
    """True if `root` holds nothing but what a killed `create` can leave behind."""
    for entry in root.iterdir():
        if entry.name.startswith(_INIT_PREFIX) or entry.name == "lock":
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


def _pread(fd: int, loc: BlobLocation) -> bytes:  # pragma: no cover - Windows fallback
    os.lseek(fd, loc.offset, os.SEEK_SET)
    return os.read(fd, loc.length)
