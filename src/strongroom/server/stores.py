"""One open PackStore per user and node, shared by that user's connections on the node.

A node opens each store once (in embedded mode holding the store's writer lock: the server is
its only writer) and serialises the calls that add or flush blobs behind a per-user lock: two
backups of the same user then never see each other's half-flushed packs. In scale-out mode
other nodes write the same store at once; the store's own transactions, the sessions table
(GC's horizon) and the quota reservations (server/quota.py) make that safe.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..blobs import BlobType
from ..errors import RepositoryError, StrongroomError
from ..retention import Candidate, Decision, Policy, apply_policy
from ..store import PackStore, SnapshotRow
from ..store.gc import GcReport, collect_garbage
from .backend import Storage, StorageMissing
from .nodes import LocalSessions, SessionRegistry
from .quota import (
    BLOB_CHARGE,
    MANIFEST_REF_CHARGE,
    SNAPSHOT_CHARGE,
    QuotaExceeded,
    SharedQuota,
    charge,
    refuse_blobs,
    refuse_snapshot,
)
from .userdb import User

__all__ = ["QuotaExceeded", "SnapshotLimit", "StorageMissing", "StoreRegistry", "UserStore"]

# The smallest stored blob a client can produce: nonce (12) + one flag byte + GCM tag (16).
MIN_STORED_BLOB = 29
# How long a new holder waits for the last holder's close (its flush) before giving up.
CLOSE_WAIT_S = 120.0


class SnapshotLimit(StrongroomError):
    pass


def metadata_charge(store: PackStore) -> int:
    """What the quota charges for a store's index besides pack bytes: its blob rows, snapshot
    rows and records, and manifest rows (used by the server's quota and the admin's `usage`)."""
    _packs, blobs, snapshots, records, refs = store.charge_counts()
    return charge((0, blobs, snapshots, records, refs))


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


def decide(
    rows: list[SnapshotRow], user: User, policy: Policy, now_ns: int | None = None
) -> list[Decision]:
    """The policy's decisions, with the append-only protection window applied on top: a
    snapshot received within the window is kept whatever else was committed since."""
    decisions = apply_policy(retention_candidates(rows, user), policy)
    if not user.append_only or user.protect_window_s <= 0:
        return decisions
    now = time.time_ns() if now_ns is None else now_ns  # the store's clock: received_ns's
    cutoff = now - user.protect_window_s * 1_000_000_000
    received = {r.snap_id: r.received_ns for r in rows}
    reason = f"received within the append-only protection window ({user.protect_window_s} s)"
    return [
        Decision(d.candidate, True, [*d.reasons, reason])
        if not d.keep and received[d.candidate.id] >= cutoff
        else d
        for d in decisions
    ]


class UserStore:
    """A user's open store on this node, shared by their connections, with the quota and
    the horizon GC must respect (sessions on every node: server/nodes.py)."""

    def __init__(
        self,
        store: PackStore | Path,
        storage_id: str = "",
        registry: SessionRegistry | None = None,
        quota: SharedQuota | None = None,
    ) -> None:
        if isinstance(store, Path):  # an embedded store by its folder (made if missing)
            if not (store / "index.sqlite").is_file():
                PackStore.create(store, meta={"repo_id": store.name.encode()}).close()
            storage_id, store = store.name, PackStore(store, writer=True)
        self.store = store
        self.storage_id = storage_id
        # This node's sessions of this store -> their login time (embedded mode); scale-out
        # sessions are in the registry (PostgreSQL, every node, the database's clock).
        self.sessions: dict[object, int] = {}
        self.registry: SessionRegistry = registry or LocalSessions()
        self.shared_quota = quota  # scale-out: reservations in PostgreSQL
        self.lock = threading.Lock()
        # One GC at a time per user (after a backup, from the admin socket, a client's prune):
        # two runs repacking the same pack would write and remove the same new file.
        self.gc_lock = threading.Lock()
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
                new = [len(d) for bid, _t, d in blobs if bid not in have]
                need = sum(new) + len(new) * BLOB_CHARGE
                if new and self.shared_quota is not None:
                    self.shared_quota.reserve(quota, len(new), sum(new))
                elif new and (used := self.used_bytes()) + need > quota:
                    raise refuse_blobs(quota, used, need)
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
            self._flush()

    def _flush(self) -> None:
        self.store.flush()
        if self.shared_quota is not None:
            self.shared_quota.settle()  # nothing of this node is buffered any more

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
                count = self.store.count_snapshots()
                if count >= max_snapshots:
                    raise SnapshotLimit(
                        f"this account holds {count} snapshots, the server's limit; forget old "
                        "snapshots or ask the admin for a retention policy"
                    )
            need = len(record) + SNAPSHOT_CHARGE + refs * MANIFEST_REF_CHARGE
            local = quota is not None and self.shared_quota is None
            if local and quota is not None and (used := self.used_bytes()) + need > quota:
                raise refuse_snapshot(quota, used, need)
            self._flush()
            shared = self.shared_quota
            if shared is not None and quota is not None:
                shared.commit_check = (quota, need)  # checked inside the commit's transaction
            try:
                self.store.commit_snapshot(snap_id, time_ns, record, manifest, series, root=root)
            finally:
                self._metadata = None
                if shared is not None:
                    shared.commit_check = None

    def horizon(self, exclude: object = None, *, bound: int | None = None) -> int:
        """Login time of the oldest other session on any node, at most `bound`; now (the
        sessions' clock) if there is none."""
        local = dict(self.sessions)  # one copy: logins and logouts run in other threads
        times = [t for token, t in local.items() if token is not exclude]
        shared = self.registry.oldest_session_ns(self.storage_id, exclude)
        if shared is not None:
            times.append(shared)
        if not times:
            return self.registry.now_ns()
        return min(times) if bound is None else min(*times, bound)

    def gc(self, *, dry_run: bool = False, exclude: object = None) -> GcReport:
        # One run at a time per user: on this node (threads), and across nodes (the store's
        # advisory lock; in embedded mode the same lock within this process).
        with self.gc_lock, self.store.gc_lock():
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
        started = self.registry.now_ns()
        first = collect_garbage(self.store, horizon_ns=0, lock=self.lock)
        horizon = self.horizon(exclude, bound=started)
        report = collect_garbage(self.store, horizon_ns=horizon, lock=self.lock)
        report.newly_condemned += first.newly_condemned
        report.bytes_before = first.bytes_before
        return report

    def apply_policy(self, policy: Policy, user: User) -> list[Decision]:
        """The server's own retention: needs no key, only times, series and protection."""
        with self.lock:  # judged and removed together: no commit slips in between
            decisions = decide(self.store.list_snapshots(), user, policy, self.registry.now_ns())
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
        try:
            self.store.close()  # writes out what is still buffered
        finally:
            if self.shared_quota is not None:
                with contextlib.suppress(StrongroomError):
                    self.shared_quota.settle()


class StoreRegistry:
    """The stores open on this node, one per user, and the sessions that hold them."""

    def __init__(self, storage: Storage, sessions: SessionRegistry, node_id: str = "") -> None:
        self.storage = storage
        self.sessions = sessions
        self.node_id = node_id  # scale-out: books quota reservations under this node
        self._open: dict[str, UserStore] = {}
        self._holders: dict[str, set[object]] = {}
        # Stores being closed by their last holder (outside the lock: a close flushes, which
        # may wait on the object store). Until it ends, the store still holds its writer lock
        # and counts as held: a new holder waits for the close, then opens it again.
        self._closing: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def acquire(
        self, storage_id: str, token: object, *, user_id: int = 0, backup: bool = True
    ) -> UserStore:
        """Open (or share) a user's store. Never creates one: the admin tool makes it with the
        account, and a store being purged must not come back because a login raced the purge.
        A `backup` session holds GC back until it is released; the admin's GC does not."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        while True:
            with self._lock:
                closing = self._closing.get(storage_id)
                if closing is None:
                    store = self._open.get(storage_id)
                    if store is None:
                        store = self._open_store(storage_id)
                        self._open[storage_id] = store
                    self._holders.setdefault(storage_id, set()).add(token)
                    break
            if not closing.wait(max(0.0, deadline - time.monotonic())):
                raise RepositoryError("this account's storage is still being closed; retry")
        if backup:
            store.sessions[token] = self.sessions.now_ns()  # this node's own record
            try:
                self.sessions.login(storage_id, user_id, token)  # scale-out: every node's
            except BaseException:
                self.release(storage_id, token)
                raise
        return store

    def _open_store(self, storage_id: str) -> UserStore:
        quota = SharedQuota(self.node_id, storage_id) if self.storage.kind == "scaleout" else None
        try:
            packs = self.storage.open(storage_id, writer=True, hooks=quota)
        except OSError as exc:
            raise RepositoryError(f"cannot open user storage: {exc.strerror}") from None
        if quota is not None:
            quota.store = packs
        return UserStore(packs, storage_id, self.sessions, quota)

    def is_open(self, storage_id: str) -> bool:
        with self._lock:
            return storage_id in self._open or storage_id in self._closing

    def release(self, storage_id: str, token: object) -> None:
        self.sessions.logout(token)
        with self._lock:
            holders = self._holders.get(storage_id)
            if holders is None:
                return
            holders.discard(token)
            self._open[storage_id].sessions.pop(token, None)
            if holders:
                return
            del self._holders[storage_id]
            store = self._open.pop(storage_id)
            closed = self._closing[storage_id] = threading.Event()
        try:
            store.close()
        finally:
            with self._lock:
                del self._closing[storage_id]
            closed.set()

    def close_all(self) -> None:
        with self._lock:
            for store in self._open.values():
                store.close()
            self._open.clear()
            self._holders.clear()
