"""Garbage collection (store/gc.py): `strongroom prune` end to end, and the two-phase logic and
its races with backups at the PackStore level (no key needed there, so blobs are random bytes).

The rule under test (docs/FORMAT.md, "Garbage collection"): a blob no snapshot references is
first *condemned* (hidden from new backups) and only deleted once it was condemned before
`horizon_ns`, the start of the oldest backup still running. A backup that learned of a blob
before it was condemned therefore always finishes first; one that starts later does not see it
and sends it again, which revives it instead of storing a second copy.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from conftest import Cli, tree_state
from strongroom.blobs import BlobType
from strongroom.errors import IntegrityError
from strongroom.store import PackMissing, PackStore
from strongroom.store.gc import collect_garbage, unreferenced
from strongroom.store.scrub import scrub

KiB = 1024

# ---- looking at a repository from outside (shared with test_gc_crash.py) --------------------


def disk_packs(repo: Path) -> dict[str, int]:
    """Every file below packs/ (name -> size), ``*.tmp`` leftovers included."""
    return {p.name: p.stat().st_size for p in (repo / "packs").glob("*/*")}


def index_db(repo: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{repo / 'index.sqlite'}?mode=ro", uri=True)


def index_packs(repo: Path) -> dict[str, int]:
    db = index_db(repo)
    try:
        return {str(r[0]): int(r[1]) for r in db.execute("SELECT name, size FROM packs")}
    finally:
        db.close()


def index_rows(repo: Path) -> list[tuple[Any, ...]]:
    """Everything GC decides on: blobs with their place and condemnation, and the snapshots."""
    db = index_db(repo)
    try:
        blobs = db.execute(
            "SELECT hex(b.blob_id), p.name, b.offset, b.length, b.condemned_ns "
            "FROM blobs b JOIN packs p ON p.id = b.pack ORDER BY b.blob_id"
        ).fetchall()
        snaps = db.execute("SELECT snap_id FROM snapshots ORDER BY snap_id").fetchall()
        return [*blobs, *snaps]
    finally:
        db.close()


def assert_disk_matches_index(repo: Path) -> None:
    """No leftovers: the files in packs/ are exactly the indexed packs, with their sizes."""
    assert disk_packs(repo) == index_packs(repo)


def unaccounted_bytes(repo: Path) -> int:
    """Bytes inside indexed packs that no indexed blob covers (a blob stored twice, say)."""
    db = index_db(repo)
    try:
        row = db.execute(
            "SELECT COALESCE(SUM(p.size), 0) - (SELECT COALESCE(SUM(length), 0) FROM blobs) "
            "FROM packs p"
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


def pack_bytes(repo: Path) -> int:
    return sum(disk_packs(repo).values())


def write_random(path: Path, size: int, seed: str) -> None:
    path.write_bytes(random.Random(seed).randbytes(size))


def assert_restores(cli: Cli, snap: str, state: dict[Any, tuple[Any, ...]], target: Path) -> None:
    cli.restore(target, snap)
    got = tree_state(target / "src")
    assert got.keys() == state.keys(), sorted(got.keys() ^ state.keys())[:5]
    bad = [k for k in state if state[k] != got[k]]
    assert not bad, f"snapshot {snap[:8]}: {len(bad)} restored entries differ, e.g. {bad[:3]}"


# ---- `strongroom prune` end to end -----------------------------------------------------------


def test_prune_drops_dead_packs_and_repacks_mostly_dead_ones(cli: Cli, tmp_path: Path) -> None:
    """Each local backup writes its new blobs into one pack of its own (they are < 8 MiB), so
    the packs are planned here file by file:

    P1 (S1): b 150K (lives on), a 600K, trees  -> ~80% garbage: repacked
    P2 (S2): c 1M, d 200K, trees               -> S2 is kept: untouched
    P3 (S3): e 500K, trees                     -> all garbage: dropped
    P4 (S4): g 2M (lives on), h 300K, trees    -> ~13% garbage: below the threshold, kept
    P5 (S5): i 200K, trees                     -> kept
    """
    src = tmp_path / "src"
    src.mkdir()
    files = {"b": 150, "a": 600, "c": 1024, "d": 200, "e": 500, "g": 2048, "h": 300, "i": 200}
    plan = [
        ("b", "a"),
        ("b", "c", "d"),
        ("b", "c", "d", "e"),
        ("b", "c", "g", "h"),
        ("b", "c", "g", "i"),
    ]
    snaps: list[str] = []
    states: dict[str, dict[Any, tuple[Any, ...]]] = {}
    for n, names in enumerate(plan):
        for old in src.iterdir():
            if old.stem not in names:
                old.unlink()
        for name in names:
            if not (src / f"{name}.bin").exists():
                write_random(src / f"{name}.bin", files[name] * KiB, name)
        before = set(index_packs(cli.repo))
        snap = cli.backup(src, extra=("--time", f"2025-0{n + 1}-01 12:00"))["snapshot"]
        assert len(set(index_packs(cli.repo)) - before) == 1, "expected one new pack per backup"
        snaps.append(snap)
        states[snap] = tree_state(src)
    s1, s2, s3, s4, s5 = snaps
    cli.run("forget", s1, s3, s4)

    # --dry-run reports and changes nothing: not the index, not a file.
    rows, files_before = index_rows(cli.repo), disk_packs(cli.repo)
    dry = cli.run("prune", "--dry-run", "--json").json()
    assert dry["dry_run"] is True
    assert dry["unreferenced_bytes"] > (600 + 500 + 300) * KiB
    assert dry["deleted_packs"] == dry["repacked_packs"] == dry["newly_condemned"] == 0
    assert index_rows(cli.repo) == rows
    assert disk_packs(cli.repo) == files_before
    text = cli.run("prune", "--dry-run").stdout
    assert "could be reclaimed" in text

    bytes_before = pack_bytes(cli.repo)
    report = cli.run("prune", "--json").json()
    assert report["deleted_packs"] == 1, report
    assert report["repacked_packs"] == 1, report
    assert report["waiting_blobs"] == 0, report
    # a, e and the trees of S1 and S3 are gone; h and S4's trees stay (their pack is kept).
    assert (600 + 500) * KiB < report["reclaimed_bytes"] < (600 + 500 + 300) * KiB, report
    assert pack_bytes(cli.repo) == bytes_before - report["reclaimed_bytes"]
    assert report["bytes_after"] == pack_bytes(cli.repo)
    assert_disk_matches_index(cli.repo)
    assert len(index_packs(cli.repo)) == 4  # P1' (repacked), P2, P4, P5

    for snap in (s2, s5):
        assert_restores(cli, snap, states[snap], tmp_path / f"restore-{snap[:8]}")
    cli.run("check", "--read-data")

    again = cli.run("prune", "--json").json()
    assert again["reclaimed_bytes"] == 0, again
    assert again["deleted_packs"] == again["repacked_packs"] == again["deleted_blobs"] == 0
    assert index_packs(cli.repo) == disk_packs(cli.repo)

    # h was condemned but not deleted (its pack was below the threshold). Backing the same
    # content up again must revive the stored copy, not store a second one nobody indexes.
    write_random(src / "h.bin", 300 * KiB, "h")
    result = cli.backup(src, extra=("--time", "2025-06-01 12:00"))
    assert result["bytes_uploaded"] < 100 * KiB, result  # trees only
    assert unaccounted_bytes(cli.repo) == 0
    states[result["snapshot"]] = tree_state(src)
    cli.run("check", "--read-data")
    assert_restores(cli, result["snapshot"], states[result["snapshot"]], tmp_path / "restore-h")


def test_prune_with_nothing_to_do(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    write_random(tmp_path / "src" / "f.bin", 300 * KiB, "f")
    cli.backup(tmp_path / "src")
    rows = index_rows(cli.repo)
    report = cli.run("prune", "--json").json()
    assert report["unreferenced_blobs"] == report["reclaimed_bytes"] == 0
    assert index_rows(cli.repo) == rows
    assert "0 B reclaimed" in cli.run("prune").stdout


# ---- the two phases, at the PackStore level --------------------------------------------------


def new_store(tmp_path: Path) -> PackStore:
    return PackStore.create(tmp_path / "repo")


def blob(size: int) -> tuple[bytes, bytes]:
    return os.urandom(32), os.urandom(size)


def put_pack(store: PackStore, *blobs: tuple[bytes, bytes]) -> str:
    """Store these blobs as one pack; returns its name."""
    for bid, data in blobs:
        assert store.add_blob(bid, BlobType.DATA, data)
    store.flush()
    packs = {loc.pack for loc in store.locate([b for b, _ in blobs]).values()}
    assert len(packs) == 1
    return packs.pop()


def commit(store: PackStore, name: str, *blobs: tuple[bytes, bytes]) -> None:
    store.commit_snapshot(name, time.time_ns(), b"record", [b for b, _ in blobs])


def condemned_ns(store: PackStore, b: tuple[bytes, bytes]) -> int | None:
    rows = store.query("SELECT condemned_ns FROM blobs WHERE blob_id = ?", (b[0],))
    assert rows, "blob is not in the index"
    return None if rows[0][0] is None else int(rows[0][0])


def indexed(store: PackStore, b: tuple[bytes, bytes]) -> bool:
    return bool(store.query("SELECT 1 FROM blobs WHERE blob_id = ?", (b[0],)))


@pytest.fixture
def garbage(tmp_path: Path) -> tuple[PackStore, dict[str, tuple[bytes, bytes]]]:
    """One pack: x (40K) that only a deleted snapshot used, k (10K) that a live one uses."""
    store = new_store(tmp_path)
    x, k = blob(40 * KiB), blob(10 * KiB)
    put_pack(store, x, k)
    commit(store, "old", x, k)
    commit(store, "new", k)
    assert store.delete_snapshot("old")
    return store, {"x": x, "k": k}


def test_condemned_blobs_are_hidden_but_kept_until_the_horizon(
    garbage: tuple[PackStore, dict[str, tuple[bytes, bytes]]],
) -> None:
    store, b = garbage
    x, k = b["x"], b["k"]
    assert unreferenced(store) == (1, 40 * KiB)
    assert x[0] in store.all_blob_ids()

    horizon = time.time_ns()  # a backup started just before: nothing it could know may go
    report = collect_garbage(store, horizon_ns=horizon)
    assert (report.newly_condemned, report.deleted_blobs, report.waiting_blobs) == (1, 0, 1)
    assert report.reclaimed_bytes == 0
    stamp = condemned_ns(store, x)
    assert stamp is not None and stamp >= horizon
    assert condemned_ns(store, k) is None
    # Hidden from new backups, still stored and readable.
    assert store.all_blob_ids() == {k[0]}
    assert store.missing([x[0], k[0]]) == {x[0]}
    assert store.read_blob(x[0]) == x[1]

    # Condemning again does not restart the clock.
    assert collect_garbage(store, horizon_ns=horizon).newly_condemned == 0
    assert condemned_ns(store, x) == stamp

    # Once the horizon has passed the condemnation, the blob goes (its pack is 80% garbage).
    report = collect_garbage(store, horizon_ns=time.time_ns())
    assert (report.deleted_blobs, report.repacked_packs, report.waiting_blobs) == (1, 1, 0)
    assert not indexed(store, x)
    assert store.read_blob(k[0]) == k[1]
    assert_disk_matches_index(store.root)
    store.close()


def test_revive_uncondemns(garbage: tuple[PackStore, dict[str, tuple[bytes, bytes]]]) -> None:
    store, b = garbage
    x, k = b["x"], b["k"]
    collect_garbage(store, horizon_ns=0)
    assert condemned_ns(store, x) is not None
    unknown = os.urandom(32)
    session_start = time.time_ns()
    assert store.revive([x[0], k[0], unknown]) == {x[0], k[0]}  # every stored one
    assert condemned_ns(store, x) is None
    assert x[0] in store.all_blob_ids() and not store.missing([x[0]])
    # Still unreferenced: a GC condemns it anew, but while the reviving session runs it stays.
    report = collect_garbage(store, horizon_ns=session_start)
    assert (report.newly_condemned, report.deleted_blobs) == (1, 0)
    assert store.read_blob(x[0]) == x[1]
    store.close()


def test_commit_referencing_a_condemned_blob_uncondemns_it(
    garbage: tuple[PackStore, dict[str, tuple[bytes, bytes]]],
) -> None:
    store, b = garbage
    x, k = b["x"], b["k"]
    collect_garbage(store, horizon_ns=0)
    assert x[0] not in store.all_blob_ids()
    commit(store, "again", x, k)
    assert condemned_ns(store, x) is None
    assert x[0] in store.all_blob_ids()
    report = collect_garbage(store)  # horizon = now: would delete anything still condemned
    assert report.deleted_blobs == report.newly_condemned == 0
    assert store.read_blob(x[0]) == x[1]
    store.close()


def test_race_backup_that_knew_the_blob_before_it_was_condemned(
    garbage: tuple[PackStore, dict[str, tuple[bytes, bytes]]],
) -> None:
    """Backup B starts, learns x is stored (so it will not send it), then GC runs while B is
    still running: the horizon is B's start, so x is condemned but must survive, and B's
    commit, which references x without having sent it, succeeds."""
    store, b = garbage
    x, k = b["x"], b["k"]
    backup_start = time.time_ns()
    known = store.all_blob_ids()  # what B's archiver dedups against
    assert x[0] in known

    report = collect_garbage(store, horizon_ns=backup_start)
    assert (report.newly_condemned, report.deleted_blobs, report.waiting_blobs) == (1, 0, 1)
    assert report.repacked_packs == report.deleted_packs == 0
    assert indexed(store, x)

    # B finishes: x and k are in `known`, so it sends nothing and commits.
    store.commit_snapshot("B", backup_start, b"record", [x[0], k[0]])
    assert condemned_ns(store, x) is None
    report = collect_garbage(store)
    assert report.deleted_blobs == 0
    assert store.read_blob(x[0]) == x[1]
    assert_disk_matches_index(store.root)
    store.close()


def test_race_control_ignoring_the_running_backup_breaks_its_commit(
    garbage: tuple[PackStore, dict[str, tuple[bytes, bytes]]],
) -> None:
    """The same race with a GC that ignores B (horizon = now): x is deleted under B, and B's
    commit is refused rather than recording a snapshot with a hole. This is what the horizon
    is for."""
    store, b = garbage
    x, k = b["x"], b["k"]
    assert x[0] in store.all_blob_ids()  # B learns it
    report = collect_garbage(store)
    assert report.deleted_blobs == 1
    with pytest.raises(IntegrityError, match="does not have"):
        store.commit_snapshot("B", time.time_ns(), b"record", [x[0], k[0]])
    assert [row.snap_id for row in store.list_snapshots()] == ["new"]
    store.close()


@pytest.mark.parametrize("path", ["server", "local"])
def test_race_backup_starting_after_condemnation_sends_again_and_revives(
    garbage: tuple[PackStore, dict[str, tuple[bytes, bytes]]], path: str
) -> None:
    """x was condemned before backup B2 started: B2 does not see it, so it sends it. The server
    revives it before storing (UserStore.put); a local backup (its own process, opening the
    store after that GC) gets the same from add_blob. Either way no second copy is written, a
    GC running before B2 commits (horizon = B2's start) leaves x alone, and the commit
    succeeds."""
    store, b = garbage
    x, k = b["x"], b["k"]
    collect_garbage(store, horizon_ns=0)
    assert condemned_ns(store, x) is not None
    stored_before = store.stored_bytes()
    if path == "local":
        store.close()
        store = PackStore(store.root, writer=True)

    b2_start = time.time_ns()
    assert x[0] not in store.all_blob_ids()
    assert store.missing([x[0], k[0]]) == {x[0]}
    if path == "server":
        present = store.revive([x[0]])
        assert present == {x[0]}  # stored: the server does not add it again
    else:
        assert not store.add_blob(x[0], BlobType.DATA, x[1])  # revived, not queued
        store.flush()
    assert condemned_ns(store, x) is None
    assert store.stored_bytes() == stored_before
    assert unaccounted_bytes(store.root) == 0

    report = collect_garbage(store, horizon_ns=b2_start)  # B2 is still running
    assert report.deleted_blobs == 0 and report.waiting_blobs == 1
    store.commit_snapshot("B2", b2_start, b"record", [x[0], k[0]])
    assert collect_garbage(store).deleted_blobs == 0
    assert store.read_blob(x[0]) == x[1]
    assert_disk_matches_index(store.root)
    store.close()


def test_sending_a_blob_gc_already_deleted_stores_it_anew(
    garbage: tuple[PackStore, dict[str, tuple[bytes, bytes]]],
) -> None:
    store, b = garbage
    x, k = b["x"], b["k"]
    collect_garbage(store, horizon_ns=0)
    collect_garbage(store)
    assert not indexed(store, x)
    assert store.revive([x[0]]) == set()
    assert store.add_blob(x[0], BlobType.DATA, x[1])
    store.flush()
    commit(store, "back", x, k)
    assert store.read_blob(x[0]) == x[1]
    assert unaccounted_bytes(store.root) == 0
    store.close()


def test_below_threshold_pack_is_kept_with_its_garbage(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    live, dead = blob(90 * KiB), blob(10 * KiB)
    pack = put_pack(store, live, dead)
    commit(store, "a", live, dead)
    commit(store, "b", live)
    store.delete_snapshot("a")
    report = collect_garbage(store)
    assert (report.deleted_blobs, report.repacked_packs, report.deleted_packs) == (0, 0, 0)
    assert report.waiting_blobs == 0  # deletable, just not worth a repack
    assert dead[0] not in store.all_blob_ids() and indexed(store, dead)
    assert set(store.packs()) == {pack}
    report = collect_garbage(store, repack_threshold=0.05)
    assert (report.deleted_blobs, report.repacked_packs) == (1, 1)
    assert store.read_blob(live[0]) == live[1]
    assert_disk_matches_index(store.root)
    store.close()


def test_repack_is_abandoned_if_a_dead_blob_is_revived_meanwhile(
    garbage: tuple[PackStore, dict[str, tuple[bytes, bytes]]],
) -> None:
    """A backup revives x after GC planned the repack and wrote the new pack, before the
    switch: the switch re-checks, gives up, and removes its never-indexed new pack."""
    store, b = garbage
    x, k = b["x"], b["k"]
    old = set(store.packs())

    def step(name: str) -> None:
        if name == "new-pack-written":
            assert len(disk_packs(store.root)) == 2  # the new pack exists, unindexed
            store.revive([x[0]])

    report = collect_garbage(store, step=step)
    assert (report.repacked_packs, report.deleted_blobs) == (0, 0)
    assert set(store.packs()) == old
    assert_disk_matches_index(store.root)
    assert store.read_blob(x[0]) == x[1] and store.read_blob(k[0]) == k[1]
    store.close()


class _HookLock:
    """A `lock` for collect_garbage that runs a callback when taken for the n-th time."""

    def __init__(self, n: int, hook: Any) -> None:
        self.n, self.hook, self.taken = n, hook, 0

    def __enter__(self) -> None:
        self.taken += 1
        if self.taken == self.n:
            self.hook()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


def test_drop_is_abandoned_if_a_commit_references_the_blob_meanwhile(tmp_path: Path) -> None:
    """GC takes its lock to condemn (1), to plan a pack (2) and to switch the index (3). A
    commit that references the doomed blob between planning and switching keeps the pack."""
    store = new_store(tmp_path)
    x, k = blob(20 * KiB), blob(10 * KiB)
    put_pack(store, x)
    put_pack(store, k)
    commit(store, "old", x)
    commit(store, "keep", k)
    store.delete_snapshot("old")
    lock = _HookLock(3, lambda: commit(store, "late", x))
    report = collect_garbage(store, lock=lock)
    assert lock.taken == 3
    assert (report.deleted_packs, report.deleted_blobs) == (0, 0)
    assert store.read_blob(x[0]) == x[1]
    assert condemned_ns(store, x) is None
    assert_disk_matches_index(store.root)
    store.close()


def test_reader_with_locations_from_before_a_repack_still_reads(tmp_path: Path) -> None:
    """A reader (restore, say) located its blobs, then GC repacked both packs they were in and
    deleted the old files: the reader notices the missing pack and looks the rest up again."""
    store = new_store(tmp_path)
    a_live, a_dead, b_live, b_dead = blob(10 * KiB), blob(40 * KiB), blob(10 * KiB), blob(40 * KiB)
    old = {put_pack(store, a_live, a_dead), put_pack(store, b_live, b_dead)}
    commit(store, "keep", a_live, b_live)
    commit(store, "gone", a_dead, b_dead)
    store.delete_snapshot("gone")
    want = {a_live[0]: a_live[1], b_live[0]: b_live[1]}

    reader = PackStore(store.root)  # a second process's view: its own connection, no lock
    stale = sorted(reader.locate(list(want)).values(), key=lambda loc: (loc.pack, loc.offset))
    stream = reader.read_blobs(list(want))
    first_id, first_data = next(stream)  # located both and opened the first pack

    report = collect_garbage(store)
    assert report.repacked_packs == 2
    assert not old & set(disk_packs(store.root))  # the old files are gone

    got = {first_id: first_data, **dict(stream)}
    assert got == want
    with pytest.raises(PackMissing):
        list(reader.read_locations(stale))
    assert dict(reader.read_blobs(list(want))) == want
    reader.close()
    store.close()


def test_read_only_store_cannot_collect(tmp_path: Path) -> None:
    new_store(tmp_path).close()
    reader = PackStore(tmp_path / "repo")
    with contextlib.ExitStack() as stack:
        stack.callback(reader.close)
        with pytest.raises(Exception, match="read-only"):
            collect_garbage(reader)
    # dry-run needs no writer: it only reads
    reader = PackStore(tmp_path / "repo")
    assert collect_garbage(reader, dry_run=True).dry_run
    reader.close()


def test_verifying_every_blob_during_a_gc_reports_no_false_damage(tmp_path: Path) -> None:
    """`check --read-data` (PackStore.iter_verified, storage_problems) and scrub run without
    the writer lock, so a GC may move or delete blobs under them. That is not damage."""
    store = new_store(tmp_path)
    a_live, a_dead, b_live, b_dead, c_dead = (blob(n * KiB) for n in (10, 40, 10, 40, 20))
    put_pack(store, a_live, a_dead)
    put_pack(store, b_live, b_dead)
    put_pack(store, c_dead)
    commit(store, "keep", a_live, b_live)
    commit(store, "gone", a_dead, b_dead, c_dead)
    store.delete_snapshot("gone")
    live = {a_live[0]: a_live[1], b_live[0]: b_live[1]}

    reader = PackStore(store.root)
    walk = reader.iter_verified()
    seen = [next(walk)]  # the walk has its list of blobs and has read the first one
    packs_before = reader.packs()
    report = collect_garbage(store)
    assert (report.repacked_packs, report.deleted_packs) == (2, 1)
    seen += list(walk)
    assert all(ok for _bid, ok, _data in seen), [bid.hex()[:8] for bid, ok, _ in seen if not ok]
    got = {bid: data for bid, _ok, data in seen}
    assert {bid: got[bid] for bid in live} == live

    # A pack list taken before the GC names packs that are gone by the time they are looked at.
    reader.packs = lambda: packs_before  # type: ignore[method-assign]
    assert reader.storage_problems() == []
    scrubbed = scrub(reader)
    assert scrubbed.ok, scrubbed.problems
    reader.close()
    store.close()


@pytest.mark.parametrize("late_horizon", [True, False], ids=["horizon-after-condemn", "fixed"])
def test_race_backup_logging_in_while_gc_starts(
    garbage: tuple[PackStore, dict[str, tuple[bytes, bytes]]], late_horizon: bool
) -> None:
    """No backup runs when GC starts; one logs in and lists x as live just before the condemn
    step takes the lock. Only a horizon read after condemning (a function, as the server can
    pass: the oldest session still open) sees it; a value fixed at GC start ("no backup
    running") lets x be deleted under that backup, whose commit then fails."""
    store, b = garbage
    x, k = b["x"], b["k"]
    sessions: dict[str, int] = {}
    listed: set[bytes] = set()

    def log_in_and_list() -> None:
        sessions["B"] = time.time_ns()
        listed.update(store.all_blob_ids())

    def oldest_session() -> int | None:
        return min(sessions.values(), default=None)

    horizon: Any = oldest_session if late_horizon else oldest_session()  # None: nobody yet
    report = collect_garbage(store, horizon_ns=horizon, lock=_HookLock(1, log_in_and_list))
    assert x[0] in listed and report.newly_condemned == 1
    if late_horizon:
        assert report.deleted_blobs == 0 and report.waiting_blobs == 1
        store.commit_snapshot("B", sessions["B"], b"record", [x[0], k[0]])
        assert store.read_blob(x[0]) == x[1]
    else:
        assert report.deleted_blobs == 1
        with pytest.raises(IntegrityError):
            store.commit_snapshot("B", sessions["B"], b"record", [x[0], k[0]])
    store.close()
