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
import threading
from dataclasses import dataclass
from pathlib import Path

import blake3
import platformdirs

from .tree import ContentRef

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dirs(
    path TEXT PRIMARY KEY,
    own_sig BLOB NOT NULL,
    full_sig BLOB NOT NULL,
    tree_id BLOB NOT NULL,
    refs BLOB NOT NULL,
    nfiles INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS small(
    cid BLOB PRIMARY KEY,
    blob_id BLOB NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class CachedDir:
    own_sig: bytes
    full_sig: bytes
    tree_id: bytes
    refs: frozenset[bytes]
    nfiles: int


def cache_root() -> Path:
    env = os.environ.get("STRONGROOM_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("strongroom", appauthor=False))


class LocalCache:
    def __init__(self, repo_id: str, paths: list[str], root: Path | None = None) -> None:
        key = blake3.blake3("\0".join(sorted(paths)).encode("utf-8", "surrogatepass")).hexdigest()
        folder = (root or cache_root()) / repo_id
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{key[:24]}.sqlite"
        try:
            self._db = self._open()
        except sqlite3.DatabaseError:
            # A damaged cache only costs speed: start over.
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._db = self._open()
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a lost cache update costs speed, not data
        db.executescript(_SCHEMA)
        return db

    def snapshot_id(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name='snapshot'").fetchone()
        return None if row is None else str(row[0])

    def load_dirs(self) -> dict[str, CachedDir]:
        out: dict[str, CachedDir] = {}
        for path, own, full, tree_id, refs, nfiles in self._db.execute(
            "SELECT path, own_sig, full_sig, tree_id, refs, nfiles FROM dirs"
        ):
            raw = bytes(refs)
            ids = frozenset(raw[i : i + 32] for i in range(0, len(raw), 32))
            out[path] = CachedDir(bytes(own), bytes(full), bytes(tree_id), ids, nfiles)
        return out

    def save(
        self, snapshot_id: str, dirs: dict[str, CachedDir], previous: dict[str, CachedDir] | None
    ) -> None:
        """Write only what differs from the cache we loaded: an unchanged tree writes nothing.

        previous=None means the stored rows are not what we loaded: rewrite everything.
        """
        with self._lock, self._db:
            if previous is None:
                self._db.execute("DELETE FROM dirs")
                previous = {}
            self._db.executemany(
                "DELETE FROM dirs WHERE path=?", ((p,) for p in previous.keys() - dirs.keys())
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO dirs(path, own_sig, full_sig, tree_id, refs, nfiles) "
                "VALUES(?, ?, ?, ?, ?, ?)",
                (
                    (p, d.own_sig, d.full_sig, d.tree_id, b"".join(sorted(d.refs)), d.nfiles)
                    for p, d in dirs.items()
                    if previous.get(p) != d
                ),
            )
            self._db.execute(
                "INSERT INTO meta(name, value) VALUES('snapshot', ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (snapshot_id,),
            )

    def lookup_small(self, cid: bytes) -> ContentRef | None:
        with self._lock:
            row = self._db.execute(
                "SELECT blob_id, offset, length FROM small WHERE cid=?", (cid,)
            ).fetchone()
        return None if row is None else ContentRef(bytes(row[0]), row[1], row[2])

    def add_small(self, entries: list[tuple[bytes, ContentRef]]) -> None:
        if not entries:
            return
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO small(cid, blob_id, offset, length) VALUES(?, ?, ?, ?)",
                ((cid, r.blob_id, r.offset, r.length) for cid, r in entries),
            )

    def close(self) -> None:
        self._db.close()
