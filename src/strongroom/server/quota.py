"""Quotas that hold exactly across nodes (scale-out).

Two nodes may take one user's uploads at once, each buffering blobs before a pack is stored
and indexed. Each node therefore books what it accepted and has not indexed yet in
`quota_reservations` (one row per node and storage), and every check counts, under the store's
own lock (its exclusive transaction, the same one that indexes packs and commits snapshots on
every node): the index's charge + the reservations of live nodes + what is asked for now.
The store calls `indexed` inside the transaction that indexes a pack (the reservation shrinks
by what became index rows, so nothing is counted twice or not at all) and `committing` inside
the commit's transaction. A node that dies takes its reservations with it (server/nodes.py).
"""

from __future__ import annotations

from ..db import Tx
from ..errors import StrongroomError
from ..store import PackStore
from ..store.trailer import TrailerEntry, encode

# What the quota charges besides pack bytes, so that nothing a user stores is free: an index
# row per blob, and per snapshot its record, its row and one manifest row per referenced blob.
BLOB_CHARGE = 64
SNAPSHOT_CHARGE = 256
MANIFEST_REF_CHARGE = 16
# Scale-out packs end with a trailer index (store/trailer.py): per blob an entry (its 32-byte
# ID and fixed fields), per pack a footer. A reservation counts the footer per blob too, so it
# never counts less than the pack will hold.
TRAILER_PER_BLOB = len(encode([TrailerEntry(bytes(32), 0, 0, 0, bytes(32))]))  # entry + footer
RESERVED_PER_BLOB = BLOB_CHARGE + TRAILER_PER_BLOB


class QuotaExceeded(StrongroomError):
    pass


def charge(counts: tuple[int, int, int, int, int]) -> int:
    """What the quota counts for an index: (pack bytes, blob rows, snapshot rows, record
    bytes, manifest rows) as PackStore.charge_counts gives them."""
    packs, blobs, snapshots, records, refs = counts
    return (
        packs
        + blobs * BLOB_CHARGE
        + snapshots * SNAPSHOT_CHARGE
        + records
        + refs * MANIFEST_REF_CHARGE
    )


def refuse_blobs(quota: int, used: int, need: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"quota of {quota} bytes exceeded ({used} bytes used, {need} more needed); ask the "
        "admin for more space or forget old snapshots"
    )


def refuse_snapshot(quota: int, used: int, need: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"quota of {quota} bytes exceeded ({used} bytes used, {need} more needed for the "
        "snapshot's record and manifest); ask the admin for more space or forget old snapshots"
    )


class SharedQuota:
    """StoreHooks for one user's store on one node."""

    def __init__(self, node_id: str, storage_id: str) -> None:
        self.node_id = node_id
        self.storage_id = storage_id
        self.store: PackStore | None = None  # set once the store is open
        self.commit_check: tuple[int, int] | None = None  # (quota, need) of a commit under way

    def used(self, tx: Tx) -> int:
        assert self.store is not None
        booked = tx.execute(
            "SELECT COALESCE(SUM(r.bytes), 0) FROM quota_reservations r "
            "JOIN nodes n ON n.node_id = r.node_id WHERE r.storage_id = ? AND n.expires_ns > ?",
            (self.storage_id, tx.now_ns()),
        ).scalar()
        return charge(self.store.charge_counts(tx)) + int(booked)

    def reserve(self, quota: int, blobs: int, blob_bytes: int) -> None:
        """Book room for new blobs this node is about to buffer, or QuotaExceeded."""
        assert self.store is not None
        need = blob_bytes + blobs * RESERVED_PER_BLOB
        with self.store.db.transaction() as tx:
            used = self.used(tx)
            if used + need > quota:
                raise refuse_blobs(quota, used, need)
            tx.execute(
                "INSERT INTO quota_reservations(node_id, storage_id, bytes) VALUES(?, ?, ?) "
                "ON CONFLICT(node_id, storage_id) DO UPDATE SET "
                "bytes = quota_reservations.bytes + excluded.bytes",
                (self.node_id, self.storage_id, need),
            )

    def indexed(self, tx: Tx, blobs: int, stored_bytes: int) -> None:
        tx.execute(
            "UPDATE quota_reservations SET bytes = CASE WHEN bytes > ? THEN bytes - ? ELSE 0 END "
            "WHERE node_id = ? AND storage_id = ?",
            (*([stored_bytes + blobs * RESERVED_PER_BLOB] * 2), self.node_id, self.storage_id),
        )

    def committing(self, tx: Tx) -> None:
        if self.commit_check is None:
            return
        quota, need = self.commit_check
        used = self.used(tx)
        if used + need > quota:
            raise refuse_snapshot(quota, used, need)

    def settle(self) -> None:
        """Nothing of this node is buffered any more (after a flush): no reservation left
        (blobs another node indexed first were never counted by `indexed`)."""
        assert self.store is not None
        self.store.db.execute(
            "DELETE FROM quota_reservations WHERE node_id = ? AND storage_id = ?",
            (self.node_id, self.storage_id),
        )
