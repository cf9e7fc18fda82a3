"""Copy one store into another, without any key: the storage half of `strongroom-admin
migrate` (an embedded data folder into PostgreSQL + S3).

Packs are copied one by one, their bytes checked against their name and every blob against its
checksum on the way; the destination writes them through its own write path (pending row,
durable object, then index rows in one transaction), with a trailer if it uses them: blob
offsets stay the same, the name changes with the bytes. A pack whose blobs the destination all
has is skipped, so a copy that was killed resumes where it stopped (what the killed run had
written but not indexed is a leftover the destination cleans up later). Snapshots are
committed afterwards with their manifests, received times and protection, skipping those the
destination has; a commit still refuses a manifest with a blob the destination lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import blake3

from ..crypto import content_checksum
from ..errors import IntegrityError
from .packstore import PackStore
from .trailer import TrailerEntry


@dataclass
class CopyReport:
    packs: int = 0
    packs_copied: int = 0
    blobs_copied: int = 0
    bytes_copied: int = 0
    snapshots: int = 0
    snapshots_copied: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def copy_store(
    src: PackStore, dst: PackStore, *, progress: Callable[[str], None] | None = None
) -> CopyReport:
    """Copy `src` (read-only is enough) into `dst` (a writer); see the module's docstring."""
    report = CopyReport()
    for name, value in src.query("SELECT name, value FROM meta WHERE name != 'schema'"):
        if dst.get_meta(str(name)) is None:
            dst.set_meta(str(name), bytes(value))
    by_pack: dict[str, list[TrailerEntry]] = {}
    for loc in src.iter_index():
        by_pack.setdefault(loc.pack, []).append(
            TrailerEntry(loc.blob_id, loc.type, loc.offset, loc.length, loc.checksum)
        )
    report.packs = len(by_pack)
    for name, entries in sorted(by_pack.items()):
        ids = [e.blob_id for e in entries]
        if not set(ids) - dst.stored(ids):
            continue  # copied by an earlier run
        data = src.objects.read_all(name)
        if blake3.blake3(data).hexdigest() != name:
            raise IntegrityError(f"pack {name[:16]} does not match its content hash; run scrub")
        for e in entries:
            if content_checksum(data[e.offset : e.offset + e.length]) != e.checksum:
                raise IntegrityError(f"blob {e.blob_id.hex()[:16]} in pack {name[:16]} is damaged")
        end = max(e.offset + e.length for e in entries)
        dst.index_object(dst.write_object([data[:end]], entries), entries)
        report.packs_copied += 1
        report.blobs_copied += len(entries)
        report.bytes_copied += end
        if progress is not None:
            progress(name)
    have = {row.snap_id for row in dst.list_snapshots()}
    snapshots = src.list_snapshots()
    report.snapshots = len(snapshots)
    for row in snapshots:
        if row.snap_id in have:
            continue
        manifest = src.snapshot_manifest(row.snap_id)
        dst.commit_snapshot(
            row.snap_id, row.time_ns, row.record, manifest, row.series, received_ns=row.received_ns
        )
        if row.protected:
            dst.set_protected(row.snap_id, True)
        report.snapshots_copied += 1
    return report
