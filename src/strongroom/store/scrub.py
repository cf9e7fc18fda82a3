"""Scrub: verify every stored byte against its checksums, without any key.

Each pack object (a local file or an S3 object) is named by the BLAKE3 hash of its contents
and each blob's index row holds a checksum of its stored bytes, so bit rot, truncation and
tampering are found by reading the packs alone. Damaged blobs are mapped to the snapshots
that reference them (via the manifests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import blake3

from ..crypto import content_checksum
from .objects import PackMissing
from .packstore import PackStore


@dataclass
class ScrubReport:
    packs: int = 0
    blobs: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)
    damaged_blobs: set[bytes] = field(default_factory=set)
    affected_snapshots: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "packs": self.packs,
            "blobs": self.blobs,
            "bytes_read": self.bytes_read,
            "problems": self.problems,
            "damaged_blobs": sorted(b.hex() for b in self.damaged_blobs),
            "affected_snapshots": self.affected_snapshots,
        }


def scrub(store: PackStore) -> ScrubReport:
    report = ScrubReport()
    by_pack: dict[str, list[tuple[bytes, int, int, bytes]]] = {}
    for loc in store.iter_index():
        by_pack.setdefault(loc.pack, []).append((loc.blob_id, loc.offset, loc.length, loc.checksum))
    for name, size in sorted(store.packs().items()):
        report.packs += 1
        blobs = by_pack.get(name, [])
        report.blobs += len(blobs)
        try:
            data = store.objects.read_all(name)
        except PackMissing:
            if not store.has_pack(name):
                continue  # a concurrent GC removed it after the list was made
            report.problems.append(f"pack {name[:16]} is missing")
            report.damaged_blobs.update(b[0] for b in blobs)
            continue
        report.bytes_read += len(data)
        if len(data) != size:
            report.problems.append(f"pack {name[:16]} has size {len(data)}, index says {size}")
        elif blake3.blake3(data).hexdigest() != name:
            report.problems.append(f"pack {name[:16]} does not match its content hash")
        for blob_id, offset, length, checksum in blobs:
            piece = data[offset : offset + length]
            if len(piece) != length or content_checksum(piece) != checksum:
                report.damaged_blobs.add(blob_id)
                report.problems.append(f"blob {blob_id.hex()[:16]} in pack {name[:16]} is damaged")
    if report.damaged_blobs:
        report.affected_snapshots = affected_snapshots(store, report.damaged_blobs)
    return report


def affected_snapshots(store: PackStore, blob_ids: set[bytes]) -> list[str]:
    rows = store.query(
        "SELECT DISTINCT s.snap_id, b.blob_id FROM snapshot_blobs sb "
        "JOIN snapshots s ON s.id = sb.snapshot JOIN blobs b ON b.id = sb.blob"
    )
    return sorted({str(r[0]) for r in rows if bytes(r[1]) in blob_ids})
