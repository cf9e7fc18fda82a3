"""The parent snapshot's trees, fetched ahead and kept in their encoded form.

A changed folder needs its tree from the parent snapshot (to keep the content of its unchanged
files), and each folder above it needs its old tree to swap in new subtree IDs. The coordinator
knows early which folders those are (their listings wait in the scanner's queue), so it asks
for their trees ahead; a loader thread fetches them in batches, one request for many trees
(one round trip over the network instead of one per folder). Entries stay dicts as
`tree.decode_entries` gives them: an unchanged file's entry is reused, never rebuilt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from .. import tree
from ..errors import IntegrityError, StrongroomError
from ..repository import Repository

_BATCH = 64  # trees per read request

WarnFn = Callable[[str], None]


@dataclass(slots=True)
class OldTree:
    raw: bytes
    entries: dict[str, tree.Entry] | None = None  # decoded on first use

    def by_name(self) -> dict[str, tree.Entry]:
        if self.entries is None:
            self.entries = tree.decode_entries(self.raw)
        return self.entries


class ParentTrees:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._futures: dict[bytes, Future[OldTree]] = {}
        self._queue: list[tuple[bytes, Future[OldTree]]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def prefetch(self, tree_ids: list[bytes]) -> None:
        """Start fetching these trees (in the background, in batches)."""
        with self._cond:
            if self._closed:
                return
            for tree_id in tree_ids:
                if tree_id not in self._futures:
                    future: Future[OldTree] = Future()
                    self._futures[tree_id] = future
                    self._queue.append((tree_id, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="parent-trees", daemon=True)
                self._thread.start()
            self._cond.notify()

    def get(self, tree_id: bytes) -> OldTree:
        """The tree (prefetched or read now); StrongroomError if it cannot be read."""
        with self._cond:
            future = self._futures.pop(tree_id, None)
        if future is None:
            return OldTree(self._read([tree_id])[tree_id])
        return future.result()

    def entries(self, tree_id: bytes | None, warn: WarnFn) -> dict[str, tree.Entry]:
        """The entries of a folder in the parent snapshot, by name ({} if it had none)."""
        if tree_id is None:
            return {}
        try:
            return self.get(tree_id).by_name()
        except IntegrityError as exc:
            # Damaged or lost: this backup reads the folder's files afresh.
            # Anything else (the server or its object store away) ends the backup now: reading
            # and sending every file again would fail the same way, only later.
            warn(f"parent snapshot tree unreadable ({exc}); treating files as new")
            return {}

    def count_files(self, tree_id: bytes | None) -> int:
        """Files (non-folders) below a folder of the parent snapshot: a removed folder's count."""
        total = 0
        todo = [tree_id]
        while todo:
            tid = todo.pop()
            if tid is None:
                continue
            try:
                entries = self.get(tid).by_name()
            except StrongroomError:
                continue
            for e in entries.values():
                if e["type"] == tree.DIR:
                    todo.append(tree.entry_subtree(e))
                else:
                    total += 1
        return total

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _read(self, ids: list[bytes]) -> dict[bytes, bytes]:
        codec = self.repo.codecs.get()
        out = {bid: codec.decode(bid, stored) for bid, stored in self.repo.read_blobs(ids)}
        for tid in ids:
            if tid not in out:
                raise IntegrityError(f"tree {tid.hex()[:16]} is missing")
        return out

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                todo, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
            batch = [tid for tid, _f in todo]
            futures = [f for _t, f in todo]
            try:
                raws = self._read(batch)
            except StrongroomError:
                raws = {}  # read them one by one, so each failure lands on its own tree
                for tid in batch:
                    try:
                        raws.update(self._read([tid]))
                    except StrongroomError as exc:
                        _fail(futures[batch.index(tid)], exc)
            except BaseException as exc:
                for f in futures:
                    _fail(f, exc)
                continue
            for tid, f in todo:
                if tid in raws and not f.done():
                    f.set_result(OldTree(raws[tid]))


def _fail(future: Future[OldTree], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
