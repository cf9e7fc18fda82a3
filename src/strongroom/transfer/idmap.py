"""Which destination blob ID each source blob ID became, remembered across copies.

With different ID keys a blob's destination ID is the destination's keyed hash of its
plaintext, so it can only be learned by reading and decrypting the source blob. This map,
kept in the client's cache folder, lets a later (or resumed) copy skip reading blobs it
already copied. The mapping is a function of the two ID keys alone, so the file is named by a
keyed hash of both: it is never applied to another pair of repositories' keys, and its name
and contents (pairs of keyed hashes) say nothing without the keys. Losing it costs reading
the source again, never data: a mapped blob is used only if the destination still has it.

The same connection holds, in a temporary table (a file SQLite deletes itself), the source
trees a copy has read and has yet to rewrite, so they are not held in memory.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import blake3

from ..cache import _private_dir, _private_file, cache_root

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idmap(src BLOB PRIMARY KEY, dst BLOB NOT NULL) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS trees(src BLOB PRIMARY KEY, raw BLOB NOT NULL) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS probe(src BLOB PRIMARY KEY) WITHOUT ROWID;
"""


def map_name(src_id_key: bytes, dst_id_key: bytes) -> str:
    return blake3.blake3(b"strongroom v1 copy map\0" + dst_id_key, key=src_id_key).hexdigest()[:32]


class IdMap:
    def __init__(self, src_id_key: bytes, dst_id_key: bytes, root: Path | None = None) -> None:
        base = (root or cache_root()) / "copy"
        (root or cache_root()).mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_dir(base)
        self.path = base / f"{map_name(src_id_key, dst_id_key)}.sqlite"
        _private_file(self.path)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError:  # a damaged map only costs reading the source again
            with contextlib.suppress(OSError):
                self.path.unlink()
            _private_file(self.path)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        # Autocommit: the temporary tables need no transaction; `record` makes its own.
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a lost entry costs a read, not data
        db.executescript(_SCHEMA)
        return db

    def lookup(self, src_ids: Iterable[bytes]) -> dict[bytes, bytes]:
        """The known destination IDs of these source IDs (a temporary table, no long IN list)."""
        with self._transaction():
            self._db.execute("DELETE FROM temp.probe")
            self._db.executemany(
                "INSERT OR IGNORE INTO temp.probe(src) VALUES(?)", ((b,) for b in src_ids)
            )
            rows = self._db.execute(
                "SELECT m.src, m.dst FROM temp.probe p JOIN idmap m ON m.src = p.src"
            ).fetchall()
            self._db.execute("DELETE FROM temp.probe")
        return {bytes(s): bytes(d) for s, d in rows}

    def record(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO idmap(src, dst) VALUES(?, ?)", pairs)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- trees read but not yet rewritten (temporary) ---------------------------------------

    def keep_tree(self, src_id: bytes, raw: bytes) -> None:
        self._db.execute("INSERT OR IGNORE INTO temp.trees(src, raw) VALUES(?, ?)", (src_id, raw))

    def tree(self, src_id: bytes) -> bytes | None:
        row = self._db.execute("SELECT raw FROM temp.trees WHERE src = ?", (src_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def kept_trees(self) -> Iterator[bytes]:
        for (src,) in self._db.execute("SELECT src FROM temp.trees"):
            yield bytes(src)

    def forget_trees(self) -> None:
        self._db.execute("DELETE FROM temp.trees")

    def close(self) -> None:
        self._db.close()
