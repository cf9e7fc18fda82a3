"""The client's local cache: what the last snapshot of a set of paths looked like.

For every directory it remembers a signature of the entries' lstat results, the tree ID that
was stored for it, and the blob IDs that tree references. When a directory's signature has not
changed, the archiver reuses its tree without reading or even re-encoding anything: an
unchanged tree costs one lstat per entry. The cache is only trusted when it belongs to the
snapshot the backup uses as parent; otherwise it is rebuilt from the parent's trees.

It also maps the keyed content hash of small files to where they are stored inside bundles, so
a copied or renamed small file is not stored twice. The cache lives on the client, which
already has the plaintext; it never goes to the server.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import blake3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dirs2(
    path BLOB PRIMARY KEY,
    own_sig BLOB NOT NULL,
    full_sig BLOB NOT NULL,
    tree_id BLOB NOT NULL,
    refs BLOB NOT NULL,
    nfiles INTEGER NOT NULL
);
"""


_SMALL_RECORD = struct.Struct("<32s32sII")  # content ID, bundle blob ID, offset, length


@dataclass(frozen=True, slots=True)
class CachedDir:
    own_sig: bytes
    full_sig: bytes
    tree_id: bytes
    refs: frozenset[bytes]
    nfiles: int


def cache_root() -> Path:
    env = os.environ.get("STRONGROOM_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs  # ~8 ms: only when the platform's folder is needed

    return Path(platformdirs.user_cache_dir("strongroom", appauthor=False))


class LocalCache:
    def __init__(self, repo_id: str, paths: list[str], root: Path | None = None) -> None:
        key = blake3.blake3("\0".join(sorted(paths)).encode("utf-8", "surrogatepass")).hexdigest()
        base = root or cache_root()
        # The repository ID comes from the server: only its hash names a folder, so no value it
        # sends can point the cache (and the chmod below) anywhere but inside `base`.
        folder = base / _folder_name(repo_id)
        # Plain file names live here: the cache is private to the user (0700 / 0600). The base
        # folder may be the user's choice (STRONGROOM_CACHE_DIR=/tmp): created private, never
        # changed.
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_dir(folder)
        self.path = folder / f"{key[:24]}.sqlite"
        _private_file(self.path)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError:
            # A damaged cache only costs speed: start over.
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._db = self._open()
        self._lock = threading.Lock()
        self._small_path = folder / f"{key[:24]}.small"
        _private_file(self._small_path)
        self._small: dict[bytes, tuple[bytes, int, int]] | None = None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a lost cache update costs speed, not data
        db.executescript(_SCHEMA)
        return db

    def snapshot_id(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name='snapshot'").fetchone()
        return None if row is None else str(row[0])

    def attrs_complete(self) -> bool:
        """True if the cached snapshot was made by a backup that records extended attributes
        and file flags: only then may its entries' attributes be reused for unchanged files
        (older versions stored none, and their entries say nothing about them)."""
        row = self._db.execute("SELECT value FROM meta WHERE name='attrs'").fetchone()
        return row is not None and row[0] == self.snapshot_id()

    def load_dirs(self) -> dict[str, CachedDir]:
        out: dict[str, CachedDir] = {}
        for path, own, full, tree_id, refs, nfiles in self._db.execute(
            "SELECT path, own_sig, full_sig, tree_id, refs, nfiles FROM dirs2"
        ):
            raw = bytes(refs)
            ids = frozenset(raw[i : i + 32] for i in range(0, len(raw), 32))
            out[_path_str(path)] = CachedDir(bytes(own), bytes(full), bytes(tree_id), ids, nfiles)
        return out

    def save(
        self, snapshot_id: str, dirs: dict[str, CachedDir], previous: dict[str, CachedDir] | None
    ) -> None:
        """Write only what differs from the cache we loaded: an unchanged tree writes nothing.

        previous=None means the stored rows are not what we loaded: rewrite everything.
        """
        with self._lock, self._db:
            if previous is None:
                self._db.execute("DELETE FROM dirs2")
                previous = {}
            self._db.executemany(
                "DELETE FROM dirs2 WHERE path=?",
                ((_path_key(p),) for p in previous.keys() - dirs.keys()),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO dirs2(path, own_sig, full_sig, tree_id, refs, nfiles) "
                "VALUES(?, ?, ?, ?, ?, ?)",
                (
                    (
                        _path_key(p),
                        d.own_sig,
                        d.full_sig,
                        d.tree_id,
                        b"".join(sorted(d.refs)),
                        d.nfiles,
                    )
                    for p, d in dirs.items()
                    if previous.get(p) != d
                ),
            )
            self._db.executemany(
                "INSERT INTO meta(name, value) VALUES(?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (("snapshot", snapshot_id), ("attrs", snapshot_id)),
            )

    # Small-file map: an append-only file of fixed records, because inserting ~100,000 random
    # keys into SQLite costs seconds while appending them costs milliseconds.

    def has_small(self) -> bool:
        return self._small_path.exists() and self._small_path.stat().st_size >= _SMALL_RECORD.size

    def all_small(self) -> dict[bytes, tuple[bytes, int, int]]:
        with self._lock:
            if self._small is None:
                self._small = self._load_small()
            return self._small

    def _load_small(self) -> dict[bytes, tuple[bytes, int, int]]:
        try:
            raw = self._small_path.read_bytes()
        except OSError:
            return {}
        whole = len(raw) - len(raw) % _SMALL_RECORD.size  # a torn last record is ignored
        return {
            cid: (blob_id, offset, length)
            for cid, blob_id, offset, length in _SMALL_RECORD.iter_unpack(memoryview(raw)[:whole])
        }

    def add_small(self, data: bytes) -> None:
        """Append packed records (see small_record). Entries whose bundle never reached the
        repository are harmless: lookups keep only blobs the repository has."""
        if not data:
            return
        with self._lock, open(self._small_path, "ab") as fh:
            # Align first: a record torn by a crash must not shift every later record.
            misaligned = fh.tell() % _SMALL_RECORD.size
            if misaligned:
                fh.truncate(fh.tell() - misaligned)
                fh.seek(0, os.SEEK_END)
            fh.write(data)

    def close(self) -> None:
        self._db.close()


def small_record(cid: bytes, blob_id: bytes, offset: int, length: int) -> bytes:
    """One record of the small-file map (content ID, bundle, offset, length)."""
    return _SMALL_RECORD.pack(cid, blob_id, offset, length)


def _folder_name(repo_id: str) -> str:
    """A repository's cache folder: its ID when that is plain hex (every strongroom repository
    and server account), else a hash of it."""
    if 16 <= len(repo_id) <= 64 and all(c in "0123456789abcdef" for c in repo_id):
        return repo_id
    return "x" + blake3.blake3(repo_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _private_dir(path: Path) -> None:
    """Create with mode 0700, or tighten an older cache folder this user owns."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)


def _private_file(path: Path) -> None:
    """Create empty with mode 0600 (SQLite gives its -wal and -shm files the database's mode),
    or tighten an existing one."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o600))
    _tighten(path, 0o600)


def _tighten(path: Path, mode: int) -> None:
    if os.name == "nt":  # Windows: the user profile's ACLs already make it private
        return
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 & ~mode:
            os.chmod(path, mode)


_O_BINARY = getattr(os, "O_BINARY", 0)


def _path_key(path: str) -> bytes:
    """Paths may hold surrogate escapes of non-UTF-8 bytes, which SQLite text cannot store."""
    return path.encode("utf-8", "surrogatepass")


def _path_str(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "surrogatepass")
