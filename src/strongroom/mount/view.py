"""The mounted tree, answered for any path without FUSE: attributes, listings, reads, xattrs.

Paths are the ones FUSE hands over ("/snapshots/<time>/Documents/a.txt"). The top levels are
virtual (see layout.py); below `snapshots/<time>` every path is resolved through the
snapshot's trees, which are fetched once and kept decoded in a bounded LRU. Snapshot contents
never change, so only the top levels are refreshed: when they are listed or a snapshot name
is not known yet, at most once per `refresh_interval` seconds (once a second for a listing of
the root or of snapshots/).

Inode numbers are a hash of (snapshot, path), so they are stable for the life of the mount
and across mounts without a table that grows; entries of one hard-link group share one, and
their link count is counted over the snapshot the first time one of them is looked at.
Errors are OSError with the errno FUSE should answer; StrongroomError (lost server, damaged
blob) is left to the adapter, which answers EIO.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import itertools
import os
import stat
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from .. import sparse, tree
from ..errors import IntegrityError, StrongroomError
from ..snapshot import Snapshot, open_snapshot
from ..tree import ContentRef, Node
from .access import RepoAccess
from .blobsource import BlobSource
from .layout import TOP, Layout

REFRESH_INTERVAL = 5.0  # seconds between two looks at the snapshot list
LISTING_REFRESH = 1.0  # ... when the root or snapshots/ is listed
TREE_CACHE_ENTRIES = 200_000  # decoded directory entries kept in memory (~250 bytes each)
READAHEAD = 6  # blobs fetched ahead of a sequential reader
SEQUENTIAL_SLACK = 4 * 1024 * 1024
LINK_WALK_TREES = 100_000  # folders visited at most to count a snapshot's hard links
ROOT_INO = 1

TYPE_BITS = {
    tree.FILE: stat.S_IFREG,
    tree.DIR: stat.S_IFDIR,
    tree.SYMLINK: stat.S_IFLNK,
    tree.FIFO: stat.S_IFIFO,
    tree.SOCKET: stat.S_IFSOCK,
    tree.CHARDEV: stat.S_IFCHR,
    tree.BLOCKDEV: stat.S_IFBLK,
}


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    kind: str  # a tree.TYPES value
    mode: int  # permission bits
    size: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    nlink: int = 1
    rdev: int = 0
    stored: int = -1  # bytes that are data (a sparse file's size without its holes); -1: size

    @property
    def blocks(self) -> int:
        """512-byte blocks, as `du` counts them: holes take none."""
        return ((self.size if self.stored < 0 else self.stored) + 511) // 512

    @property
    def st_mode(self) -> int:
        return TYPE_BITS[self.kind] | self.mode


@dataclass(frozen=True, slots=True)
class Item:
    """A resolved path."""

    attr: Attr
    node: Node | None = None  # an entry inside a snapshot
    snap: Snapshot | None = None
    rel: str = ""  # its path inside the snapshot, without a leading '/'
    tree_id: bytes | None = None  # the listing of a folder inside a snapshot
    virtual: tuple[str, ...] | None = None  # a folder of the top levels: its path parts
    target: str | None = None  # a symlink's target


@dataclass(slots=True)
class OpenFile:
    refs: list[ContentRef]
    ends: list[int]  # where each ref's bytes end in the stored content
    size: int
    data: list[tuple[int, int, int]] | None = None  # a sparse file's data extents
    next_offset: int = 0  # where a sequential reader reads next
    lock: threading.Lock = field(default_factory=threading.Lock)


def _fail(code: int, path: str = "") -> NoReturn:
    raise OSError(code, os.strerror(code), path)


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _ino(*parts: str) -> int:
    digest = hashlib.blake2b(
        "\0".join(parts).encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    value = int.from_bytes(digest, "little") & ((1 << 63) - 1)
    return value if value > ROOT_INO else value + 2


def _link_key(node: Node) -> str:
    """Entries of one snapshot that are one file: same source inode, size and time."""
    return f"{node.hardlink}/{node.size}/{node.mtime_ns}"


def _data_extents(node: Node) -> list[tuple[int, int, int]] | None:
    """A sparse file's data as (offset in the file, length, offset in the stored content):
    the stored content is the data without the holes, in order. None without holes."""
    if not node.holes:
        return None
    out: list[tuple[int, int, int]] = []
    stored = 0
    for start, length in sparse.data_extents(node.holes, node.size):
        out.append((start, length, stored))
        stored += length
    return out


class SnapshotView:
    def __init__(
        self,
        access: RepoAccess,
        blobs: BlobSource,
        *,
        refresh_interval: float = REFRESH_INTERVAL,
        listing_refresh: float = LISTING_REFRESH,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.access = access
        self.blobs = blobs
        self.refresh_interval = refresh_interval
        self.listing_refresh = listing_refresh
        self.warn = warn or (lambda _msg: None)
        self.uid = os.getuid() if hasattr(os, "getuid") else 0
        self.gid = os.getgid() if hasattr(os, "getgid") else 0
        self.started_ns = time.time_ns()
        self._aead = access.repo.keys.aead()
        self._records: dict[str, Snapshot] = {}
        self._bad_records: set[str] = set()
        self._layout = Layout.build([])
        self._refreshed = float("-inf")
        self._refresh_lock = threading.Lock()
        self._trees: OrderedDict[bytes, dict[str, Node]] = OrderedDict()
        self._tree_entries = 0
        self._tree_lock = threading.Lock()
        self._links: dict[str, Counter[str]] = {}
        self._files: dict[int, OpenFile] = {}
        self._fh = itertools.count(1)
        self.refresh(0.0, strict=True)  # a mount that cannot list its snapshots does not start

    # ---- the snapshot list ------------------------------------------------------------------

    def refresh(self, max_age: float, *, strict: bool = False) -> Layout:
        """The current layout, read again when it is older than `max_age` seconds. A failure
        keeps the last list (and says so once per interval) unless `strict`."""
        if time.monotonic() - self._refreshed < max_age:
            return self._layout
        if not self._refresh_lock.acquire(blocking=strict):
            return self._layout  # another thread is reading it: use what we have
        try:
            if time.monotonic() - self._refreshed < max_age:
                return self._layout
            rows = self.access.snapshot_rows()
            snaps: list[Snapshot] = []
            for row in rows:
                snap = self._records.get(row.snap_id)
                if snap is None and row.snap_id not in self._bad_records:
                    try:
                        snap = open_snapshot(self._aead, row)
                    except StrongroomError as exc:
                        self._bad_records.add(row.snap_id)
                        self.warn(f"snapshot {row.snap_id[:8]} left out: {exc}")
                if snap is not None:
                    snaps.append(snap)
            self._records = {s.id: s for s in snaps}
            self._layout = Layout.build(snaps)
            self._links = {k: v for k, v in self._links.items() if k in self._records}
        except StrongroomError as exc:
            if strict:
                raise
            self.warn(f"could not refresh the snapshot list: {exc}")
        finally:
            self._refreshed = time.monotonic()
            self._refresh_lock.release()
        return self._layout

    # ---- paths ------------------------------------------------------------------------------

    def lookup(self, path: str) -> Item:
        parts = _split(path)
        if not parts:
            return self._virtual((), self.refresh(self.refresh_interval))
        top, depth = parts[0], len(parts)
        if top == "snapshots" and depth >= 2:
            layout = self.refresh(self.refresh_interval)
            if parts[1] not in layout.by_name:  # perhaps new: look again (rate-limited)
                layout = self.refresh(self.listing_refresh)
            snap = layout.by_name.get(parts[1])
            if snap is None:
                _fail(errno.ENOENT, path)
            return self._in_snapshot(snap, parts[2:], path)
        layout = self.refresh(self.refresh_interval)
        if top not in TOP or (top == "latest" and layout.latest is None):
            _fail(errno.ENOENT, path)
        if top == "latest":
            if depth > 1:
                _fail(errno.ENOTDIR, path)
            return self._symlink(parts, layout, f"snapshots/{layout.latest}")
        if depth == 1:
            return self._virtual((top,), layout)
        if top == "ids":
            name = layout.name_of.get(parts[1])
            if name is None:
                _fail(errno.ENOENT, path)
            if depth > 2:
                _fail(errno.ENOTDIR, path)
            return self._symlink(parts, layout, f"../snapshots/{name}")
        members = layout.groups.get(top, {}).get(parts[1])
        if members is None:
            _fail(errno.ENOENT, path)
        if depth == 2:
            return self._virtual((top, parts[1]), layout)
        if parts[2] not in members:
            _fail(errno.ENOENT, path)
        if depth > 3:
            _fail(errno.ENOTDIR, path)
        return self._symlink(parts, layout, f"../../snapshots/{parts[2]}")

    def _virtual(self, parts: tuple[str, ...], layout: Layout) -> Item:
        newest = layout.by_name[layout.latest].time_ns if layout.latest else self.started_ns
        ino = ROOT_INO if not parts else _ino("v", *parts)
        attr = Attr(ino, tree.DIR, 0o555, 0, self.uid, self.gid, newest, newest)
        return Item(attr, virtual=parts)

    def _symlink(self, parts: list[str], layout: Layout, target: str) -> Item:
        newest = layout.by_name[layout.latest].time_ns if layout.latest else self.started_ns
        size = len(os.fsencode(target))
        attr = Attr(_ino("v", *parts), tree.SYMLINK, 0o777, size, self.uid, self.gid, newest)
        return Item(attr, target=target)

    def _in_snapshot(self, snap: Snapshot, rest: list[str], path: str) -> Item:
        root = bytes.fromhex(snap.tree)
        if not rest:
            attr = Attr(
                _ino("s", snap.id),
                tree.DIR,
                0o555,
                0,
                self.uid,
                self.gid,
                snap.time_ns,
                snap.time_ns,
            )
            return Item(attr, snap=snap, tree_id=root)
        tree_id: bytes | None = root
        node: Node | None = None
        for name in rest:
            if node is not None:
                if node.type != tree.DIR:
                    _fail(errno.ENOTDIR, path)
                tree_id = node.subtree
            assert tree_id is not None  # a folder without a subtree fails to decode
            node = self._tree(tree_id).get(name)
            if node is None:
                _fail(errno.ENOENT, path)
        assert node is not None
        rel = "/".join(rest)
        return Item(self._node_attr(snap, rel, node), node, snap, rel, node.subtree)

    def _node_attr(self, snap: Snapshot, rel: str, node: Node) -> Attr:
        if node.hardlink is not None and node.type == tree.FILE:
            key = _link_key(node)
            ino, nlink = _ino("h", snap.id, key), self._link_count(snap, key)
        else:
            ino, nlink = _ino("n", snap.id, rel), 1
        size = node.size if node.type == tree.FILE else 0
        if node.type == tree.SYMLINK and node.target is not None:
            size = len(os.fsencode(node.target))
        return Attr(
            ino,
            node.type,
            stat.S_IMODE(node.mode),
            size,
            node.uid,
            node.gid,
            node.mtime_ns,
            node.ctime_ns,
            nlink,
            node.device,
            size - sum(length for _start, length in node.holes),
        )

    def getattr(self, path: str) -> Attr:
        return self.lookup(path).attr

    def listdir(self, path: str) -> list[tuple[str, int, int]]:
        """(name, st_mode, inode) of each entry of a folder."""
        item = self.lookup(path)
        if item.attr.kind != tree.DIR:
            _fail(errno.ENOTDIR, path)
        if item.virtual is None:
            assert item.snap is not None and item.tree_id is not None
            snap, prefix = item.snap, f"{item.rel}/" if item.rel else ""
            out = []
            for name, node in self._tree(item.tree_id).items():
                ino = (
                    _ino("h", snap.id, _link_key(node))
                    if node.hardlink is not None and node.type == tree.FILE
                    else _ino("n", snap.id, prefix + name)
                )
                out.append((name, TYPE_BITS[node.type] | stat.S_IMODE(node.mode), ino))
            return out
        parts = item.virtual
        layout = self.refresh(self.listing_refresh if len(parts) <= 1 else self.refresh_interval)
        dir_mode, link_mode = stat.S_IFDIR | 0o555, stat.S_IFLNK | 0o777
        if not parts:
            names = [t for t in TOP if t != "latest" or layout.latest is not None]
            modes = [link_mode if t == "latest" else dir_mode for t in names]
            return [(t, m, _ino("v", t)) for t, m in zip(names, modes, strict=True)]
        if parts == ("snapshots",):
            return [(n, dir_mode, _ino("s", s.id)) for n, s in layout.by_name.items()]
        if parts == ("ids",):
            return [(i, link_mode, _ino("v", "ids", i)) for i in layout.name_of]
        if len(parts) == 1:
            return [(g, dir_mode, _ino("v", parts[0], g)) for g in layout.groups[parts[0]]]
        members = layout.groups[parts[0]].get(parts[1], [])
        return [(n, link_mode, _ino("v", *parts, n)) for n in members]

    def readlink(self, path: str) -> str:
        item = self.lookup(path)
        if item.attr.kind != tree.SYMLINK:
            _fail(errno.EINVAL, path)
        target = item.target if item.node is None else item.node.target
        assert target is not None
        return target

    def xattrs(self, path: str) -> dict[str, bytes]:
        item = self.lookup(path)
        return dict(item.node.xattr_values()) if item.node is not None else {}

    def flags(self, path: str) -> int:
        """Linux file flags (chattr) as stored; 0 for the top levels."""
        item = self.lookup(path)
        return item.node.flags if item.node is not None else 0

    # ---- trees ------------------------------------------------------------------------------

    def _tree(self, tree_id: bytes) -> dict[str, Node]:
        with self._tree_lock:
            cached = self._trees.get(tree_id)
            if cached is not None:
                self._trees.move_to_end(tree_id)
                return cached
        entries = {n.name: n for n in tree.decode_tree(self.blobs.get(tree_id, remember=False))}
        with self._tree_lock:
            if tree_id not in self._trees:
                self._trees[tree_id] = entries
                self._tree_entries += len(entries)
            while self._tree_entries > TREE_CACHE_ENTRIES and len(self._trees) > 1:
                _tid, dropped = self._trees.popitem(last=False)
                self._tree_entries -= len(dropped)
        return entries

    def _link_count(self, snap: Snapshot, key: str) -> int:
        """How many entries of the snapshot are this hard-linked file (at least 2: the
        backup records a link group only for files with more than one link)."""
        counts = self._links.get(snap.id)
        if counts is None:
            counts = Counter()
            level = [bytes.fromhex(snap.tree)]
            visited = 0
            while level and visited < LINK_WALK_TREES:
                self.blobs.prefetch(level)  # one round trip per level, not per folder
                following: list[bytes] = []
                for tree_id in level:
                    for node in self._tree(tree_id).values():
                        if node.type == tree.DIR and node.subtree is not None:
                            following.append(node.subtree)
                        elif node.hardlink is not None and node.type == tree.FILE:
                            counts[_link_key(node)] += 1
                visited += len(level)
                level = following
            self._links[snap.id] = counts
        return max(2, counts[key])

    # ---- file contents ----------------------------------------------------------------------

    def open(self, path: str) -> int:
        item = self.lookup(path)
        if item.attr.kind == tree.DIR:
            _fail(errno.EISDIR, path)
        if item.node is None or item.attr.kind != tree.FILE:
            _fail(errno.EINVAL, path)
        node = item.node
        ends = list(itertools.accumulate(r.length for r in node.content))
        fh = next(self._fh)
        self._files[fh] = OpenFile(node.content, ends, node.size, _data_extents(node))
        return fh

    def release(self, fh: int) -> None:
        self._files.pop(fh, None)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        f = self._files.get(fh)
        if f is None:
            _fail(errno.EBADF)
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        with f.lock:
            # The kernel's read-ahead sends neighbouring reads from several threads, a little
            # out of order: near where the last read ended still counts as sequential.
            sequential = abs(offset - f.next_offset) <= SEQUENTIAL_SLACK
            f.next_offset = end
        if f.data is None:
            return self._content(f, offset, end, sequential)
        out: list[bytes] = []
        pos = offset
        i = max(0, bisect.bisect_right(f.data, (offset, 1 << 63, 0)) - 1)
        for start, length, stored in f.data[i:]:
            if start >= end:
                break
            lo, hi = max(offset, start), min(end, start + length)
            if lo < hi:
                out.append(bytes(lo - pos))  # a hole reads as zeros
                out.append(self._content(f, stored + lo - start, stored + hi - start, sequential))
                pos = hi
        out.append(bytes(end - pos))
        return b"".join(out)

    def _content(self, f: OpenFile, offset: int, end: int, sequential: bool) -> bytes:
        """Bytes [offset, end) of a file's stored content."""
        first = bisect.bisect_right(f.ends, offset)
        last = bisect.bisect_left(f.ends, end, lo=first)  # the ref holding byte end - 1
        if last >= len(f.refs):
            raise IntegrityError("a file's stored content is shorter than its size")
        if sequential:
            ahead = f.refs[last + 1 : last + 1 + READAHEAD]
            self.blobs.prefetch(r.blob_id for r in ahead)
        out = []
        for i in range(first, last + 1):
            ref = f.refs[i]
            start = f.ends[i] - ref.length  # where this ref starts in the content
            lo, hi = max(offset, start) - start, min(end, f.ends[i]) - start
            plain = self.blobs.get(ref.blob_id)
            if ref.offset + ref.length > len(plain):
                raise IntegrityError(f"blob {ref.blob_id.hex()[:16]} is shorter than referenced")
            out.append(plain[ref.offset + lo : ref.offset + hi])
        return b"".join(out) if len(out) != 1 else out[0]
