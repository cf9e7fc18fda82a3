"""Stage 4, the tree saver: finish each folder once its files and subfolders are stored.

Folders are finished in post-order. For each, in the cheapest way that is correct:
1. its own entries and all its subfolders' tree IDs are as the cache remembers: the old tree ID
   is reused, nothing is encoded;
2. only subfolders changed: the parent's tree gets the new subtree IDs (`tree.replace_subtrees`);
3. otherwise the entries are encoded into a new tree blob.
It also gathers the snapshot's manifest (every blob a tree references) and the new cache rows.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

import blake3

from .. import tree
from ..blobs import BlobType
from ..cache import CachedDir
from ..errors import StrongroomError
from ..fsmeta import entry_from_stat
from .attrs import fill as fill_attrs
from .attrs import set_attrs
from .blob_saver import BlobSaver
from .changes import Counts, DirJob
from .file_saver import FileSkipped
from .parent import ParentTrees


class TreeSaver:
    def __init__(
        self,
        blobs: BlobSaver,
        parent: ParentTrees,
        counts: Counts,
        racy_after: int,
        warn: Callable[[str], None],
        cache_hint: str,
        pool: Executor,
    ) -> None:
        self.blobs = blobs
        self.pool = pool  # where new trees are compressed and encrypted
        self.parent = parent
        self.counts = counts
        self.racy_after = racy_after
        self.warn = warn
        self.cache_hint = cache_hint
        self.manifest: set[bytes] = set()
        self.new_dircache: dict[str, CachedDir] = {}

    def finish(self, job: DirJob) -> None:
        self._collect_files(job)
        sig = blake3.blake3(job.listing.own_sig)
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
        elif not (
            job.files_unchanged and cached is not None and self._repatch(job, cached, subtrees)
        ):
            if job.files_unchanged:
                self._entries_from_old(job)
            entries = job.entries
            for i in job.dir_entries:
                entries[i]["subtree"] = subtrees[entries[i]["name"]].hex()
            raw = tree.encode_entries(job.entries)
            tree_id = self.blobs.save_later(BlobType.TREE, raw, self.pool)
            job.content_ids.add(tree_id)
            job.tree_id, job.refs = tree_id, frozenset(job.content_ids)
        assert job.tree_id is not None
        self.manifest |= job.refs
        if job.no_cache:
            # Re-examine this folder next time (a file was unreadable or changing).
            self.new_dircache.pop(job.path, None)
        else:
            self.new_dircache[job.path] = CachedDir(
                job.listing.own_sig, full_sig, job.tree_id, job.refs, job.nfiles
            )
        # Free memory: the parent only needs the tree ID, the file count and the refs.
        job.entries = []
        job.pending = []
        job.children = []
        job.child_dirs = []
        job.content_ids = set()

    def _collect_files(self, job: DirJob) -> None:
        racy_after = self.racy_after
        counts = self.counts
        skipped: list[tree.Entry] = []
        for p in job.pending:
            res = p.result()
            entry = p.entry
            if isinstance(res, FileSkipped):
                self.warn(str(res))
                job.no_cache = True
                skipped.append(entry)
                job.nfiles -= 1
                counts.files -= 1
                continue
            entry["content"] = [[r.blob_id.hex(), r.offset, r.length] for r in res.refs]
            entry["size"] = res.size
            if res.holes:
                tree.put(entry, "holes", [[start, length] for start, length in res.holes])
            set_attrs(entry, res.xattrs, res.flags)
            for message in res.warnings or ():
                self.warn(message)
            job.content_ids.update(r.blob_id for r in res.refs)
            counts.add(p.change)
            if res.changed:
                self.warn(f"{p.full}: changed while being read; stored as read, will be re-read")
            if res.changed or res.warnings or entry["mtime_ns"] >= racy_after:
                # Changed while read, or modified within the timestamp resolution of this
                # backup (a later write in the same tick would leave size and times unchanged;
                # git's "racy clean" problem): ctime 0 makes the next backup read it again,
                # without giving a restored file a wrong date.
                entry["ctime_ns"] = 0
                job.no_cache = True
        if skipped:
            gone = {id(e) for e in skipped}
            job.entries = [e for e in job.entries if id(e) not in gone]
            job.dir_entries = [i for i, e in enumerate(job.entries) if e["type"] == tree.DIR]

    def _repatch(self, job: DirJob, cached: CachedDir, subtrees: dict[str, bytes]) -> bool:
        """Own entries unchanged, some subfolders changed: the old tree with new subtree IDs
        (the common case for the folders above a changed file). False if the old tree does
        not fit; the caller then rebuilds the folder's entries."""
        try:
            new_raw = tree.replace_subtrees(self.parent.get(cached.tree_id).raw, subtrees)
        except StrongroomError:
            return False
        if new_raw is None:
            return False
        tree_id = self.blobs.save_later(BlobType.TREE, new_raw, self.pool)
        job.tree_id = tree_id
        job.refs = (cached.refs - {cached.tree_id}) | {tree_id}
        return True

    def _entries_from_old(self, job: DirJob) -> None:
        """The entries of a folder whose own entries are unchanged, from the parent's tree."""
        old = self.parent.entries(job.old_tree, self.warn)
        for name, full, kind, st in job.listing.items:
            entry = entry_from_stat(name, kind, st)
            if kind == tree.DIR:
                job.dir_entries.append(len(job.entries))
                if not fill_attrs(entry, full, kind, st, old.get(name), True, self.warn):
                    job.no_cache = True
            else:
                prev = old.get(name)
                if prev is None or prev.get("type") != kind:
                    raise StrongroomError(
                        f"local cache is inconsistent for {job.path}; "
                        f"delete {self.cache_hint} and run the backup again"
                    )
                tree.copy_keys(entry, prev, tree.CONTENT_KEYS)
                tree.copy_keys(entry, prev, tree.ATTR_KEYS)
                if kind == tree.FILE:
                    job.content_ids.update(tree.entry_refs(prev))
            job.entries.append(entry)
