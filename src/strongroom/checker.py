"""check: is every snapshot complete and, with --read-data, is every stored byte intact?"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from . import tree
from .blobs import BlobCodec
from .errors import StrongroomError
from .repository import LocalRepository
from .snapshot import Snapshot, open_snapshot
from .store import BlobLocation, PackStore


@dataclass
class CheckReport:
    snapshots: int = 0
    trees: int = 0
    blobs_read: int = 0
    errors: list[str] = field(default_factory=list)
    damaged_blobs: set[bytes] = field(default_factory=set)
    affected_snapshots: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.errors


def check(
    repo: LocalRepository, *, read_data: bool, progress: Callable[[int], None] | None = None
) -> CheckReport:
    report = CheckReport()
    store = repo.store
    aead = repo.keys.aead()
    # Snapshots first: one committed after this point references only blobs indexed before its
    # commit, so reading the index second never makes a concurrent backup look damaged.
    snapshot_rows = store.list_snapshots()
    index = {loc.blob_id: loc for loc in store.iter_index()}
    packs = store.packs()

    for name, size in packs.items():
        path = store.pack_path(name)
        try:
            actual = os.stat(path).st_size
        except FileNotFoundError:
            report.errors.append(f"pack {name[:16]} is missing")
            continue
        if actual != size:
            report.errors.append(f"pack {name[:16]} has size {actual}, index says {size}")

    if read_data:
        codec = repo.codecs.get()
        # iter_index yields in (pack, offset) order: each pack is read front to back.
        for loc in index.values():
            if not _verify_blob(store, codec, loc):
                report.damaged_blobs.add(loc.blob_id)
                report.errors.append(
                    f"blob {loc.blob_id.hex()[:16]} in pack {loc.pack[:16]} is damaged"
                )
            report.blobs_read += 1
            if progress is not None:
                progress(loc.length)

    snapshots: list[Snapshot] = []
    for row in snapshot_rows:
        try:
            snapshots.append(open_snapshot(aead, row))
        except StrongroomError as exc:
            report.errors.append(str(exc))
    report.snapshots = len(snapshots)

    seen_trees: dict[bytes, tuple[set[bytes], list[bytes]]] = {}
    for snap in snapshots:
        referenced = _referenced(repo, bytes.fromhex(snap.tree), index, seen_trees, report, snap)
        manifest = store.snapshot_manifest(snap.id)
        missing = referenced - manifest
        if missing:
            report.errors.append(
                f"snapshot {snap.short_id}: {len(missing)} referenced blob(s) not in its manifest"
            )
        if referenced & report.damaged_blobs:
            report.affected_snapshots.add(snap.id)
    report.trees = len(seen_trees)
    return report


def _verify_blob(store: PackStore, codec: BlobCodec, loc: BlobLocation) -> bool:
    try:
        for bid, data in store.read_locations([loc]):
            codec.decode(bid, data)
    except (StrongroomError, OSError):
        return False
    return True


def _referenced(
    repo: LocalRepository,
    root: bytes,
    index: dict[bytes, BlobLocation],
    seen: dict[bytes, tuple[set[bytes], list[bytes]]],
    report: CheckReport,
    snap: Snapshot,
) -> set[bytes]:
    """All blob IDs reachable from a root tree, reporting missing or unreadable ones."""
    out: set[bytes] = set()
    stack = [root]
    codec = repo.codecs.get()
    while stack:
        tid = stack.pop()
        out.add(tid)
        if tid in seen:
            contents, subtrees = seen[tid]
            out |= contents
            stack.extend(subtrees)
            continue
        children: set[bytes] = set()
        subs: list[bytes] = []
        seen[tid] = (children, subs)
        loc = index.get(tid)
        if loc is None:
            report.errors.append(f"snapshot {snap.short_id}: tree {tid.hex()[:16]} is missing")
            continue
        try:
            nodes = tree.decode_tree(codec.decode(tid, repo.store.read_blob(tid)))
        except StrongroomError as exc:
            report.errors.append(f"snapshot {snap.short_id}: {exc}")
            report.damaged_blobs.add(tid)
            continue
        for node in nodes:
            for ref in node.content:
                children.add(ref.blob_id)
                if ref.blob_id not in index:
                    report.errors.append(
                        f"snapshot {snap.short_id}: data blob {ref.blob_id.hex()[:16]} is missing"
                    )
            if node.subtree is not None:
                subs.append(node.subtree)
                stack.append(node.subtree)
        out |= children
    return out
