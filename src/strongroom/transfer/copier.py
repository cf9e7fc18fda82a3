"""Copy snapshots from one repository to another, both opened with their own keys.

Snapshots keep their IDs, times, tags and everything else in their records; a snapshot whose
ID the destination already has is skipped. Blobs are decrypted and verified on this client
and sealed again under the destination's data key (the compressed, padded body is kept as it
is: nothing is re-chunked or re-compressed). When the two ID keys differ, every blob gets the
destination's keyed hash of its plaintext as its ID, so every tree that references blobs is
rewritten (its content references and subtree IDs) and hashed again, children first.

Per snapshot:
1. its manifest (the source's list of every blob it references) is compared with what the
   destination has: with equal ID keys directly, otherwise through the ID map (idmap.py);
2. its trees are walked from the root, in batched reads, skipping subtrees the destination
   already has; data blobs it lacks are streamed over as they are found, trees to rewrite are
   kept in a temporary table on disk;
3. the trees are rewritten children first and stored;
4. after a flush, the snapshot is committed with the destination's manifest: atomically, and
   only if every blob of it is stored there. A copy that is killed leaves blobs that the next
   run finds in the destination's index and does not send again.
Memory: the manifest and its mapping, the destination's set of blob IDs (as a backup holds),
and one batch of blobs in flight.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from .. import crypto, tree
from ..blobs import BlobType
from ..errors import IntegrityError
from ..repository import Repository
from ..snapshot import Snapshot, seal_snapshot, series_of
from .idmap import IdMap

READ_BATCH = 1024  # blob IDs per read request (the answer is streamed, not held)
TREE_BATCH = 256  # trees per read while walking
# ID-map rows are written every MAP_BATCH rows or MAP_BYTES of blobs read: a killed copy
# reads again at most about that much to learn IDs it had already learned.
MAP_BATCH = 4096
MAP_BYTES = 32 * 1024 * 1024
WORKERS = min(4, os.cpu_count() or 1)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class CopyStats:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    blobs_read: int = 0
    bytes_read: int = 0
    blobs_stored: int = 0
    bytes_stored: int = 0
    trees_rewritten: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "copied": self.copied,
            "skipped": self.skipped,
            "blobs_read": self.blobs_read,
            "bytes_read": self.bytes_read,
            "blobs_stored": self.blobs_stored,
            "bytes_stored": self.bytes_stored,
            "trees_rewritten": self.trees_rewritten,
        }


class Copier:
    def __init__(self, src: Repository, dst: Repository, idmap: IdMap | None = None) -> None:
        self.src = src
        self.dst = dst
        self.rewrite = not crypto.constant_time_equal(src.keys.id_key, dst.keys.id_key)
        self.reseal = not crypto.constant_time_equal(src.keys.data_key, dst.keys.data_key)
        if self.rewrite and idmap is None:
            raise ValueError("copying between different ID keys needs an ID map")
        self.idmap = idmap if self.rewrite else None
        self.stats = CopyStats()
        self._src_aead = src.keys.aead()
        self._dst_aead = dst.keys.aead()
        self._dst_hash = dst.keys.hasher()
        self._have = dst.known_blob_ids()
        self._new_pairs: list[tuple[bytes, bytes]] = []
        self._unsaved_bytes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="copy")

    # ---- one snapshot ---------------------------------------------------------------------

    def copy(self, snap: Snapshot, origin_repo: str) -> None:
        root = bytes.fromhex(snap.tree)
        manifest = self.src.snapshot_manifest(snap.id)
        if root not in manifest:
            raise IntegrityError(
                f"source snapshot {snap.short_id} is damaged: its manifest lacks its root tree "
                "(run 'strongroom check' on the source)"
            )
        dmap = self.idmap.lookup(manifest) if self.idmap is not None else {}
        if self.rewrite:
            ready = {s for s, d in dmap.items() if d in self._have}
        else:
            ready = manifest & self._have
        try:
            if not manifest <= ready:
                reached = self._walk(root, ready, dmap, prune=True)
                if not manifest <= ready | reached:
                    # Something the destination lacks below a subtree it has (say, GC took
                    # it from an interrupted copy): walk again, into every subtree.
                    reached |= self._walk(root, ready, dmap, prune=False)
                if not reached <= manifest:
                    raise IntegrityError(
                        f"source snapshot {snap.short_id} is damaged: it references blobs its "
                        "manifest does not list (run 'strongroom check' on the source)"
                    )
                if self.rewrite:
                    self._rewrite_trees(root, ready, dmap)
            self._save_pairs()
            # Blobs of the manifest that no tree reaches are not copied, nor listed.
            new_manifest = [self._dst_id(b, dmap) for b in manifest if b in ready]
            new_root = self._dst_id(root, dmap)
            origin = {"repo": origin_repo, "tree": snap.tree, "time_ns": time.time_ns()}
            record = seal_snapshot(
                self._dst_aead, replace(snap, tree=new_root.hex(), origin=origin)
            )
            series = series_of(self._dst_hash, snap.host, snap.paths)
            self.dst.flush()
            self.dst.commit_snapshot(
                snap.id, snap.time_ns, record, new_manifest, series, root=new_root
            )
        finally:
            if self.idmap is not None:
                self.idmap.forget_trees()
        self.stats.copied.append(snap.id)

    def _dst_id(self, src_id: bytes, dmap: dict[bytes, bytes]) -> bytes:
        return dmap[src_id] if self.rewrite else src_id

    # ---- walking the source's trees -------------------------------------------------------

    def _walk(
        self, root: bytes, ready: set[bytes], dmap: dict[bytes, bytes], *, prune: bool
    ) -> set[bytes]:
        """Read the trees below `root` (not those the destination has, with `prune`), copy
        the data blobs they reference that it lacks, and store or keep the trees; returns
        every blob ID reached."""
        seen = {root}
        frontier = [root]
        data: list[bytes] = []
        codec = self.src.codecs.get()
        while frontier:
            # Last in, first out: the list of trees still to read stays short (depth-first).
            batch = frontier[-TREE_BATCH:]
            del frontier[-TREE_BATCH:]
            wanted = [t for t in batch if not (prune and t in ready)]
            for tid, stored in self.src.read_blobs(wanted):
                self._count_read(stored)
                raw = codec.decode(tid, stored)
                for node in tree.decode_tree(raw):
                    for ref in node.content:
                        if ref.blob_id not in seen:
                            seen.add(ref.blob_id)
                            if ref.blob_id not in ready:
                                data.append(ref.blob_id)
                    if node.subtree is not None and node.subtree not in seen:
                        seen.add(node.subtree)
                        frontier.append(node.subtree)
                if tid not in ready:
                    if self.rewrite:
                        self.idmap.keep_tree(tid, raw)  # type: ignore[union-attr]
                    else:
                        self._store(tid, BlobType.TREE, self._reseal(tid, stored))
                        ready.add(tid)
                if len(data) >= READ_BATCH:
                    self._copy_data(data, ready, dmap)
                    data = []
        self._copy_data(data, ready, dmap)
        return seen

    def _copy_data(self, ids: list[bytes], ready: set[bytes], dmap: dict[bytes, bytes]) -> None:
        """Stream these blobs over: decrypted, checked, sealed again and stored on worker
        threads (AES-GCM, BLAKE3 and zstd release the interpreter lock), in order, with at
        most WORKERS * 2 blobs in flight."""
        if not ids:
            return
        for sid, did, size in ordered_map(self._pool, self._convert, self.src.read_blobs(ids)):
            if self.rewrite:
                dmap[sid] = did
                self._remember(sid, did, size)
            ready.add(sid)
        self._save_pairs()  # a copy killed now need not read these again

    def _convert(self, item: tuple[bytes, bytes]) -> tuple[bytes, bytes, int]:
        sid, stored = item
        self._count_read(stored)
        codec = self.src.codecs.get()
        body = codec.open_body(sid, stored)
        plain = codec.plaintext(sid, body)  # the padding and the ID checked too
        did = self._dst_hash(plain) if self.rewrite else sid
        if self.reseal or did != sid:
            stored = crypto.seal(self._dst_aead, body, did)
        self._store(did, BlobType.DATA, stored)
        return sid, did, len(stored)

    # ---- rewriting trees children first ---------------------------------------------------

    def _rewrite_trees(self, root: bytes, ready: set[bytes], dmap: dict[bytes, bytes]) -> None:
        assert self.idmap is not None
        codec = self.dst.codecs.get()
        stack: list[tuple[bytes, bool]] = [(root, False)]
        while stack:
            tid, children_done = stack.pop()
            if tid in ready:
                continue
            raw = self.idmap.tree(tid)
            if raw is None:
                raise IntegrityError(f"tree {tid.hex()[:16]} was not read from the source")
            if not children_done:
                stack.append((tid, True))
                stack.extend(
                    (n.subtree, False)
                    for n in tree.decode_tree(raw)
                    if n.subtree is not None and n.subtree not in ready
                )
                continue
            new_raw = rewrite_tree(raw, dmap.__getitem__)
            did = self._dst_hash(new_raw)
            dmap[tid] = did
            self._remember(tid, did)
            if did not in self._have:
                self._store(did, BlobType.TREE, codec.encode(did, new_raw))
            ready.add(tid)
            self.stats.trees_rewritten += 1

    # ---- storing --------------------------------------------------------------------------

    def _reseal(self, sid: bytes, stored: bytes) -> bytes:
        """A tree's stored form under the destination's data key (same ID, same body)."""
        if not self.reseal:
            return stored
        body = crypto.unseal(self._src_aead, stored, sid, f"blob {sid.hex()[:16]}")
        return crypto.seal(self._dst_aead, body, sid)

    def _store(self, did: bytes, blob_type: int, stored: bytes) -> None:
        with self._lock:
            if did in self._have:
                return
            self._have.add(did)
            self.stats.blobs_stored += 1
            self.stats.bytes_stored += len(stored)
        self.dst.add_blob(did, blob_type, stored)  # thread-safe (both kinds of repository)

    def _count_read(self, stored: bytes) -> None:
        with self._lock:
            self.stats.blobs_read += 1
            self.stats.bytes_read += len(stored)

    def close(self) -> None:
        self._pool.shutdown()

    def _remember(self, sid: bytes, did: bytes, size: int = 0) -> None:
        self._new_pairs.append((sid, did))
        self._unsaved_bytes += size
        if len(self._new_pairs) >= MAP_BATCH or self._unsaved_bytes >= MAP_BYTES:
            self._save_pairs()

    def _save_pairs(self) -> None:
        if self.idmap is not None and self._new_pairs:
            self.idmap.record(self._new_pairs)
        self._new_pairs = []
        self._unsaved_bytes = 0


def rewrite_tree(raw: bytes, new_id: Callable[[bytes], bytes]) -> bytes:
    """The same tree with every blob reference (file contents, subtrees) replaced by
    `new_id(old)`. Offsets, lengths, names and all other fields stay as they are; the key
    order and entry order are kept, so a canonical tree stays canonical."""
    tree.decode_tree(raw)  # the full validation, before anything is trusted
    doc = tree.loads(raw)
    for entry in doc["entries"]:
        if "content" in entry:
            entry["content"] = [
                [new_id(bytes.fromhex(ref[0])).hex(), ref[1], ref[2]] for ref in entry["content"]
            ]
        if "subtree" in entry:
            entry["subtree"] = new_id(bytes.fromhex(entry["subtree"])).hex()
    return tree.dumps(doc)


def ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], depth: int = WORKERS * 2
) -> Iterator[R]:
    """`pool.map` that takes from `items` only as results are used: at most `depth` in flight
    (the blobs of a stream are not all read ahead into memory)."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        for fut in pending:
            if not fut.cancelled():
                fut.exception()  # wait: nothing may still use the stream's data after us


def select(snapshots: Iterable[Snapshot], have: set[str]) -> tuple[list[Snapshot], list[str]]:
    """Oldest first (a parent before its children), and the IDs the destination has."""
    todo, skipped = [], []
    for snap in sorted(snapshots, key=lambda s: (s.time_ns, s.id)):
        (skipped.append(snap.id) if snap.id in have else todo.append(snap))
    return todo, skipped
