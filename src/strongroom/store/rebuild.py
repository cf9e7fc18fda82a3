"""Rebuild a store's blob index from its pack objects' trailers (`strongroom-admin
rebuild-index`), without any key.

Every object that no index row names and that no writer has pending is read: its trailer
(store/trailer.py) lists its blobs. The whole object is checked against its name (the BLAKE3 of
its bytes) and each blob against its checksum before anything is indexed; then, in one
transaction per pack that re-checks that the object still exists (deletions happen only under
the same lock), the pack and those of its blobs the index lacks are inserted. Blobs already
indexed elsewhere keep their place; an object that holds nothing else (an old pack GC replaced
but did not get to delete, a duplicate) is deleted instead (scale-out leftover cleanup never
deletes an object no row explains: it may be what a restored database forgot). Blobs no
snapshot references come back as unreferenced, for the next GC. Indexed packs whose object is
gone are reported, not removed (their snapshots are damaged: scrub names them). Snapshots and
manifests live only in the database: back it up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import blake3

from ..crypto import content_checksum
from . import trailer
from .objects import PackMissing
from .packstore import PackStore

_TAIL_GUESS = 64 * 1024  # one read gets the trailer of most packs


@dataclass
class RebuildReport:
    objects: int = 0  # pack objects in the store
    indexed_before: int = 0
    packs_added: int = 0
    blobs_added: int = 0
    without_trailer: list[str] = field(default_factory=list)  # written before trailers
    damaged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # indexed, but the object is gone
    removed: int = 0  # unindexed objects holding nothing the index lacks
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.missing)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def rebuild_index(
    store: PackStore,
    *,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RebuildReport:
    """Index what the objects hold and the index lacks; see the module's docstring. Runs under
    the store's GC lock, so no GC moves blobs meanwhile; backups may continue."""
    report = RebuildReport(dry_run=dry_run)
    with store.gc_lock():
        indexed = store.packs()
        report.indexed_before = len(indexed)
        names = sorted(store.objects.names())
        report.objects = len(names)
        present = set(names)
        report.missing = sorted(n for n in indexed if n not in present and store.has_pack(n))
        pending = {str(r[0]) for r in store.query("SELECT name FROM pending_packs")}
        for name in names:
            if name in indexed or name in pending:
                continue
            entries = _read_pack(store, name, report)
            if entries is None:
                continue
            if progress is not None:
                progress(name)
            if dry_run:
                report.packs_added += 1
                report.blobs_added += len(entries)
                continue
            _adopt(store, name, entries, report)
    return report


def _read_pack(
    store: PackStore, name: str, report: RebuildReport
) -> list[trailer.TrailerEntry] | None:
    try:
        _size, tail = store.objects.tail(name, _TAIL_GUESS)
        length = trailer.footer_length(tail)
        if length is None:
            report.without_trailer.append(name)
            return None
        data = store.objects.read_all(name)
    except PackMissing:
        return None  # deleted meanwhile (leftover cleanup): nothing to adopt
    try:
        if blake3.blake3(data).hexdigest() != name:
            raise ValueError("it does not match its content hash")
        entries = trailer.decode(data, len(data))
        assert entries is not None  # the footer was there
        for e in entries:
            if content_checksum(data[e.offset : e.offset + e.length]) != e.checksum:
                raise ValueError(f"blob {e.blob_id.hex()[:16]} fails its checksum")
    except ValueError as exc:
        report.damaged.append(f"pack {name[:16]}: {exc}")
        return None
    return entries


def _adopt(
    store: PackStore, name: str, entries: list[trailer.TrailerEntry], report: RebuildReport
) -> None:
    with store.transaction() as tx:
        size = store.objects.size(name)
        if size is None:
            return  # removed by cleanup before this transaction took the store's lock
        if tx.execute("SELECT 1 FROM packs WHERE name = ?", (name,)).fetchone() is not None:
            return  # a writer indexed it meanwhile
        new = [
            e
            for e in entries
            if tx.execute("SELECT 1 FROM blobs WHERE blob_id = ?", (e.blob_id,)).fetchone() is None
        ]
        if not new:  # only blobs indexed elsewhere (an old pack GC replaced, a duplicate)
            report.removed += len(store.delete_unused(tx, [name]))
            return
        pack_id = tx.execute(
            "INSERT INTO packs(name, size, created_ns) VALUES(?, ?, ?) RETURNING id",
            (name, size, tx.now_ns()),
        ).scalar()
        tx.executemany(
            'INSERT INTO blobs(blob_id, type, pack, "offset", length, checksum) '
            "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(e.blob_id, e.type, pack_id, e.offset, e.length, e.checksum) for e in new],
        )
    report.packs_added += 1
    report.blobs_added += len(new)
