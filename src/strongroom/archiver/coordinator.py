"""The coordinator: wires the stages of a backup and walks the source with them.

    scanner ──listings──▶ change detection ──files──▶ file saver ──blobs──▶ blob saver
                              │                                               ▲
                              └──folders (post-order)──▶ tree saver ──trees───┘
                                                             │
                                        manifest, root tree ─┴─▶ snapshot commit, local cache

Nothing is visible until the snapshot commit, which the store accepts only if every blob the
snapshot references is durable.
"""

from __future__ import annotations

import gc
import getpass
import os
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..cache import CachedDir, LocalCache
from ..excludes import ExcludeMatcher
from ..fsmeta import hostname
from ..repository import Repository
from ..smallfiles import Ref
from ..snapshot import Snapshot, new_snapshot_id, seal_snapshot, series_of
from .blob_saver import BlobSaver
from .changes import ChangeDetector, Counts, DirJob
from .file_saver import FileSaver, ProgressFn
from .parent import ParentTrees
from .scanner import Scanner
from .tree_saver import TreeSaver

# A file modified after this backup began (or within one timestamp tick before it) could be
# written again within the same tick without its size or times changing: re-read it next time.
# 50 ms covers the coarse clocks of ext4, XFS, btrfs, APFS and NTFS (FAT's 2 s is not covered).
RACY_WINDOW_NS = 50_000_000
_LOOKAHEAD = 256  # listings waiting in the scanner that are checked for trees to prefetch


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
        self._warnings: list[str] = []
        self.result: BackupResult | None = None

    def run(
        self,
        paths: list[str] | Scanner,
        parent: Snapshot | None,
        *,
        tags: list[str] | None = None,
        exclude_patterns: list[str] | None = None,
        host: str | None = None,
        time_ns: int | None = None,
    ) -> BackupResult:
        """Back up `paths` (or what an already started scanner lists) into a new snapshot."""
        scanner = paths if isinstance(paths, Scanner) else Scanner(paths, self.excludes)
        # The walk creates ~10 objects per file and frees few; the default thresholds would make
        # the cyclic GC rescan them over and over (a third of the CPU time on the Linux tree).
        thresholds = gc.get_threshold()
        gc.set_threshold(200_000, 50, 1000)
        # Readers hand the interpreter lock back and forth around every read and compress call;
        # a short switch interval stops a thread that finished its syscall from idling for 5 ms.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(float(os.environ.get("STRONGROOM_SWITCH_INTERVAL", "0.0005")))
        try:
            return self._run(scanner, parent, tags, exclude_patterns, host, time_ns)
        finally:
            scanner.stop()
            sys.setswitchinterval(interval)
            gc.set_threshold(*thresholds)

    def _run(
        self,
        scanner: Scanner,
        parent: Snapshot | None,
        tags: list[str] | None,
        exclude_patterns: list[str] | None,
        host: str | None,
        time_ns: int | None,
    ) -> BackupResult:
        scanner.on_warning(self._warn)
        known = self.repo.known_blob_ids()
        dircache: dict[str, CachedDir] = {}
        loaded: dict[str, CachedDir] | None = None
        if (
            self.cache is not None
            and parent is not None
            and self.cache.snapshot_id() == parent.id
            and self.cache.attrs_complete()
        ):
            loaded = self.cache.load_dirs()
            dircache = {p: d for p, d in loaded.items() if d.refs <= known}
        counts = Counts()
        blobs = BlobSaver(self.repo, known)
        trees = ParentTrees(self.repo)
        files = FileSaver(blobs, self._known_small, self.workers, self.progress)
        # Without this cache the parent may come from a version that recorded no attributes.
        trust_attrs = loaded is not None
        detector = ChangeDetector(
            dircache, trees, files, known, counts, self.progress, self._warn, trust_attrs
        )
        saver = TreeSaver(
            blobs,
            trees,
            counts,
            scanner.started_ns - RACY_WINDOW_NS,
            self._warn,
            str(self.cache.path) if self.cache is not None else "the cache",
            files.pool,
        )
        walk = _Walk(scanner, detector, saver, files, dircache, trees)
        try:
            root = walk.run(bytes.fromhex(parent.tree) if parent is not None else None)
            blobs.wait()
        finally:
            files.close()
            trees.close()
        assert root.tree_id is not None

        self.repo.flush()
        snap = Snapshot(
            id=new_snapshot_id(),
            time_ns=time_ns if time_ns is not None else time.time_ns(),
            host=host or hostname(),
            username=_username(),
            paths=scanner.paths,
            tree=root.tree_id.hex(),
            parent=parent.id if parent is not None else None,
            tags=list(tags or []),
            excludes=list(exclude_patterns or []),
        )
        result = BackupResult(
            snapshot=snap,
            added=counts.added,
            modified=counts.modified,
            removed=counts.removed,
            unchanged=counts.unchanged,
            files=counts.files,
            dirs=counts.dirs,
            bytes_scanned=counts.bytes_scanned,
            bytes_read=files.bytes_read,
            warnings=self._warnings,
        )
        result.bytes_uploaded = self.repo.bytes_uploaded()
        snap.stats = result.stats()
        self.repo.commit_snapshot(
            snap.id,
            snap.time_ns,
            seal_snapshot(self.repo.keys.aead(), snap),
            saver.manifest,
            series_of(self.repo.keys.hasher(), snap.host, snap.paths),
            root=root.tree_id,
        )
        if self.cache is not None:
            try:
                self.cache.save(snap.id, saver.new_dircache, loaded)
                self.cache.add_small(bytes(files.new_small))
            except (sqlite3.Error, OSError, ValueError) as exc:
                # The snapshot is already committed; a stale cache only costs speed next time.
                result.notes.append(f"local cache not updated ({exc}); the next backup is slower")
        result.duration = time.monotonic() - scanner.started
        self.result = result
        return result

    def _known_small(self) -> Mapping[bytes, Ref]:
        """Small files stored by earlier backups (the cache's map, loaded when the first small
        file is read; readers check that a bundle is still in the repository)."""
        return self.cache.all_small() if self.cache is not None else {}

    def _warn(self, message: str) -> None:
        self._warnings.append(message)
        if self._warn_cb is not None:
            self._warn_cb(message)


class _Walk:
    """Depth-first over the scanner's listings; folders are finished in post-order as soon as
    their files are stored, so memory holds only the folders still waiting for files."""

    def __init__(
        self,
        scanner: Scanner,
        detector: ChangeDetector,
        saver: TreeSaver,
        files: FileSaver,
        dircache: dict[str, CachedDir],
        trees: ParentTrees,
    ) -> None:
        self.scanner = scanner
        self.detector = detector
        self.saver = saver
        self.files = files
        self.dircache = dircache
        self.trees = trees
        self._ready: deque[DirJob] = deque()
        self._seen = 0  # listings taken or checked for prefetching
        self._prefetched: set[str] = set()
        self._prefetched_root = False

    def run(self, root_tree: bytes | None) -> DirJob:
        root = self.detector.enter(self.scanner.root, root_tree)
        stack: list[tuple[DirJob, int]] = [(root, 0)]
        while stack:
            job, i = stack[-1]
            if i >= len(job.child_dirs):
                stack.pop()
                self._ready.append(job)
                self._finish_ready(final=False)
                continue
            stack[-1] = (job, i + 1)
            name, full, old_tree = job.child_dirs[i]
            self._prefetch()
            child = self.detector.enter(self.scanner.next(full), old_tree)
            self._seen = max(0, self._seen - 1)
            job.children.append((name, child))
            stack.append((child, 0))
        self.files.flush()
        for job in self._ready:
            for p in job.pending:
                p.future.exception()  # wait; errors are handled when the folder is finished
        self._finish_ready(final=True)
        return root

    def _prefetch(self) -> None:
        """Ask for the parent trees that the listings waiting in the scanner will need: a
        changed folder's own old tree, and those of the folders above it (to repatch)."""
        if not self.dircache or self._seen >= _LOOKAHEAD:
            return
        waiting = self.scanner.peek(self._seen, _LOOKAHEAD)
        wanted: list[bytes] = []
        for listing in waiting:
            cached = self.dircache.get(listing.path)
            if cached is not None and cached.own_sig != listing.own_sig:
                wanted.append(cached.tree_id)
                self._above(listing.path, wanted)
        self._seen += len(waiting)
        if wanted:
            self.trees.prefetch(wanted)

    def _above(self, path: str, wanted: list[bytes]) -> None:
        """The trees of the folders above a changed one (each asked for once)."""
        while True:
            parent = os.path.dirname(path)
            if parent == path or parent in self._prefetched:
                return
            self._prefetched.add(parent)
            above = self.dircache.get(parent)
            if above is not None:
                wanted.append(above.tree_id)
            path = parent
            if not self._prefetched_root:
                root = self.dircache.get("")  # the synthetic root above the backed-up paths
                if root is not None:
                    wanted.append(root.tree_id)
                self._prefetched_root = True

    def _finish_ready(self, *, final: bool) -> None:
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
            self.saver.finish(job)


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
