"""One open PackStore per user, shared by that user's connections.

The server is the only writer of a user's storage, so it opens each store once (holding the
store's writer lock) and serialises the calls that add or flush blobs behind a per-user lock:
two backups of the same user then never see each other's half-flushed packs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..blobs import BlobType
from ..errors import RepositoryError, StrongroomError
from ..retention import Candidate, Decision, Policy, apply_policy
from ..store import PackStore, SnapshotRow
from ..store.gc import GcReport, collect_garbage


class QuotaExceeded(StrongroomError):
    pass


class UserStore:
    def __init__(self, path: Path) -> None:
        if not (path / "index.sqlite").is_file():
            PackStore.create(path, meta={"repo_id": path.name.encode()}).close()
        self.store = PackStore(path, writer=True)
        self.lock = threading.Lock()
        # One GC at a time per user (after a backup, from the admin socket, a client's prune):
        # two runs repacking the same pack would write and remove the same new file.
        self.gc_lock = threading.Lock()
        # Open connections of this user -> their login time. GC deletes a condemned blob only
        # if it was condemned before the oldest of these logged in (store/gc.py).
        self.sessions: dict[object, int] = {}

    def put(self, blobs: list[tuple[bytes, int, bytes]], quota: int | None = None) -> int:
        """Store the blobs this store does not have yet; returns how many were new.

        With a quota, refuses (QuotaExceeded, nothing stored) if the new ones would not fit;
        blobs already stored cost nothing."""
        for _bid, blob_type, _data in blobs:
            if blob_type not in (BlobType.DATA, BlobType.TREE):
                raise ValueError(f"unknown blob type {blob_type}")
        with self.lock:
            ids = [b[0] for b in blobs]
            if quota is not None:
                have = self.store.stored(ids)
                need = sum(len(d) for bid, _t, d in blobs if bid not in have)
                used = self.used_bytes()
                if need and used + need > quota:
                    raise QuotaExceeded(
                        f"quota of {quota} bytes exceeded ({used} bytes used, {need} more "
                        "needed); ask the admin for more space or forget old snapshots"
                    )
            # Stored ones are skipped (another machine of this user sent them), and revived if
            # GC had condemned them: this backup is about to reference them.
            present = self.store.revive(ids)
            added = 0
            for bid, blob_type, data in blobs:
                if bid not in present and self.store.add_blob(bid, blob_type, data):
                    added += 1
            return added

    def flush(self) -> None:
        with self.lock:
            self.store.flush()

    def used_bytes(self) -> int:
        """Bytes stored plus bytes buffered for the next pack (what a quota counts)."""
        return self.store.stored_bytes() + self.store.buffered_bytes()

    def commit(
        self,
        snap_id: str,
        time_ns: int,
        record: bytes,
        manifest: Iterable[bytes],
        series: str = "",
    ) -> None:
        with self.lock:
            self.store.flush()
            self.store.commit_snapshot(snap_id, time_ns, record, manifest, series)

    def horizon(self, exclude: object = None, *, bound: int | None = None) -> int:
        """Login time of the oldest other session, at most `bound`; now if there is none."""
        sessions = dict(self.sessions)  # one copy: logins and logouts run in other threads
        others = [t for token, t in sessions.items() if token is not exclude]
        if not others:
            return time.time_ns()
        return min(others) if bound is None else min(*others, bound)

    def gc(self, *, dry_run: bool = False, exclude: object = None) -> GcReport:
        with self.gc_lock:
            return self._gc(dry_run=dry_run, exclude=exclude)

    def _gc(self, *, dry_run: bool, exclude: object) -> GcReport:
        if dry_run:
            return collect_garbage(self.store, dry_run=True, lock=self.lock)
        # Condemn first, deleting nothing; only then read the open sessions. A session that
        # logged in before the condemning may have listed those blobs as live and be about to
        # reference them without sending them (read before, a session that logged in while GC
        # waited for the lock was missed). The condemning's time stamp is taken before that
        # wait, so any session open now holds back what this run condemned: bound=started.
        started = time.time_ns()
        first = collect_garbage(self.store, horizon_ns=0, lock=self.lock)
        horizon = self.horizon(exclude, bound=started)
        report = collect_garbage(self.store, horizon_ns=horizon, lock=self.lock)
        report.newly_condemned += first.newly_condemned
        report.bytes_before = first.bytes_before
        return report

    def apply_policy(self, policy: Policy) -> list[Decision]:
        """The server's own retention: needs no key, only times, series and protection."""
        rows = self.store.list_snapshots()
        candidates = [Candidate(r.snap_id, r.time_ns, r.series, r.protected) for r in rows]
        decisions = apply_policy(candidates, policy)
        # One transaction (one fsync) for all of them, instead of one per snapshot.
        self.store.delete_snapshots(d.candidate.id for d in decisions if not d.keep)
        return decisions

    def snapshots(self) -> list[SnapshotRow]:
        return self.store.list_snapshots()

    def read(self, blob_ids: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        return self.store.read_blobs(blob_ids)

    def close(self) -> None:
        self.store.close()


class StoreRegistry:
    def __init__(self, storage_root: Path) -> None:
        self.root = storage_root
        self._open: dict[str, UserStore] = {}
        self._lock = threading.Lock()

    def acquire(self, storage_id: str, path: Path, token: object) -> UserStore:
        with self._lock:
            store = self._open.get(storage_id)
            if store is None:
                try:
                    store = UserStore(path)
                except OSError as exc:
                    raise RepositoryError(f"cannot open user storage: {exc.strerror}") from None
                self._open[storage_id] = store
            store.sessions[token] = time.time_ns()
            return store

    def release(self, storage_id: str, token: object) -> None:
        with self._lock:
            store = self._open.get(storage_id)
            if store is None:
                return
            store.sessions.pop(token, None)
            if not store.sessions:
                del self._open[storage_id]
                store.close()

    def close_all(self) -> None:
        with self._lock:
            for store in self._open.values():
                store.close()
            self._open.clear()
