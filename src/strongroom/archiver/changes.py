"""Change detection: what of one listed folder must be read, and what the parent already has.

- A folder whose entries' `lstat` signature equals the one the local cache remembers for the
  parent snapshot is unchanged: nothing in it is looked at again (its subfolders still are).
- Otherwise its tree in the parent snapshot is consulted: every file with the same size,
  mtime, ctime, inode and mode keeps its old entry's content (if those blobs still exist);
  the others go to the file saver. Entries are the encoded dicts of `tree.Entry`.
- Extended attributes and flags: an entry whose ctime is unchanged keeps the parent's (see
  `attrs`), unless the parent snapshot may come from a version that did not record them
  (`trust_attrs` False: no local cache of a backup that did); then they are read again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import tree
from ..cache import CachedDir
from ..fsmeta import entry_from_stat, same_but_ctime, same_entry
from .attrs import fill as fill_attrs
from .file_saver import BatchFuture, FileResult, FileSaver
from .parent import ParentTrees
from .scanner import Listing

ProgressFn = Callable[[int, int], None]


@dataclass(slots=True)
class Pending:
    """A file being read: item `index` of a batch's future."""

    entry: tree.Entry
    full: str
    future: BatchFuture
    index: int
    change: str  # "added", "modified", or "unchanged" (re-read: racy, or its blobs were gone)

    def result(self) -> FileResult:
        return self.future.result()[self.index]


@dataclass(slots=True)
class DirJob:
    path: str
    listing: Listing
    old_tree: bytes | None = None  # this folder's tree ID in the parent snapshot
    cached: CachedDir | None = None
    files_unchanged: bool = False
    entries: list[tree.Entry] = field(default_factory=list)
    dir_entries: list[int] = field(default_factory=list)  # indexes of the folders' entries
    content_ids: set[bytes] = field(default_factory=set)  # blobs the entries reference
    pending: list[Pending] = field(default_factory=list)
    child_dirs: list[tuple[str, str, bytes | None]] = field(default_factory=list)
    children: list[tuple[str, DirJob]] = field(default_factory=list)
    no_cache: bool = False  # something in it could not be read: do not trust it next time
    checked: int = 0  # pending files known to be done
    nfiles: int = 0
    tree_id: bytes | None = None
    refs: frozenset[bytes] = frozenset()


@dataclass
class Counts:
    added: int = 0
    modified: int = 0
    removed: int = 0
    unchanged: int = 0
    files: int = 0
    dirs: int = 0
    bytes_scanned: int = 0

    def add(self, change: str, n: int = 1) -> None:
        setattr(self, change, getattr(self, change) + n)


class ChangeDetector:
    def __init__(
        self,
        dircache: dict[str, CachedDir],
        parent: ParentTrees,
        files: FileSaver,
        known: set[bytes],
        counts: Counts,
        progress: ProgressFn,
        warn: Callable[[str], None],
        trust_attrs: bool = True,
    ) -> None:
        self.trust_attrs = trust_attrs
        self.dircache = dircache
        self.parent = parent
        self.files = files
        self.known = known
        self.counts = counts
        self.progress = progress
        self.warn = warn

    def enter(self, listing: Listing, old_tree: bytes | None) -> DirJob:
        self.counts.dirs += 1
        path = listing.path
        job = DirJob(path, listing, old_tree, no_cache=not listing.readable)
        cached = self.dircache.get(path)
        if cached is not None and old_tree is not None and cached.tree_id != old_tree:
            cached = None  # the cache describes another tree than the parent snapshot's
        job.cached = cached
        if cached is not None and cached.own_sig == listing.own_sig:
            self._enter_unchanged(job)
            return job
        old = self.parent.entries(old_tree, self.warn)
        present: dict[str, str] = {}
        counts = self.counts
        known = self.known
        entries, content_ids = job.entries, job.content_ids
        nfiles = nbytes = kept = kept_bytes = 0
        for name, full, kind, st in listing.items:
            present[name] = kind
            prev = old.get(name)
            if kind == tree.DIR:
                sub = tree.entry_subtree(prev) if prev is not None else None
                job.child_dirs.append((name, full, sub))
                job.dir_entries.append(len(entries))
                entry = entry_from_stat(name, kind, st)
                self._attrs(job, entry, full, kind, st, prev)
                entries.append(entry)
                continue
            nfiles += 1
            if kind == tree.FILE:
                nbytes += st.st_size
                # The common case first, inlined: an unchanged file keeps its old entry as it
                # is. Every field entry_from_stat would give is compared (uid, gid and the link
                # count change ctime); a hard link's "dev:ino" is only taken from a fresh lstat.
                if (
                    prev is not None
                    and st.st_nlink == 1
                    and prev.get("ctime_ns") == st.st_ctime_ns
                    and prev.get("mtime_ns") == st.st_mtime_ns
                    and prev.get("size") == st.st_size
                    and prev.get("inode") == st.st_ino
                    and prev.get("mode") == st.st_mode & 0o7777
                    and prev.get("type") == tree.FILE
                    and "hardlink" not in prev
                ):
                    ids = _content_ids(prev, known)
                    if ids is not None:
                        if not self.trust_attrs:
                            prev = self._fresh_attrs(job, prev, full, kind, st)
                        entries.append(prev)
                        content_ids.update(ids)
                        kept += 1
                        kept_bytes += st.st_size
                        continue
            if prev is not None and prev["type"] == tree.DIR:
                prev = None
            entry = entry_from_stat(name, kind, st)
            if self._classify(job, entry, full, kind, st, prev):
                entries.append(entry)
            else:
                nfiles -= 1
        job.nfiles += nfiles
        counts.files += nfiles
        counts.bytes_scanned += nbytes
        counts.unchanged += kept
        if kept:
            self.progress(kept, kept_bytes)
        for name, prev in old.items():
            now = present.get(name)
            if now is not None and (now == tree.DIR) == (prev["type"] == tree.DIR):
                continue
            if prev["type"] == tree.DIR:
                counts.removed += self._count_removed(path, name, prev)
            else:
                counts.removed += 1
        return job

    def _enter_unchanged(self, job: DirJob) -> None:
        """The fast path: same entries with the same lstat as in the parent snapshot."""
        job.files_unchanged = True
        listing = job.listing
        old: dict[str, tree.Entry] | None = None
        for name, full in listing.subdirs:
            child = self.dircache.get(full)
            if child is not None:
                sub: bytes | None = child.tree_id
            else:
                if old is None:
                    old = self.parent.entries(job.old_tree, self.warn)
                prev = old.get(name)
                sub = tree.entry_subtree(prev) if prev is not None else None
            job.child_dirs.append((name, full, sub))
        job.nfiles = listing.nfiles
        counts = self.counts
        counts.files += listing.nfiles
        counts.bytes_scanned += listing.nbytes
        counts.unchanged += listing.nfiles
        self.progress(listing.nfiles, listing.nbytes)

    def _classify(
        self,
        job: DirJob,
        entry: tree.Entry,
        full: str,
        kind: str,
        st: os.stat_result,
        prev: tree.Entry | None,
    ) -> bool:
        """Fill in or schedule one non-folder entry; False to leave it out."""
        counts = self.counts
        if kind == tree.SYMLINK:
            try:
                entry["target"] = os.fsdecode(os.readlink(full))
            except OSError as exc:
                self.warn(f"{full}: cannot read symlink ({exc.strerror}); skipped")
                return False
        unchanged = prev is not None and same_entry(prev, kind, st)
        if kind != tree.FILE:
            self._attrs(job, entry, full, kind, st, prev)
            counts.add("unchanged" if unchanged else ("modified" if prev else "added"))
            self.progress(1, 0)
            return True
        if unchanged and prev is not None:
            ids = _content_ids(prev, self.known)
            if ids is not None:
                tree.copy_keys(entry, prev, ("content", "holes"))
                self._attrs(job, entry, full, kind, st, prev)
                job.content_ids.update(ids)
                counts.unchanged += 1
                self.progress(1, st.st_size)
                return True
        change = "unchanged" if unchanged else ("modified" if prev is not None else "added")
        if prev is not None and prev.get("ctime_ns") == 0 and same_but_ctime(prev, st):
            change = "unchanged"  # only re-read because it was racy or changing last time
        future, index = self.files.save(full, st)
        job.pending.append(Pending(entry, full, future, index, change))
        return True

    def _attrs(
        self,
        job: DirJob,
        entry: tree.Entry,
        full: str,
        kind: str,
        st: os.stat_result,
        prev: tree.Entry | None,
    ) -> None:
        if not fill_attrs(entry, full, kind, st, prev, self.trust_attrs, self.warn):
            job.no_cache = True

    def _fresh_attrs(
        self, job: DirJob, prev: tree.Entry, full: str, kind: str, st: os.stat_result
    ) -> tree.Entry:
        """An unchanged file's old entry with its attributes read again."""
        entry = {k: v for k, v in prev.items() if k not in tree.ATTR_KEYS}
        self._attrs(job, entry, full, kind, st, None)
        return entry

    def _count_removed(self, parent_path: str, name: str, prev: tree.Entry) -> int:
        sub = tree.entry_subtree(prev)
        cached = self.dircache.get(os.path.join(parent_path, name) if parent_path else name)
        if cached is not None and cached.tree_id == sub:
            return cached.nfiles
        return self.parent.count_files(sub)


def _content_ids(prev: tree.Entry, known: set[bytes]) -> list[bytes] | None:
    """The blob IDs of an unchanged file's old content, or None to read the file again (a
    blob is gone from the repository, or the old entry is malformed)."""
    try:
        ids = [bytes.fromhex(ref[0]) for ref in prev["content"]]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    for i in ids:
        if i not in known:
            return None
    return ids
