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
from .userdb import User

# What the quota charges besides pack bytes, so that nothing a user stores is free: an index
# row per blob, and per snapshot its record, its row and one manifest row per referenced blob.
BLOB_CHARGE = 64
SNAPSHOT_CHARGE = 256
MANIFEST_REF_CHARGE = 16
# The smallest stored blob a client can produce: nonce (12) + one flag byte + GCM tag (16).
MIN_STORED_BLOB = 29


class QuotaExceeded(StrongroomError):
    pass


class SnapshotLimit(StrongroomError):
    pass


def metadata_charge(store: PackStore) -> int:
    """What the quota charges for a store's index: its blob rows, snapshot rows and records,
    and manifest rows (counted; used by the server's quota and the admin's `usage`)."""
    row = store.query(
        "SELECT (SELECT COUNT(*) FROM blobs), (SELECT COUNT(*) FROM snapshots), "
        "(SELECT COALESCE(SUM(LENGTH(record)), 0) FROM snapshots), "
        "(SELECT COUNT(*) FROM snapshot_blobs)"
    )[0]
    blobs, snapshots, records, refs = (int(v) for v in row)
    return blobs * BLOB_CHARGE + snapshots * SNAPSHOT_CHARGE + records + refs * MANIFEST_REF_CHARGE


def retention_candidates(rows: list[SnapshotRow], user: User) -> list[Candidate]:
    """The times the server's policy judges by. An append-only account's snapshots count from
    when the server received them: a client holding its password cannot date forged snapshots
    into the calendar buckets of genuine ones. Other accounts may delete anyway, so their own
    time counts (imports with `backup --time` keep their dates), but never a future one."""
    if user.append_only:
        return [Candidate(r.snap_id, r.received_ns, r.series, r.protected) for r in rows]
    return [
        Candidate(r.snap_id, min(r.time_ns, r.received_ns), r.series, r.protected) for r in rows
    ]


def decide(rows: list[SnapshotRow], user: User, policy: Policy) -> list[Decision]:
    """The policy's decisions, with the append-only protection window applied on top: a
    snapshot received within the window is kept whatever else was committed since."""
    decisions = apply_policy(retention_candidates(rows, user), policy)
    if not user.append_only or user.protect_window_s <= 0:
        return decisions
    cutoff = time.time_ns() - user.protect_window_s * 1_000_000_000
    received = {r.snap_id: r.received_ns for r in rows}
    reason = f"received within the append-only protection window ({user.protect_window_s} s)"
    return [
        Decision(d.candidate, True, [*d.reasons, reason])
        if not d.keep and received[d.candidate.id] >= cutoff
        else d
        for d in decisions
    ]


class StorageMissing(RepositoryError):
    pass


class UserStore:
    def __init__(self, path: Path, *, create: bool = True) -> None:
        if not (path / "index.sqlite").is_file():
            if not create:
                raise StorageMissing("this account's storage is missing; ask the admin")
            PackStore.create(path, meta={"repo_id": path.name.encode()}).close()
        self.store = PackStore(path, writer=True)
        self.lock = threading.Lock()
        # One GC at a time per user (after a backup, from the admin socket, a client's prune):
        # two runs repacking the same pack would write and remove the same new file.
        self.gc_lock = threading.Lock()
        # Open connections of this user -> their login time. GC deletes a condemned blob only
        # if it was condemned before the oldest of these logged in (store/gc.py).
        self.sessions: dict[object, int] = {}
        self._metadata: int | None = None  # the quota's metadata charge (metadata_bytes)

    def put(self, blobs: list[tuple[bytes, int, bytes]], quota: int | None = None) -> int:
        """Store the blobs this store does not have yet; returns how many were new.

        With a quota, refuses (QuotaExceeded, nothing stored) if the new ones would not fit;
        blobs already stored cost nothing."""
        for _bid, blob_type, data in blobs:
            if blob_type not in (BlobType.DATA, BlobType.TREE):
                raise ValueError(f"unknown blob type {blob_type}")
            if len(data) < MIN_STORED_BLOB:
                raise ValueError(f"a stored blob has at least {MIN_STORED_BLOB} bytes")
        with self.lock:
            ids = [b[0] for b in blobs]
            if quota is not None:
                have = self.store.stored(ids)
                need = sum(len(d) + BLOB_CHARGE for bid, _t, d in blobs if bid not in have)
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
            counted = self._metadata  # GC may reset it from another thread meanwhile
            if counted is not None:
                self._metadata = counted + added * BLOB_CHARGE
            return added

    def flush(self) -> None:
        with self.lock:
            self.store.flush()

    def used_bytes(self) -> int:
        """What a quota counts: bytes stored, bytes buffered for the next pack, and the
        metadata charge (index rows, snapshot records and manifests)."""
        return self.store.stored_bytes() + self.store.buffered_bytes() + self.metadata_bytes()

    def metadata_bytes(self) -> int:
        # Counted once, then kept up to date by puts; commits, deletes and GC (rare, and
        # able to change any term) make it count again.
        if self._metadata is None:
            self._metadata = self._count_metadata()
        return self._metadata

    def invalidate_usage(self) -> None:
        self._metadata = None

    def _count_metadata(self) -> int:
        return metadata_charge(self.store)

    def commit(
        self,
        snap_id: str,
        time_ns: int,
        record: bytes,
        manifest: Iterable[bytes],
        series: str,
        *,
        root: bytes,
        refs: int,
        quota: int | None = None,
        max_snapshots: int | None = None,
    ) -> None:
        """Commit under the user's lock, after checking the account's snapshot count and
        that the snapshot's own charge (record, row, `refs` manifest rows) fits the quota."""
        with self.lock:
            if max_snapshots is not None:
                count = int(self.store.query("SELECT COUNT(*) FROM snapshots")[0][0])
                if count >= max_snapshots:
                    raise SnapshotLimit(
                        f"this account holds {count} snapshots, the server's limit; forget old "
                        "snapshots or ask the admin for a retention policy"
                    )
            if quota is not None:
                need = len(record) + SNAPSHOT_CHARGE + refs * MANIFEST_REF_CHARGE
                used = self.used_bytes()
                if used + need > quota:
                    raise QuotaExceeded(
                        f"quota of {quota} bytes exceeded ({used} bytes used, {need} more "
                        "needed for the snapshot's record and manifest); ask the admin for "
                        "more space or forget old snapshots"
                    )
            self.store.flush()
            try:
                self.store.commit_snapshot(snap_id, time_ns, record, manifest, series, root=root)
            finally:
                self._metadata = None

    def horizon(self, exclude: object = None, *, bound: int | None = None) -> int:
        """Login time of the oldest other session, at most `bound`; now if there is none."""
        sessions = dict(self.sessions)  # one copy: logins and logouts run in other threads
        others = [t for token, t in sessions.items() if token is not exclude]
        if not others:
            return time.time_ns()
        return min(others) if bound is None else min(*others, bound)

    def gc(self, *, dry_run: bool = False, exclude: object = None) -> GcReport:
        with self.gc_lock:
            try:
                return self._gc(dry_run=dry_run, exclude=exclude)
            finally:
                self._metadata = None

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

    def apply_policy(self, policy: Policy, user: User) -> list[Decision]:
        """The server's own retention: needs no key, only times, series and protection."""
        with self.lock:  # judged and removed together: no commit slips in between
            decisions = decide(self.store.list_snapshots(), user, policy)
            # One transaction (one fsync) for all of them, instead of one per snapshot.
            self.store.delete_snapshots(d.candidate.id for d in decisions if not d.keep)
            self._metadata = None
        return decisions

    def delete_snapshot(self, snap_id: str) -> bool:
        with self.lock:
            try:
                return self.store.delete_snapshot(snap_id)
            finally:
                self._metadata = None

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
        """Open (or share) a user's store. Never creates one: the admin tool makes it with the
        account, and a store being purged must not come back because a login raced the purge."""
        with self._lock:
            store = self._open.get(storage_id)
            if store is None:
                try:
                    store = UserStore(path, create=False)
                except OSError as exc:
                    raise RepositoryError(f"cannot open user storage: {exc.strerror}") from None
                self._open[storage_id] = store
            store.sessions[token] = time.time_ns()
            return store

    def is_open(self, storage_id: str) -> bool:
        with self._lock:
            return storage_id in self._open

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
