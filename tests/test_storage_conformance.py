"""One storage conformance suite, run unchanged against both backends:

- "embedded": an SQLite index and a local packs/ folder (PackStore(root), today's format);
- "scaleout": a PostgreSQL schema and an S3 prefix (real PostgreSQL 15, real Ceph radosgw).

Put, read, list and commit; what commits refuse; GC racing a backup (two-phase deletion, the
horizon); crash ordering (a writer SIGKILLed between the durable object and its index row,
and in the middle of a write); leftover cleanup that spares other writers' writes in progress;
rebuild-index from the packs' trailers; scrub. Where the backends differ on purpose (one
writing process in embedded mode; many nodes in scale-out), the test asks `backend.shared`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_backends import Backend, close_buckets
from strongroom import db as dblayer
from strongroom.db import ConstraintError
from strongroom.errors import IntegrityError, RepositoryError
from strongroom.server.quota import QuotaExceeded
from strongroom.server.stores import UserStore
from strongroom.store import PackStore
from strongroom.store.gc import collect_garbage
from strongroom.store.packstore import RootNotInManifest
from strongroom.store.rebuild import rebuild_index
from strongroom.store.scrub import scrub

pytest_plugins = ["pgfixtures", "s3fixtures"]
pytestmark = pytest.mark.timeout(180)

KiB = 1024
MiB = 1024 * KiB
DATA, TREE = 0, 1
HERE = Path(__file__).parent


@pytest.fixture(params=["embedded", "scaleout"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    storage_id = os.urandom(16).hex()
    if request.param == "embedded":
        spec = {"kind": "embedded", "root": str(tmp_path / "repo"), "storage_id": storage_id}
    else:
        dsn = request.getfixturevalue("pg_dsn")
        bucket = request.getfixturevalue("s3_bucket")
        spec = {
            "kind": "scaleout",
            "dsn": dsn,
            "storage_id": storage_id,
            "s3": {
                "endpoint": bucket.endpoint,
                "region": bucket.region,
                "bucket": bucket.name,
                "access_key": bucket.access_key,
                "secret_key": bucket.secret_key,
                "pack_target": 1 * MiB,  # several packs from little data
            },
        }
    b = Backend(request.param, spec)
    b.shared = request.param == "scaleout"
    yield b
    b.close_all()
    dblayer.close_pools()
    close_buckets()


def new_store(backend: Backend, **kwargs: object) -> PackStore:
    store = backend.open(create=True, **kwargs)
    return store


def other_writer(backend: Backend, store: PackStore) -> PackStore:
    """Another node's store on the same storage (scale-out); embedded mode has one writer."""
    return backend.open(writer=True) if backend.shared else store


def blob(size: int) -> tuple[bytes, bytes]:
    return os.urandom(32), os.urandom(size)


def put(store: PackStore, blobs: list[tuple[bytes, bytes]], blob_type: int = DATA) -> None:
    for bid, data in blobs:
        store.add_blob(bid, blob_type, data)
    store.flush()


def test_put_read_list_commit(backend: Backend) -> None:
    store = new_store(backend)
    data = [blob(n) for n in (100, 5000, 300 * KiB, 700 * KiB, 900 * KiB, 64)]
    root = blob(2000)
    put(store, data)
    put(store, [root], TREE)
    ids = {b for b, _d in data} | {root[0]}
    assert store.all_blob_ids() == ids
    assert len(store.packs()) >= 2 and store.stored_bytes() >= sum(len(d) for _b, d in data)
    assert dict(store.read_blobs([b for b, _d in data])) == dict(data)
    unknown = os.urandom(32)
    assert store.missing([*ids, unknown]) == {unknown}
    assert store.stored([*ids, unknown]) == ids

    with pytest.raises(IntegrityError, match="does not have"):
        store.commit_snapshot("s0", 1, b"rec", [*ids, unknown])
    with pytest.raises(RootNotInManifest):
        store.commit_snapshot("s0", 1, b"rec", ids, root=data[0][0])  # not a tree
    store.commit_snapshot("s1", 10, b"record-1", iter(sorted(ids)), "series", root=root[0])
    with pytest.raises(ConstraintError):
        store.commit_snapshot("s1", 11, b"again", ids)
    assert store.set_protected("s1", True)
    with pytest.raises(RepositoryError, match="protected"):
        store.delete_snapshot("s1")
    store.close()

    # The next run (embedded) or another node (scale-out) sees exactly what was committed.
    again = backend.open(writer=False)
    [row] = again.list_snapshots()
    assert (row.snap_id, row.time_ns, row.record, row.series, row.protected) == (
        "s1", 10, b"record-1", "series", True,
    )  # fmt: skip
    assert abs(row.received_ns - again.db.now_ns()) < 60 * 10**9
    assert again.snapshot_manifest("s1") == ids
    assert again.locate([root[0]])[root[0]].type == TREE
    assert again.read_blob(data[2][0]) == data[2][1]
    assert again.storage_problems() == []
    with pytest.raises(RepositoryError, match="read-only"):
        again.add_blob(os.urandom(32), DATA, b"x" * 100)


def test_a_big_pack(backend: Backend) -> None:
    """A pack well over the multipart threshold (S3: uploaded in parts, several at once)."""
    store = new_store(backend)
    big = [blob(100), blob(18 * MiB)]  # one pack: the target is checked after each blob
    put(store, big)
    assert max(store.packs().values()) >= 18 * MiB
    assert dict(store.read_blobs([b for b, _d in big])) == dict(big)
    assert scrub(store).ok


def test_gc_racing_a_backup(backend: Backend) -> None:
    """Condemn, then delete only what was condemned before the oldest running backup logged
    in: a backup that listed a blob as live may reference it without sending it."""
    store = new_store(backend)
    keep, drop = blob(3000), blob(4000)
    put(store, [keep, drop])
    store.commit_snapshot("old", 1, b"r", [keep[0], drop[0]])

    # A backup logs in (database clock) and learns what is stored.
    login = store.db.now_ns()
    known = store.all_blob_ids()
    assert keep[0] in known
    store.delete_snapshot("old")

    gc = other_writer(backend, store)
    with gc.gc_lock(timeout_s=10):
        report = collect_garbage(gc, horizon_ns=login)
    assert report.newly_condemned == 2 and report.deleted_blobs == 0 and report.waiting_blobs == 2
    assert store.missing([keep[0]]) == {keep[0]}  # hidden from later backups

    # The running backup commits, referencing `keep` without sending it: it is revived.
    store.commit_snapshot("new", 2, b"r", [keep[0]])
    # A later backup that needs `drop` sends it again: stored already, so revived, not copied.
    assert store.revive([drop[0]]) == {drop[0]}
    store.commit_snapshot("newer", 3, b"r", [drop[0]])
    store.delete_snapshot("newer")

    with gc.gc_lock(timeout_s=10):
        collect_garbage(gc, horizon_ns=0)  # condemns `drop`, deletes nothing
        report = collect_garbage(gc)  # no backup runs: horizon = now
    assert report.deleted_blobs == 1
    assert store.read_blob(keep[0]) == keep[1]
    with pytest.raises(IntegrityError):
        store.read_blob(drop[0])
    assert scrub(gc).ok and gc.storage_problems() == []


def test_gc_while_another_writer_backs_up(backend: Backend) -> None:
    """Backups keep committing (new blobs and old ones) while GC repacks and drops packs
    on another writer; afterwards every snapshot reads back and scrub is clean."""
    store = new_store(backend)
    gc = other_writer(backend, store)
    shared = [blob(50 * KiB) for _ in range(20)]
    put(store, shared)
    errors: list[BaseException] = []
    stop = threading.Event()

    def backups() -> None:
        try:
            for i in range(12):
                fresh = [blob(60 * KiB) for _ in range(8)]
                store.revive([b for b, _d in shared[i : i + 5]])
                put(store, fresh)
                store.commit_snapshot(f"s{i}", i, b"r", [b for b, _d in shared[i : i + 5] + fresh])
                if i >= 2:
                    store.delete_snapshot(f"s{i - 2}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    login = store.db.now_ns()  # the backups' session: GC's horizon while it runs
    t = threading.Thread(target=backups)
    t.start()
    runs = deleted = 0
    while not stop.is_set() or runs == 0:
        with gc.gc_lock(timeout_s=30):
            collect_garbage(gc, horizon_ns=0)
            deleted += collect_garbage(gc, horizon_ns=login, repack_threshold=0.1).deleted_blobs
        runs += 1
    t.join()
    assert not errors, errors
    with gc.gc_lock(timeout_s=30):  # the session ended: now what it dropped can go
        collect_garbage(gc, horizon_ns=0)
        deleted += collect_garbage(gc, repack_threshold=0.1).deleted_blobs
    assert deleted > 0
    for snap in store.list_snapshots():
        ids = store.snapshot_manifest(snap.snap_id)
        assert len(dict(store.read_blobs(ids))) == len(ids)
    assert scrub(gc).ok


def _child(backend: Backend, stop_at: str, blobs: list[tuple[bytes, int]], **extra: object) -> None:
    """Run a writer in another process and SIGKILL it at `stop_at` (tests/storage_backends.py
    says what `extra` may ask for)."""
    spec = {**backend.spec, "stop_at": stop_at, "blobs": [(b.hex(), n) for b, n in blobs]}
    spec.update(extra)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "storage_backends.py"), "child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    try:
        line = proc.stdout.readline().strip()
        assert line == stop_at, f"child said {line!r}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("stop_at", ["put-done", "put-started"])
def test_writer_killed_between_object_and_index(backend: Backend, stop_at: str) -> None:
    """SIGKILL after the object is durable but before its index row (or in the middle of
    writing it): the index stays consistent, the leftover goes once no writer can still be
    at it, and the next run stores and commits everything."""
    store = new_store(backend)
    first = [blob(2000) for _ in range(3)]
    put(store, first)
    store.commit_snapshot("before", 1, b"r", [b for b, _d in first])
    packs_before = set(store.packs())
    store.close()

    lost = [(os.urandom(32), 6 * MiB if stop_at == "put-started" else 3000) for _ in range(2)]
    _child(backend, stop_at, lost)

    store = backend.open()
    assert set(store.packs()) == packs_before
    assert store.missing([b for b, _n in lost]) == {b for b, _n in lost}
    leftovers = set(store.objects.names()) - packs_before
    partials = store.objects.partials()
    if backend.shared:
        # Another node might still be writing it: kept until its pending row is older than
        # the grace period (database clock).
        assert leftovers or partials
        store.remove_leftovers()
        assert set(store.objects.names()) - packs_before == leftovers
        store.grace_ns = 0
        store.remove_leftovers()
    assert set(store.objects.names()) == packs_before
    assert store.objects.partials() == []

    again = [(b, os.urandom(n)) for b, n in lost]
    put(store, again)
    store.commit_snapshot("after", 2, b"r", [b for b, _d in first + again])
    assert dict(store.read_blobs([b for b, _d in again])) == dict(again)
    assert scrub(store).ok


@pytest.mark.parametrize("stop_at", ["new-pack-written", "switched", "dropped"])
def test_gc_killed_at_each_step(backend: Backend, stop_at: str) -> None:
    """SIGKILL a GC after it wrote a repacked pack (not switched in), after the switch (old
    pack not deleted yet) and after dropping a pack's rows: the index is consistent, every
    kept blob reads back, and the next GC and cleanup finish the job."""
    store = new_store(backend)
    keep = [blob(40 * KiB) for _ in range(6)]
    gone = [blob(40 * KiB) for _ in range(6)]
    put(store, keep[:3] + gone[:3])  # a pack to repack
    put(store, gone[3:])  # a pack to drop
    put(store, keep[3:])
    store.commit_snapshot("keep", 1, b"r", [b for b, _d in keep])
    store.commit_snapshot("gone", 2, b"r", [b for b, _d in gone])
    store.delete_snapshot("gone")
    store.close()

    _child(backend, stop_at, [], gc=True)

    store = backend.open()
    store.grace_ns = 0  # the killed GC's write is dead
    store.remove_leftovers()
    assert dict(store.read_blobs([b for b, _d in keep])) == dict(keep)
    assert scrub(store).ok and store.storage_problems() == []
    with store.gc_lock():
        collect_garbage(store, horizon_ns=0)
        collect_garbage(store, repack_threshold=0.1)
    assert store.all_blob_ids() == {b for b, _d in keep}
    assert set(store.objects.names()) == set(store.packs())
    assert dict(store.read_blobs([b for b, _d in keep])) == dict(keep) and scrub(store).ok


def _user_stores(backend: Backend, store: PackStore) -> tuple[UserStore, UserStore]:
    """Two nodes' view of one account's store (embedded: one server, one UserStore)."""
    if not backend.shared:
        one = UserStore(store, backend.spec["storage_id"])
        return one, one
    from strongroom.server.nodes import SharedSessions
    from strongroom.server.quota import SharedQuota
    from strongroom.server.schema import migrate

    public = dblayer.postgres_database(backend.spec["dsn"])
    migrate(public)  # the server's own tables: nodes, quota reservations
    out = []
    for node, packs in (("node-a", store), ("node-b", backend.open())):
        SharedSessions(public, node, "127.0.0.1:0", interval_s=5, missed=6).start()
        quota = SharedQuota(node, backend.spec["storage_id"])
        packs.hooks = quota
        quota.store = packs
        out.append(UserStore(packs, backend.spec["storage_id"], quota=quota))
    return out[0], out[1]


def test_quota_holds_for_buffered_and_concurrent_uploads(backend: Backend) -> None:
    """Bytes accepted but not yet in a pack count (scale-out: on every node), so two uploads
    that each fit alone cannot together exceed the quota; a commit must fit too."""
    quota = 1_000_000
    a, b = _user_stores(backend, new_store(backend))
    first = [(os.urandom(32), t, os.urandom(300_000)) for t in (TREE, DATA)]
    second = [(os.urandom(32), DATA, os.urandom(300_000)) for _ in range(2)]
    assert a.put(first, quota) == 2  # buffered (a pack is 1 MiB or more): not indexed yet
    with pytest.raises(QuotaExceeded):
        b.put(second, quota)
    a.flush()
    assert b.put(first, quota) == 0  # already stored: costs nothing
    with pytest.raises(QuotaExceeded):
        b.put(second, quota)
    ids = [bid for bid, _t, _d in first]
    with pytest.raises(QuotaExceeded):
        a.commit("big", 1, os.urandom(500_000), ids, "", root=ids[0], refs=2, quota=quota)
    a.store.commit_snapshot("s", 1, b"r", ids)
    assert a.store.stored_bytes() < quota


def test_leftover_cleanup_spares_writes_in_progress(backend: Backend) -> None:
    """Cleanup removes what is known to be dead (a write older than the grace period, a pack
    GC removed from the index) and never a write in progress. An object no row explains goes
    in embedded mode (one writer: nobody else can have written it) but stays in scale-out
    mode: it may be a pack a database restored from an older backup forgot, for rebuild-index."""
    import blake3

    store = new_store(backend)
    writing = store.write_object([os.urandom(5000)], [])  # durable, pending, not indexed
    orphan = blob(3000)[1]
    orphan_name = blake3.blake3(orphan).hexdigest()
    store.objects.put(orphan_name, [orphan])  # no row at all

    cleaner = other_writer(backend, store)  # another node cleans up when it opens, too
    cleaner.remove_leftovers()
    names = set(store.objects.names())
    assert writing.name in names
    assert (orphan_name in names) == backend.shared

    with store.transaction() as tx:  # the writer finishes: its pending row is still there
        store.claim_pending(tx, writing)
        tx.execute(
            "INSERT INTO packs(name, size, created_ns) VALUES(?, ?, ?)",
            (writing.name, writing.size, tx.now_ns()),
        )
    slow = store.write_object([os.urandom(4000)], [])
    with store.transaction() as tx:  # a dead node's old write (its row is two hours old)
        tx.execute(
            "UPDATE pending_packs SET started_ns = started_ns - ? WHERE name = ?",
            (2 * 3600 * 10**9, slow.name),
        )
    if backend.shared:  # a node opening the store right after a run does not list again
        backend.open()
        assert slow.name in set(store.objects.names())
    cleaner.remove_leftovers()
    assert slow.name not in set(store.objects.names())
    with pytest.raises(RepositoryError, match="grace period"), store.transaction() as tx:
        store.claim_pending(tx, slow)  # ... so the slow writer must not index it
    assert store.storage_problems() == []
    if backend.shared:  # rebuild-index reports it: without a trailer it says nothing
        report = rebuild_index(store)
        assert report.without_trailer == [orphan_name] and report.ok


def test_rebuild_index_from_trailers(backend: Backend) -> None:
    store = new_store(backend, trailers=True)
    kept = [blob(n) for n in (200 * KiB, 500 * KiB, 900 * KiB, 300)]
    put(store, kept)
    store.commit_snapshot("s", 1, b"r", [b for b, _d in kept])
    later = [blob(n) for n in (400 * KiB, 800 * KiB, 100)]
    put(store, later)
    assert len(store.packs()) >= 2

    # Lose the whole index (a database restored from nothing), then rebuild it.
    with store.transaction() as tx:
        tx.execute("DELETE FROM snapshots")
        tx.execute("DELETE FROM blobs")
        tx.execute("DELETE FROM packs")
    if backend.shared:  # nodes that open the store meanwhile do not take the packs away
        before = set(store.objects.names())
        backend.open().remove_leftovers()
        assert set(store.objects.names()) == before
    import blake3

    old_style = os.urandom(1000)  # a pack from before trailers: reported, left alone
    store.objects.put(blake3.blake3(old_style).hexdigest(), [old_style])
    report = rebuild_index(store)
    assert report.ok, report
    assert report.blobs_added == len(kept) + len(later)
    assert len(report.without_trailer) == 1
    assert dict(store.read_blobs([b for b, _d in kept + later])) == dict(kept + later)
    assert rebuild_index(store).packs_added == 0  # idempotent
    assert scrub(store).ok

    # A damaged object is reported and not indexed.
    name = next(iter(store.packs()))
    data = bytearray(store.objects.read_all(name))
    with store.transaction() as tx:
        tx.execute("DELETE FROM blobs WHERE pack = (SELECT id FROM packs WHERE name = ?)", (name,))
        tx.execute("DELETE FROM packs WHERE name = ?", (name,))
    data[10] ^= 1
    store.objects.delete([name])
    store.objects.put(name, [bytes(data)])
    report = rebuild_index(store)
    assert not report.ok and report.damaged and name not in store.packs()


def test_scrub_finds_damage_and_missing_packs(backend: Backend) -> None:
    store = new_store(backend)
    a, b = [blob(3000), blob(4000)], [blob(5000)]
    put(store, a)
    put(store, b)
    store.commit_snapshot("sa", 1, b"r", [x for x, _d in a])
    store.commit_snapshot("sb", 2, b"r", [x for x, _d in b])
    assert scrub(store).ok
    pack_a = store.locate([a[0][0]])[a[0][0]].pack
    pack_b = store.locate([b[0][0]])[b[0][0]].pack
    data = bytearray(store.objects.read_all(pack_a))
    data[store.locate([a[1][0]])[a[1][0]].offset + 10] ^= 0x40  # bit rot in a's second blob
    store.objects.put(pack_a, [bytes(data)])
    store.objects.delete([pack_b])
    report = scrub(store)
    assert not report.ok
    assert report.affected_snapshots == ["sa", "sb"]
    assert any("missing" in p for p in report.problems)
    assert any(pack_b[:16] in p for p in store.storage_problems())
    verified = {bid: ok for bid, ok, _d in store.iter_verified()}
    assert verified[a[0][0]] and not verified[a[1][0]] and not verified[b[0][0]]

    # A pack cut short (its tail never reached the disk or the bucket): damage, not a crash.
    c = [blob(6000), blob(7000)]
    put(store, c)
    pack_c = store.locate([c[1][0]])[c[1][0]].pack
    store.objects.put(pack_c, [store.objects.read_all(pack_c)[:3000]])
    verified = {bid: ok for bid, ok, _d in store.iter_verified()}
    assert not verified[c[0][0]] and not verified[c[1][0]]
    with pytest.raises(IntegrityError, match="damaged"):
        store.read_blob(c[1][0])
    assert any(f"pack {pack_c[:16]} has size 3000" in p for p in store.storage_problems())
