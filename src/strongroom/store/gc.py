"""Garbage collection without any key: the snapshot manifests say which blobs are still used.

Two phases make it safe while backups run (docs/FORMAT.md, "Garbage collection"):

1. *Condemn*: every blob no snapshot references gets `condemned_ns = now`. Condemned blobs are
   hidden from new backups (`PackStore.all_blob_ids` / `missing`), so a backup that starts
   later sends such a blob again, which revives it instead of storing a copy; a commit that
   references one revives it too.
2. *Delete*: a condemned blob is deleted only if it is still unreferenced and was condemned
   before `horizon_ns` — the login time of the oldest backup session still running. A backup
   that could have learned of a blob before it was condemned is therefore always finished (or
   dead) before the blob can go. Local repositories are locked during GC: horizon = now.

Packs whose blobs are all deletable are removed; packs whose deletable share is at least
`repack_threshold` have their live blobs copied into a new pack first. Every step is: write any
new pack durably (unindexed), switch the index in one transaction that re-checks the decision,
then delete old objects (only inside a transaction that re-checks that no index row and no
pending write names them). A crash at any point leaves the index consistent; unindexed objects
are removed later by PackStore.remove_leftovers. Times are the database's clock (`now_ns`): in
scale-out mode the horizon comes from the shared sessions table, in that clock too. Runs on
several nodes are serialised by the caller with `PackStore.gc_lock()` (an advisory lock).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from ..crypto import content_checksum
from ..db import Tx
from .objects import PackMissing
from .packstore import PackStore
from .trailer import TrailerEntry

REPACK_THRESHOLD = 0.3  # repack a pack once this share of its bytes is garbage

Lock = contextlib.AbstractContextManager[Any]


@dataclass
class GcReport:
    snapshots: int = 0
    blobs: int = 0
    unreferenced_blobs: int = 0
    unreferenced_bytes: int = 0
    newly_condemned: int = 0
    waiting_blobs: int = 0  # condemned, but a backup that started earlier may still use them
    deleted_blobs: int = 0
    deleted_packs: int = 0
    repacked_packs: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    dry_run: bool = False

    @property
    def reclaimed_bytes(self) -> int:
        return max(self.bytes_before - self.bytes_after, 0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "reclaimed_bytes": self.reclaimed_bytes}


_UNREFERENCED = (
    "NOT EXISTS (SELECT 1 FROM snapshot_blobs sb WHERE sb.blob = b.id)"  # uses its blob index
)


_CONDEMN = (
    "UPDATE blobs AS b SET condemned_ns = ? WHERE b.condemned_ns IS NULL AND "  # noqa: S608
    + _UNREFERENCED
)


def unreferenced(store: PackStore) -> tuple[int, int]:
    """(count, bytes) of blobs no snapshot references: what a GC can reclaim."""
    rows = store.query(
        f"SELECT COUNT(*), COALESCE(SUM(b.length), 0) FROM blobs b WHERE {_UNREFERENCED}"  # noqa: S608 - constant
    )
    return int(rows[0][0]), int(rows[0][1])


def collect_garbage(
    store: PackStore,
    *,
    horizon_ns: int | Callable[[], int | None] | None = None,
    dry_run: bool = False,
    repack_threshold: float = REPACK_THRESHOLD,
    lock: Lock | None = None,
    step: Callable[[str], None] | None = None,
) -> GcReport:
    """Reclaim the space of unreferenced blobs. `lock` serialises index decisions with the
    server's uploads and commits of the same user; `step` is called between steps (tests use it
    to kill the process at chosen moments).

    `horizon_ns` may be a function, called once the condemn step has committed: then a backup
    that logged in while GC was starting (and may have listed the blobs about to be condemned
    as live) holds the horizon back too. A fixed value must already account for it. None: no
    backup runs (a local repository's writer lock keeps them out)."""
    guard: Lock = lock if lock is not None else contextlib.nullcontext()
    report = GcReport(dry_run=dry_run)
    report.bytes_before = store.stored_bytes()
    report.snapshots = int(store.query("SELECT COUNT(*) FROM snapshots")[0][0])
    report.blobs = int(store.query("SELECT COUNT(*) FROM blobs")[0][0])
    report.unreferenced_blobs, report.unreferenced_bytes = unreferenced(store)
    if dry_run:
        # An upper bound: partly-garbage packs below the repack threshold are kept.
        report.bytes_after = report.bytes_before - report.unreferenced_bytes
        return report

    with guard, store.transaction() as db:
        # Read under the index lock: whoever listed these blobs as live did so before this.
        now = db.now_ns()
        report.newly_condemned = db.execute(
            _CONDEMN,
            (now,),
        ).rowcount
    _notify(step, "condemned")
    given = horizon_ns() if callable(horizon_ns) else horizon_ns
    horizon = store.db.now_ns() if given is None else given

    for pack_id, pack_name, pack_size in _packs_with_garbage(store, horizon):
        with guard:
            plan = _plan(store, pack_id, horizon)
        if plan is None or not plan.dead:
            continue
        dead_bytes = sum(length for _i, _o, length in plan.dead)
        if plan.live and dead_bytes < repack_threshold * pack_size:
            continue
        if plan.live:
            if _repack(store, plan, pack_name, horizon, guard, step):
                report.repacked_packs += 1
                report.deleted_blobs += len(plan.dead)
        elif _drop(store, plan, pack_name, horizon, guard, step):
            report.deleted_packs += 1
            report.deleted_blobs += len(plan.dead)
    report.waiting_blobs = int(
        store.query(
            f"SELECT COUNT(*) FROM blobs b WHERE b.condemned_ns IS NOT NULL AND {_UNREFERENCED}"  # noqa: S608 - constant
        )[0][0]
    ) - _deletable_count(store, horizon)
    report.bytes_after = store.stored_bytes()
    return report


@dataclass
class _Plan:
    pack_id: int
    live: list[tuple[int, bytes, int, int, int, bytes]]  # row id, blob_id, type, offset, len, sum
    dead: list[tuple[int, int, int]]  # row id, offset, length


def _deletable_sql() -> str:
    return f"b.condemned_ns IS NOT NULL AND b.condemned_ns < ? AND {_UNREFERENCED}"


def _deletable_count(store: PackStore, horizon: int) -> int:
    return int(
        store.query(f"SELECT COUNT(*) FROM blobs b WHERE {_deletable_sql()}", (horizon,))[0][0]  # noqa: S608 - constant
    )


def _packs_with_garbage(store: PackStore, horizon: int) -> Iterator[tuple[int, str, int]]:
    rows = store.query(
        "SELECT p.id, p.name, p.size FROM packs p WHERE EXISTS "  # noqa: S608 - constant
        f"(SELECT 1 FROM blobs b WHERE b.pack = p.id AND {_deletable_sql()}) ORDER BY p.id",
        (horizon,),
    )
    for r in rows:
        yield int(r[0]), str(r[1]), int(r[2])


def _plan(store: PackStore, pack_id: int, horizon: int) -> _Plan | None:
    rows = store.query(
        'SELECT b.id, b.blob_id, b.type, b."offset", b.length, b.checksum, '  # noqa: S608 - constant
        f"CASE WHEN {_deletable_sql()} THEN 1 ELSE 0 END "
        'FROM blobs b WHERE b.pack = ? ORDER BY b."offset"',
        (horizon, pack_id),
    )
    plan = _Plan(pack_id, [], [])
    for r in rows:
        if r[6]:
            plan.dead.append((int(r[0]), int(r[3]), int(r[4])))
        else:
            plan.live.append((int(r[0]), bytes(r[1]), int(r[2]), int(r[3]), int(r[4]), bytes(r[5])))
    return plan


def _still_dead(db: Tx, plan: _Plan, horizon: int) -> bool:
    """Inside the switching transaction: are the pack's deletable blobs exactly the planned
    dead ones (nothing revived or referenced since, nothing else added)? One query, not one
    per blob: on PostgreSQL every statement is a round trip."""
    rows = db.query(
        f"SELECT b.id FROM blobs b WHERE b.pack = ? AND {_deletable_sql()}",  # noqa: S608 - constant
        (plan.pack_id, horizon),
    )
    if {int(r[0]) for r in rows} != {row_id for row_id, _o, _n in plan.dead}:
        return False
    count = db.execute("SELECT COUNT(*) FROM blobs WHERE pack = ?", (plan.pack_id,)).scalar()
    return bool(count == len(plan.dead) + len(plan.live))


def _delete_dead(db: Tx, plan: _Plan, horizon: int) -> None:
    """The planned dead rows, which `_still_dead` just found to be all the deletable ones."""
    db.execute(
        f"DELETE FROM blobs WHERE pack = ? AND id IN (SELECT b.id FROM blobs b WHERE b.pack = ? "  # noqa: S608 - constant
        f"AND {_deletable_sql()})",
        (plan.pack_id, plan.pack_id, horizon),
    )


def _drop(
    store: PackStore,
    plan: _Plan,
    pack_name: str,
    horizon: int,
    guard: Lock,
    step: Callable[[str], None] | None,
) -> bool:
    with guard, store.transaction() as db:
        if not _still_dead(db, plan, horizon):
            return False
        _delete_dead(db, plan, horizon)
        db.execute("DELETE FROM packs WHERE id = ?", (plan.pack_id,))
        store.doom(db, pack_name)
    _notify(step, "dropped")
    store.delete_unused_objects([pack_name])
    return True


def _repack(
    store: PackStore,
    plan: _Plan,
    pack_name: str,
    horizon: int,
    guard: Lock,
    step: Callable[[str], None] | None,
) -> bool:
    parts: list[bytes] = []
    entries: list[tuple[int, int, int]] = []  # row id, new offset, length
    trailer: list[TrailerEntry] = []
    offset = 0
    ranges = [(old_off, length) for _r, _b, _t, old_off, length, _c in plan.live]
    try:
        datas = list(store.objects.read_ranges(pack_name, ranges))
    except PackMissing:
        return False
    for (row_id, bid, btype, _old, length, checksum), data in zip(plan.live, datas, strict=True):
        if len(data) != length or content_checksum(data) != checksum:
            return False  # damaged: leave the pack alone for scrub to report
        parts.append(data)
        entries.append((row_id, offset, length))
        trailer.append(TrailerEntry(bid, btype, offset, length, checksum))
        offset += length
    new = store.write_object(parts, trailer)
    _notify(step, "new-pack-written")
    switched = False
    try:
        with guard, store.transaction() as db:
            if not _still_dead(db, plan, horizon):
                return False
            store.claim_pending(db, new)
            new_id = db.execute(
                "INSERT INTO packs(name, size, created_ns) VALUES(?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET size=excluded.size RETURNING id",
                (new.name, new.size, db.now_ns()),
            ).scalar()
            db.executemany(
                'UPDATE blobs SET pack = ?, "offset" = ? WHERE id = ?',
                [(new_id, off, row_id) for row_id, off, _n in entries],
            )
            _delete_dead(db, plan, horizon)
            db.execute("DELETE FROM packs WHERE id = ?", (plan.pack_id,))
            if new.name != pack_name:
                store.doom(db, pack_name)
            switched = True
    finally:
        if not switched:  # its pending row goes, and the object unless someone indexed it
            store.discard_object(new)
    _notify(step, "switched")
    if new.name != pack_name:
        store.delete_unused_objects([pack_name])
    return True


def _notify(step: Callable[[str], None] | None, name: str) -> None:
    if step is not None:
        step(name)
