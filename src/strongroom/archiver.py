"""Backup: walk the source, store what changed, write trees and commit a snapshot.

Pipeline (see docs/FORMAT.md, "Backup pipeline"):
- the main thread walks depth-first with scandir/lstat and decides per directory whether it
  changed since the parent snapshot (local cache signature), per file whether it must be read;
- worker threads (one per core) read changed files: small files go into shared ~1 MiB bundles,
  large files are cut by FastCDC; both are hashed, compressed and encrypted in the worker, and
  handed to the repository, whose pack writer thread fsyncs packs;
- directories are finalised in post-order as soon as their files are stored: an unchanged
  directory reuses its old tree ID without re-encoding anything.
Nothing is visible until the snapshot commit, which the store accepts only if every blob the
snapshot references is durable.
"""

from __future__ import annotations

import contextlib
import gc
import getpass
import importlib.machinery
import io
import marshal
import multiprocessing
import os
import socket
import sqlite3
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import blake3

from . import tree
from .blobs import BlobType
from .browse import load_tree, load_tree_raw
from .bundler import SMALL_FILE_LIMIT
from .cache import CachedDir, LocalCache
from .chunker import Chunker
from .errors import StrongroomError
from .excludes import ExcludeMatcher
from .fsmeta import KINDS, node_from_stat, node_type, same_file
from .repository import Repository
from .smallfiles import (
    READ_FLAGS,
    BatchOutcome,
    Ref,
    SmallFileReader,
    init_process,
    read_batch_in_process,
)
from .snapshot import Snapshot, new_snapshot_id, seal_snapshot, series_of
from .tree import ContentRef, Node

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NOATIME = getattr(os, "O_NOATIME", 0)

ProgressFn = Callable[[int, int], None]  # (files done, bytes done) increments


@dataclass
class BackupResult:
    snapshot: Snapshot
    added: int = 0
    modified: int = 0
    removed: int = 0
    unchanged: int = 0
    files: int = 0
    dirs: int = 0
    bytes_scanned: int = 0
    bytes_read: int = 0
    bytes_uploaded: int = 0
    duration: float = 0.0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, int]:
        return {
            "added": self.added,
            "modified": self.modified,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "files": self.files,
            "dirs": self.dirs,
            "bytes_scanned": self.bytes_scanned,
            "bytes_uploaded": self.bytes_uploaded,
        }


_FileResult = list[ContentRef] | Exception | None  # None: waiting for its bundle
_BatchFuture = Future[list[_FileResult]]
_BATCH_FILES = 64  # small files per worker task: fewer futures, less GIL ping-pong
_BATCH_BYTES = 4 * 1024 * 1024
_MAX_OUTSTANDING = 16  # batches submitted but not yet read
# A file modified after this backup began (or within one timestamp tick before it) could be
# written again within the same tick without its size or times changing: re-read it next time.
# 50 ms covers the coarse clocks of ext4, XFS, btrfs, APFS and NTFS (FAT's 2 s is not covered).
_RACY_WINDOW_NS = 50_000_000
_PROCESS_AFTER = 16  # batches read in threads before worker processes are worth starting


def _same_but_ctime(old: Node, st: os.stat_result) -> bool:
    return (
        old.size == st.st_size
        and old.mtime_ns == st.st_mtime_ns
        and old.inode == st.st_ino
        and old.mode == stat.S_IMODE(st.st_mode)
    )


def _processes_allowed() -> bool:
    return not os.environ.get("STRONGROOM_NO_PROCESSES")


@contextlib.contextmanager
def _workers_skip_main() -> Iterator[None]:
    """Workers are started by `submit`. With the spawn method a new worker re-imports the
    program's main module (the CLI, ~16 MiB it does not need); a main module that names itself
    `__main__` is skipped, so pretend to be one while submitting."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = None


@dataclass
class _Pending:
    """A file being read by a worker, as item `index` of a batch."""

    node: Node
    future: _BatchFuture
    index: int
    change: str  # "added" or "modified" or "unchanged" (re-read because its blobs were gone)

    def result(self) -> _FileResult:
        return self.future.result()[self.index]


@dataclass
class _DirJob:
    path: str  # absolute path ("" for the synthetic root)
    own_sig: bytes = b""
    cached: CachedDir | None = None
    old_tree: bytes | None = None  # this directory's tree ID in the parent snapshot
    files_unchanged: bool = False
    nodes: list[Node] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    items: list[tuple[str, str, str, os.stat_result]] = field(default_factory=list)
    children: list[tuple[str, _DirJob]] = field(default_factory=list)
    child_dirs: list[tuple[str, str, bytes | None]] = field(default_factory=list)
    listings: list[Future[tuple[list[tuple[str, str, str, os.stat_result]], bool]]] = field(
        default_factory=list
    )
    no_cache: bool = False  # something in it could not be read: do not trust it next time
    checked: int = 0  # pending files known to be done
    nfiles: int = 0
    tree_id: bytes | None = None
    refs: frozenset[bytes] = frozenset()


class Archiver:
    def __init__(
        self,
        repo: Repository,
        cache: LocalCache | None,
        excludes: ExcludeMatcher | None = None,
        workers: int | None = None,
        progress: ProgressFn | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = repo
        self.cache = cache
        self.excludes = excludes
        self.workers = max(1, workers or os.cpu_count() or 2)
        self.progress = progress or (lambda _f, _b: None)
        self._warn_cb = warn
        self._hasher = repo.keys.hasher()
        self._known: set[bytes] = set()
        self._session: set[bytes] = set()
        self._session_lock = threading.Lock()
        self._chunkers = threading.local()
        self._new_small = bytearray()  # packed cache records: 72 bytes a file, not ~200
        self._inodes: dict[tuple[int, int], tuple[_BatchFuture, int]] = {}
        self._batch: list[tuple[str, os.stat_result, Node]] = []
        self._batch_bytes = 0
        self._batch_future: _BatchFuture = Future()
        self._outstanding: deque[_BatchFuture] = deque()
        self._dircache: dict[str, CachedDir] = {}
        self._new_dircache: dict[str, CachedDir] = {}
        self._manifest: set[bytes] = set()
        self._cache_loaded: dict[str, CachedDir] | None = None
        self._small_map: dict[bytes, Ref] | None = None
        self._batches = 0
        self._racy_after = 0
        self._procs: ProcessPoolExecutor | None = None
        self._readers = threading.local()
        self._ready: deque[_DirJob] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._lister: ThreadPoolExecutor | None = None
        self.result: BackupResult | None = None
        self._warnings: list[str] = []
        self._counts = {"added": 0, "modified": 0, "removed": 0, "unchanged": 0}
        self._files = 0
        self._dirs = 0
        self._bytes_scanned = 0
        self._bytes_read = 0

    # ---- entry point -------------------------------------------------------------------------

    def run(
        self,
        paths: list[str],
        parent: Snapshot | None,
        *,
        tags: list[str] | None = None,
        exclude_patterns: list[str] | None = None,
        host: str | None = None,
        time_ns: int | None = None,
    ) -> BackupResult:
        started = time.monotonic()
        self._racy_after = time.time_ns() - _RACY_WINDOW_NS
        # The walk creates ~10 objects per file and frees few; the default thresholds would make
        # the cyclic GC rescan them over and over (a third of the CPU time on the Linux tree).
        # Rare collections keep that cost small while still freeing cycles.
        thresholds = gc.get_threshold()
        gc.set_threshold(200_000, 50, 1000)
        # Workers hand the GIL back and forth around every read and compress call; a short
        # switch interval stops a thread that finished its syscall from idling for 5 ms.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(float(os.environ.get("STRONGROOM_SWITCH_INTERVAL", "0.0005")))
        try:
            return self._run(paths, parent, tags, exclude_patterns, host, time_ns, started)
        finally:
            sys.setswitchinterval(interval)
            gc.set_threshold(*thresholds)

    def _run(
        self,
        paths: list[str],
        parent: Snapshot | None,
        tags: list[str] | None,
        exclude_patterns: list[str] | None,
        host: str | None,
        time_ns: int | None,
        started: float,
    ) -> BackupResult:
        roots = self._check_roots(paths)
        self._known = self.repo.known_blob_ids()

        if self.cache is not None and parent is not None and self.cache.snapshot_id() == parent.id:
            loaded = self.cache.load_dirs()
            self._dircache = {p: d for p, d in loaded.items() if d.refs <= self._known}
            self._cache_loaded = loaded
        root_tree = bytes.fromhex(parent.tree) if parent is not None else None

        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="backup")
        self._lister = ThreadPoolExecutor(1, thread_name_prefix="lister")
        try:
            root = self._enter_root(roots, root_tree)
            self._walk(root)
            self._submit_batch()
            for job in self._ready:
                for p in job.pending:
                    p.future.exception()  # wait; errors are handled at finalise time
            self._finalize_ready(final=True)
        finally:
            self._lister.shutdown(wait=True, cancel_futures=True)
            if self._procs is not None:
                self._procs.shutdown(wait=True, cancel_futures=True)
            self._pool.shutdown(wait=True, cancel_futures=True)
        assert root.tree_id is not None

        manifest = self._manifest
        self.repo.flush()
        snap = Snapshot(
            id=new_snapshot_id(),
            time_ns=time_ns if time_ns is not None else time.time_ns(),
            host=host or socket.gethostname(),
            username=_username(),
            paths=[r[1] for r in roots],
            tree=root.tree_id.hex(),
            parent=parent.id if parent is not None else None,
            tags=list(tags or []),
            excludes=list(exclude_patterns or []),
        )
        result = BackupResult(
            snapshot=snap,
            files=self._files,
            dirs=self._dirs,
            bytes_scanned=self._bytes_scanned,
            bytes_read=self._bytes_read,
            warnings=self._warnings,
            added=self._counts["added"],
            modified=self._counts["modified"],
            removed=self._counts["removed"],
            unchanged=self._counts["unchanged"],
        )
        result.bytes_uploaded = self.repo.bytes_uploaded()
        snap.stats = result.stats()
        self.repo.commit_snapshot(
            snap.id,
            snap.time_ns,
            seal_snapshot(self.repo.keys.aead(), snap),
            manifest,
            series_of(self.repo.keys.hasher(), snap.host, snap.paths),
            root=root.tree_id,
        )
        if self.cache is not None:
            try:
                self.cache.save(snap.id, self._new_dircache, self._cache_loaded)
                self.cache.add_small(bytes(self._new_small))
            except (sqlite3.Error, OSError, ValueError) as exc:
                # The snapshot is already committed; a stale cache only costs speed next time.
                result.notes.append(f"local cache not updated ({exc}); the next backup is slower")
        result.duration = time.monotonic() - started
        self.result = result
        return result

    # ---- walking -----------------------------------------------------------------------------

    def _check_roots(self, paths: list[str]) -> list[tuple[str, str, os.stat_result]]:
        if not paths:
            raise StrongroomError("nothing to back up: give at least one path")
        roots: list[tuple[str, str, os.stat_result]] = []
        names: set[str] = set()
        for raw in paths:
            full = os.path.abspath(raw)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                raise StrongroomError(f"{raw}: no such file or folder") from None
            except OSError as exc:
                raise StrongroomError(f"{raw}: cannot read ({exc.strerror})") from None
            name = os.path.basename(full.rstrip("/\\")) or full.strip("/\\") or "root"
            if name in names:
                raise StrongroomError(
                    f"two paths to back up share the name '{name}'; back them up separately"
                )
            names.add(name)
            roots.append((name, full, st))
        return roots

    def _enter_root(
        self, roots: list[tuple[str, str, os.stat_result]], old_tree: bytes | None
    ) -> _DirJob:
        items = []
        for name, full, st in roots:
            kind = node_type(st)
            if kind is None:
                raise StrongroomError(f"{full}: cannot back up this kind of file")
            items.append((name, full, kind, st))
        return self._enter("", items, old_tree)

    def _prefetch(self, job: _DirJob) -> None:
        """List subfolders on another thread: lstat releases the GIL, so it overlaps our work."""
        assert self._lister is not None
        job.listings = [
            self._lister.submit(self._list_dir, full) for _n, full, _o in job.child_dirs
        ]

    def _walk(self, root: _DirJob) -> None:
        self._prefetch(root)
        stack: list[tuple[_DirJob, int]] = [(root, 0)]
        while stack:
            job, i = stack[-1]
            if i >= len(job.child_dirs):
                stack.pop()
                self._ready.append(job)
                self._finalize_ready(final=False)
                continue
            stack[-1] = (job, i + 1)
            name, full, old_tree = job.child_dirs[i]
            items, readable = job.listings[i].result()
            child = self._enter(full, items, old_tree)
            self._prefetch(child)
            child.no_cache = not readable
            job.children.append((name, child))
            stack.append((child, 0))

    def _list_dir(self, path: str) -> tuple[list[tuple[str, str, str, os.stat_result]], bool]:
        items: list[tuple[str, str, str, os.stat_result]] = []
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            self._warn(f"{path}: cannot read folder ({exc.strerror}); stored as empty")
            return items, False
        entries.sort(key=_entry_name)  # any fixed order will do; trees sort by bytes themselves
        # This loop runs once per file on every backup: locals instead of attribute lookups.
        excluded = self.excludes.excluded if self.excludes else None
        kind_of = KINDS.get
        append = items.append
        for entry in entries:
            full = entry.path
            if excluded is not None and excluded(full):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                self._warn(f"{full}: cannot stat ({exc.strerror}); skipped")
                continue
            kind = kind_of(st.st_mode & 0o170000)
            if kind is None:
                self._warn(f"{full}: unknown file type; skipped")
                continue
            append((entry.name, full, kind, st))
        return items, True

    def _enter(
        self,
        path: str,
        items: list[tuple[str, str, str, os.stat_result]],
        old_tree: bytes | None,
    ) -> _DirJob:
        self._dirs += 1
        job = _DirJob(path=path, old_tree=old_tree, items=items)
        # uid, gid and mode changes also change ctime, so these fields cover them.
        job.own_sig = blake3.blake3(
            marshal.dumps(
                [
                    (n, s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)
                    for n, _f, _k, s in items
                ]
            )
        ).digest()
        cached = self._dircache.get(path)
        if cached is not None and old_tree is not None and cached.tree_id != old_tree:
            cached = None  # cache describes another tree than the parent snapshot's
        job.cached = cached
        job.files_unchanged = cached is not None and cached.own_sig == job.own_sig
        if job.files_unchanged:
            self._enter_unchanged(job)
            return job
        old_nodes = self._old_nodes(old_tree)

        present: dict[str, str] = {}
        for name, full, kind, st in items:
            present[name] = kind
            node = node_from_stat(name, kind, st)
            job.nodes.append(node)
            if kind == tree.DIR:
                old = old_nodes.get(name)
                child_old = old.subtree if old is not None and old.type == tree.DIR else None
                job.child_dirs.append((name, full, child_old))
                continue
            job.nfiles += 1
            self._files += 1
            if kind == tree.FILE:
                self._bytes_scanned += st.st_size
            old = old_nodes.get(name)
            self._classify(job, node, full, kind, st, old if old and old.type != tree.DIR else None)
        for name, old in old_nodes.items():
            now = present.get(name)
            if now is not None and (now == tree.DIR) == (old.type == tree.DIR):
                continue
            if old.type == tree.DIR:
                self._counts["removed"] += self._count_files(old, path, name)
            else:
                self._counts["removed"] += 1
        return job

    def _enter_unchanged(self, job: _DirJob) -> None:
        """The fast path: same entries with the same lstat as in the parent snapshot."""
        files = nbytes = 0
        old_nodes: dict[str, Node] | None = None
        for name, full, kind, st in job.items:
            if kind == tree.DIR:
                child_cache = self._dircache.get(full)
                if child_cache is not None:
                    child_old: bytes | None = child_cache.tree_id
                else:
                    if old_nodes is None:
                        old_nodes = self._old_nodes(job.old_tree)
                    old = old_nodes.get(name)
                    child_old = old.subtree if old is not None else None
                job.child_dirs.append((name, full, child_old))
            else:
                files += 1
                if kind == tree.FILE:
                    nbytes += st.st_size
        job.nfiles = files
        self._files += files
        self._bytes_scanned += nbytes
        self._counts["unchanged"] += files
        self.progress(files, nbytes)

    def _classify(
        self,
        job: _DirJob,
        node: Node,
        full: str,
        kind: str,
        st: os.stat_result,
        old: Node | None,
    ) -> None:
        if kind == tree.SYMLINK:
            try:
                node.target = os.fsdecode(os.readlink(full))
            except OSError as exc:
                self._warn(f"{full}: cannot read symlink ({exc.strerror}); skipped")
                job.nodes.remove(node)
                return
        unchanged = old is not None and same_file(old, kind, st)
        if kind != tree.FILE:
            self._count("unchanged" if unchanged else ("modified" if old else "added"))
            self.progress(1, 0)
            return
        if unchanged and old is not None and all(r.blob_id in self._known for r in old.content):
            node.content = list(old.content)
            self._count("unchanged")
            self.progress(1, st.st_size)
            return
        change = "unchanged" if unchanged else ("modified" if old is not None else "added")
        if old is not None and old.ctime_ns == 0 and _same_but_ctime(old, st):
            change = "unchanged"  # only re-read because it was racy or changing last time
        if st.st_nlink > 1:
            shared = self._inodes.get((st.st_dev, st.st_ino))
            if shared is not None:  # another name of a file we are already reading
                job.pending.append(_Pending(node, shared[0], shared[1], change))
                return
        if st.st_size >= SMALL_FILE_LIMIT:
            assert self._pool is not None
            large: _BatchFuture = Future()
            self._pool.submit(self._read_large, full, st, node, large)
            job.pending.append(_Pending(node, large, 0, change))
            if st.st_nlink > 1:
                self._inodes[(st.st_dev, st.st_ino)] = (large, 0)
            return
        batch = self._batch
        batch.append((full, st, node))
        self._batch_bytes += st.st_size
        future = self._batch_future
        job.pending.append(_Pending(node, future, len(batch) - 1, change))
        if st.st_nlink > 1:
            self._inodes[(st.st_dev, st.st_ino)] = (future, len(batch) - 1)
        if len(batch) >= _BATCH_FILES or self._batch_bytes >= _BATCH_BYTES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        """Hand the collected files to a worker; the future was created when the batch began."""
        if not self._batch:
            return
        batch, future = self._batch, self._batch_future
        self._batch, self._batch_bytes = [], 0
        self._batch_future = Future()
        items = [(full, st.st_size, st.st_mtime_ns) for full, st, _n in batch]
        self._batches += 1
        if self._batches == _PROCESS_AFTER and self.workers > 1 and _processes_allowed():
            self._start_processes()
        if self._procs is not None:
            with _workers_skip_main():
                done = self._procs.submit(read_batch_in_process, items)
            done.add_done_callback(lambda f: self._absorb(f, batch, future))
        else:
            assert self._pool is not None
            self._pool.submit(self._read_batch_here, items, batch, future)
        # Keep the walk at most a few batches ahead of the readers, so the metadata waiting for
        # them (and thus memory) stays bounded however many files the tree has.
        self._outstanding.append(future)
        while len(self._outstanding) > _MAX_OUTSTANDING:
            self._outstanding.popleft().exception()
        while self._outstanding and self._outstanding[0].done():
            self._outstanding.popleft()

    def _start_processes(self) -> None:
        """Small files are read in worker processes once a backup proves big enough: their
        per-file Python work would otherwise hold this process's GIL and keep a first backup on
        one core. Small backups never pay for starting them."""
        self._procs = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_process,
            initargs=(
                os.getpid(),
                self.repo.keys.data_key,
                self.repo.keys.id_key,
                self._known_small(),
            ),
        )

    def _known_small(self) -> dict[bytes, Ref]:
        """Small files stored by earlier backups (and still in the repository), loaded once."""
        if self._small_map is None:
            self._small_map = {}
            if self.cache is not None:
                self._small_map = {
                    cid: ref for cid, ref in self.cache.all_small().items() if ref[0] in self._known
                }
        return self._small_map

    def _read_batch_here(
        self,
        items: list[tuple[str, int, int]],
        batch: list[tuple[str, os.stat_result, Node]],
        future: _BatchFuture,
    ) -> None:
        """The one-worker path: the same reader, in a thread of this process."""
        reader: SmallFileReader | None = getattr(self._readers, "reader", None)
        if reader is None:
            with self._session_lock:
                known = self._known_small()
            reader = SmallFileReader(self.repo.keys.data_key, self.repo.keys.id_key, known)
            self._readers.reader = reader
        done: Future[BatchOutcome] = Future()
        try:
            done.set_result(reader.read_batch(items))
        except BaseException as exc:
            done.set_exception(exc)
        self._absorb(done, batch, future)

    def _absorb(
        self,
        done: Future[BatchOutcome],
        batch: list[tuple[str, os.stat_result, Node]],
        future: _BatchFuture,
    ) -> None:
        """Store a batch's bundles and fill in its files (runs on a thread of this process)."""
        try:
            outcome = done.result()
            for blob_id, stored in outcome.blobs:
                if self._claim(blob_id):
                    self.repo.add_blob(blob_id, BlobType.DATA, stored)
            for cid, (blob_id, offset, length) in outcome.pieces:
                self._new_small += LocalCache.small_record(cid, blob_id, offset, length)
            results: list[_FileResult] = []
            files = nbytes = 0
            for (full, _st, node), res in zip(batch, outcome.files, strict=True):
                if res.refs is None:
                    results.append(_FileSkipped(res.error or f"{full}: skipped"))
                    continue
                if res.changed:
                    self._changed_while_read(full, node)
                node.size = res.size
                files += 1
                nbytes += res.size
                results.append([ContentRef(*r) for r in res.refs])
            self._bytes_read += nbytes
            self.progress(files, nbytes)
        except BaseException as exc:
            future.set_exception(exc)
            return
        future.set_result(results)

    def _changed_while_read(self, full: str, node: Node) -> None:
        self._warn(f"{full}: changed while being read; stored as read, will be re-read")
        # ctime is compared on the next backup but never restored: 0 forces a re-read without
        # giving the restored file a wrong date.
        node.ctime_ns = 0

    def _count(self, what: str) -> None:
        self._counts[what] += 1

    # ---- the parent snapshot -----------------------------------------------------------------

    def _old_nodes(self, tree_id: bytes | None) -> dict[str, Node]:
        if tree_id is None:
            return {}
        try:
            nodes = {n.name: n for n in load_tree(self.repo, tree_id)}
        except StrongroomError as exc:
            self._warn(f"parent snapshot tree unreadable ({exc}); treating files as new")
            return {}
        return nodes

    def _count_files(self, old: Node, parent_path: str, name: str) -> int:
        cached = self._dircache.get(os.path.join(parent_path, name) if parent_path else name)
        if cached is not None and cached.tree_id == old.subtree:
            return cached.nfiles
        total = 0
        todo = [old.subtree]
        while todo:
            tid = todo.pop()
            if tid is None:
                continue
            try:
                nodes = load_tree(self.repo, tid)
            except StrongroomError:
                continue
            for n in nodes:
                if n.type == tree.DIR:
                    todo.append(n.subtree)
                else:
                    total += 1
        return total

    # ---- workers -----------------------------------------------------------------------------

    def _read_large(self, full: str, st: os.stat_result, node: Node, future: _BatchFuture) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result([self._read_large_file(full, st, node)])
        except _FileSkipped as exc:
            future.set_result([exc])
        except BaseException as exc:
            future.set_exception(exc)

    def _read_large_file(self, full: str, st: os.stat_result, node: Node) -> list[ContentRef]:
        try:
            fd = os.open(full, READ_FLAGS | _O_NOATIME)
        except PermissionError as exc:
            if not _O_NOATIME:
                raise _FileSkipped(f"{full}: cannot read ({exc.strerror}); skipped") from None
            try:  # O_NOATIME needs ownership of the file
                fd = os.open(full, READ_FLAGS)
            except OSError as exc2:
                raise _FileSkipped(f"{full}: cannot read ({exc2.strerror}); skipped") from None
        except OSError as exc:
            raise _FileSkipped(f"{full}: cannot read ({exc.strerror}); skipped") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _FileSkipped(f"{full}: is no longer a regular file; skipped")
            refs, size = self._read_chunked(fd, st.st_size)
            after = os.fstat(fd)
        except OSError as exc:
            raise _FileSkipped(f"{full}: read error ({exc.strerror}); skipped") from None
        finally:
            os.close(fd)
        if size != st.st_size or after.st_size != st.st_size or after.st_mtime_ns != st.st_mtime_ns:
            self._changed_while_read(full, node)
        node.size = size
        self._bytes_read += size
        self.progress(1, size)
        return refs

    def _read_chunked(self, fd: int, limit: int) -> tuple[list[ContentRef], int]:
        chunker: Chunker | None = getattr(self._chunkers, "chunker", None)
        if chunker is None:
            chunker = Chunker(self.repo.keys.chunker_seed)
            self._chunkers.chunker = chunker
        refs: list[ContentRef] = []
        size = 0
        with io.FileIO(os.dup(fd), "rb") as raw:
            # Read no further than the size lstat saw: a growing file cannot stall the backup.
            for view in chunker.chunks(_Limited(raw, limit)):
                refs.append(self._store_chunk(view))
                size += len(view)
        return refs, size

    def _store_chunk(self, data: bytes | memoryview) -> ContentRef:
        blob_id = self._hasher(data)
        if self._claim(blob_id):
            stored = self.repo.codecs.get().encode(blob_id, data)
            self.repo.add_blob(blob_id, BlobType.DATA, stored)
        return ContentRef(blob_id, 0, len(data))

    def _claim(self, blob_id: bytes) -> bool:
        """True if this thread should store the blob (nobody has it or is storing it)."""
        if blob_id in self._known:
            return False
        with self._session_lock:
            if blob_id in self._session:
                return False
            self._session.add(blob_id)
        return True

    # ---- finalising directories --------------------------------------------------------------

    def _finalize_ready(self, *, final: bool) -> None:
        while self._ready:
            job = self._ready[0]
            if not final:
                # Resume where the last check stopped: the head folder is re-checked after
                # every folder the walk finishes, and its files complete in order.
                pending = job.pending
                while job.checked < len(pending) and pending[job.checked].future.done():
                    job.checked += 1
                if job.checked < len(pending):
                    return
            self._ready.popleft()
            self._finalize(job)

    def _finalize(self, job: _DirJob) -> None:
        for p in job.pending:
            try:
                res = p.result()
                if isinstance(res, Exception):
                    raise res
                assert res is not None
                p.node.content = res
                self._count(p.change)
                if p.node.mtime_ns >= self._racy_after:
                    # Modified within the timestamp resolution of this backup: a later write
                    # in the same tick would leave size and times unchanged, so do not trust
                    # this file's metadata next time (git's "racy clean" problem).
                    p.node.ctime_ns = 0
                if p.node.ctime_ns == 0:  # changed while being read, or racy
                    job.no_cache = True
            except _FileSkipped as exc:
                self._warn(str(exc))
                job.no_cache = True
                job.nodes.remove(p.node)
                job.nfiles -= 1
                self._files -= 1
        sig = blake3.blake3(job.own_sig)
        subtrees: dict[str, bytes] = {}
        for name, child in job.children:
            assert child.tree_id is not None
            subtrees[name] = child.tree_id
            sig.update(child.tree_id)
            job.nfiles += child.nfiles
        full_sig = sig.digest()
        cached = job.cached
        if job.files_unchanged and cached is not None and cached.full_sig == full_sig:
            job.tree_id, job.refs = cached.tree_id, cached.refs
        elif job.files_unchanged and cached is not None and self._repatch(job, cached, subtrees):
            pass  # only subfolders changed: the old tree with new subtree IDs
        else:
            if job.files_unchanged:
                self._nodes_from_old(job)
            for node in job.nodes:
                if node.type == tree.DIR:
                    node.subtree = subtrees[node.name]
            raw = tree.encode_tree(job.nodes)
            tree_id = self._hasher(raw)
            if self._claim(tree_id):
                stored = self.repo.codecs.get().encode(tree_id, raw)
                self.repo.add_blob(tree_id, BlobType.TREE, stored)
            refs = {tree_id}
            for n in job.nodes:
                refs.update(r.blob_id for r in n.content)
            job.tree_id, job.refs = tree_id, frozenset(refs)
        assert job.tree_id is not None
        if job.no_cache:
            # Re-examine this folder next time (a file was unreadable or changing).
            self._new_dircache.pop(job.path, None)
        self._manifest |= job.refs
        if not job.no_cache:
            self._new_dircache[job.path] = CachedDir(
                job.own_sig, full_sig, job.tree_id, job.refs, job.nfiles
            )
        # Free memory: the parent only needs the tree ID, the file count and the refs.
        job.nodes = []
        job.items = []
        job.listings = []
        job.pending = []
        job.children = []
        job.child_dirs = []

    def _repatch(self, job: _DirJob, cached: CachedDir, subtrees: dict[str, bytes]) -> bool:
        """A folder whose own entries are unchanged but some subfolders changed: rewrite only
        the subtree IDs in its old tree, without building nodes (the common case for the
        folders above a changed file). False if the old tree does not fit; the caller then
        rebuilds the folder from nodes."""
        try:
            raw = load_tree_raw(self.repo, cached.tree_id)
            new_raw = tree.replace_subtrees(raw, subtrees)
        except StrongroomError:
            return False
        if new_raw is None:
            return False
        tree_id = self._hasher(new_raw)
        if self._claim(tree_id):
            self.repo.add_blob(
                tree_id, BlobType.TREE, self.repo.codecs.get().encode(tree_id, new_raw)
            )
        job.tree_id = tree_id
        job.refs = (cached.refs - {cached.tree_id}) | {tree_id}
        return True

    def _nodes_from_old(self, job: _DirJob) -> None:
        """Build the nodes of an unchanged folder whose subfolders changed."""
        old_nodes = self._old_nodes(job.old_tree)
        for name, _full, kind, st in job.items:
            node = node_from_stat(name, kind, st)
            if kind != tree.DIR:
                old = old_nodes.get(name)
                if old is None or old.type != kind:
                    raise StrongroomError(
                        f"local cache is inconsistent for {job.path}; "
                        f"delete {_cache_hint(self.cache)} and run the backup again"
                    )
                node.content = list(old.content)
                node.size = old.size
                node.target = old.target
                node.mtime_ns = old.mtime_ns
            job.nodes.append(node)

    def _warn(self, message: str) -> None:
        self._warnings.append(message)
        if self._warn_cb is not None:
            self._warn_cb(message)


class _FileSkipped(Exception):
    pass


class _Limited:
    """A raw file that ends at `limit` bytes, for the chunker's readinto loop."""

    def __init__(self, raw: io.FileIO, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def readinto(self, buf: memoryview) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buf)[: self._left]
        n = self._raw.readinto(view) or 0
        self._left -= n
        return n


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _cache_hint(cache: LocalCache | None) -> str:
    return str(cache.path) if cache is not None else "the cache"
