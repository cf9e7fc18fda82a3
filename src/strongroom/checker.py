"""check: is every snapshot complete and, with --read-data, is every stored byte intact?"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import tree
from .blobs import BlobCodec
from .errors import IntegrityError, StrongroomError
from .repository import Repository
from .snapshot import Snapshot, open_snapshot


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
    repo: Repository, *, read_data: bool, progress: Callable[[int], None] | None = None
) -> CheckReport:
    """Works the same on a local repository and on a server (where the storage checks run on
    the server and --read-data streams every blob here to be decrypted and verified)."""
    report = CheckReport()
    aead = repo.keys.aead()
    # Snapshots first: one committed after this point references only blobs indexed before its
    # commit, so reading the index second never makes a concurrent backup look damaged.
    snapshot_rows = repo.snapshot_rows()
    index = repo.known_blob_ids()
    report.errors.extend(repo.storage_problems())

    if read_data:
        codec = repo.codecs.get()
        # Blobs arrive in storage order: each pack is read front to back.
        for bid, intact, data in repo.iter_all_blobs():
            if not intact or not _decodes(codec, bid, data):
                report.damaged_blobs.add(bid)
                report.errors.append(f"blob {bid.hex()[:16]} is damaged")
            report.blobs_read += 1
            if progress is not None:
                progress(len(data))

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
        manifest = repo.snapshot_manifest(snap.id)
        missing = referenced - manifest
        if missing:
            report.errors.append(
                f"snapshot {snap.short_id}: {len(missing)} referenced blob(s) not in its manifest"
            )
        if referenced & report.damaged_blobs:
            report.affected_snapshots.add(snap.id)
    report.trees = len(seen_trees)
    return report


def _decodes(codec: BlobCodec, blob_id: bytes, data: bytes) -> bool:
    try:
        codec.decode(blob_id, data)
    except StrongroomError:
        return False
    return True


TREES_PER_READ = 256  # trees of one level fetched with one request (one ranged GET per pack run)


def _referenced(
    repo: Repository,
    root: bytes,
    index: set[bytes],
    seen: dict[bytes, tuple[set[bytes], list[bytes]]],
    report: CheckReport,
    snap: Snapshot,
) -> set[bytes]:
    """All blob IDs reachable from a root tree, reporting missing or unreadable ones. Trees
    are read a level at a time, many per request: on a server whose packs are objects in S3
    one round trip per tree cost ~50 ms each."""
    out: set[bytes] = set()
    frontier = [root]
    codec = repo.codecs.get()
    while frontier:
        wanted: list[bytes] = []
        following: list[bytes] = []
        for tid in frontier:
            out.add(tid)
            if tid in seen:
                contents, subtrees = seen[tid]
                out |= contents
                following.extend(subtrees)
                continue
            seen[tid] = (set(), [])
            if tid not in index:
                report.errors.append(f"snapshot {snap.short_id}: tree {tid.hex()[:16]} is missing")
                continue
            wanted.append(tid)
        for tid, raw in _read_trees(repo, wanted, report, snap):
            children, subs = seen[tid]
            try:
                nodes = tree.decode_tree(codec.decode(tid, raw))
            except StrongroomError as exc:
                report.errors.append(f"snapshot {snap.short_id}: {exc}")
                report.damaged_blobs.add(tid)
                continue
            for node in nodes:
                for ref in node.content:
                    children.add(ref.blob_id)
                    if ref.blob_id not in index:
                        report.errors.append(
                            f"snapshot {snap.short_id}: data blob {ref.blob_id.hex()[:16]} "
                            "is missing"
                        )
                if node.subtree is not None:
                    subs.append(node.subtree)
                    following.append(node.subtree)
            out |= children
        frontier = following
    return out


def _read_trees(
    repo: Repository, ids: list[bytes], report: CheckReport, snap: Snapshot
) -> Iterator[tuple[bytes, bytes]]:
    """The stored bytes of these trees, many per request; a batch that fails is read again
    one tree at a time, so that each unreadable tree is named."""
    for i in range(0, len(ids), TREES_PER_READ):
        batch = ids[i : i + TREES_PER_READ]
        try:
            got = dict(repo.read_blobs(batch))
        except StrongroomError:
            got = {}
        for tid in batch:
            raw = got.get(tid)
            if raw is None:
                try:
                    raw = _read_one(repo, tid)
                except StrongroomError as exc:
                    report.errors.append(f"snapshot {snap.short_id}: {exc}")
                    report.damaged_blobs.add(tid)
                    continue
            yield tid, raw


def _read_one(repo: Repository, blob_id: bytes) -> bytes:
    for _bid, data in repo.read_blobs([blob_id]):
        return data
    raise IntegrityError(f"blob {blob_id.hex()[:16]} is missing from the repository")
