"""Crash safety (DESIGN.md, "Nothing is lost"): real processes, real SIGKILL, no mocks.

A snapshot is either fully stored or not visible; a kill at any moment leaves a repository that
`check --read-data` accepts; leftovers of a killed writer (``*.tmp`` files, packs nobody indexed)
never count against consistency and are removed by the next writer; the next backup completes
and does not re-send the packs that were durably indexed before the kill.

Kill moments are chosen with a seeded RNG and spread over the measured length of a backup.
"Measured" matters: other work on the machine changes how long a backup takes, so the delays
are relative to a backup run just before, and the moment the child takes the repository's
writer lock (seen in /proc/locks) is used as the start of its real work.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from conftest import Cli, strongroom_exe, tree_state
from strongroom.errors import IntegrityError, RepositoryError
from strongroom.store import PackStore
from strongroom.store.lock import WriterLock

# The kill tests watch /proc/locks to see when the child holds the writer lock.
needs_kill = pytest.mark.skipif(
    sys.platform == "win32" or not os.path.exists("/proc/locks"),
    reason="needs SIGKILL and /proc/locks (Linux)",
)

SEED = 20240611
MiB = 1024 * 1024
BIG_FILES_MIB = (5, 7, 10, 14)  # random, so they do not compress: ~36 MiB of chunks
SMALL_DIRS, SMALL_PER_DIR = 40, 60  # 2400 small files, ~14 MB, a quarter of them random


# ---- the source tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceTree:
    path: Path
    files: int
    size: int
    small_size: int  # bytes in files that go into bundles (their packing is not deterministic)


def _make_tree(root: Path, rng: random.Random, *, big: tuple[int, ...] = BIG_FILES_MIB) -> None:
    words = [rng.randbytes(rng.randint(2, 6)).hex() for _ in range(2000)]
    for d in range(SMALL_DIRS):
        sub = root / f"dir{d:02d}" / f"sub{d % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(SMALL_PER_DIR):
            size = rng.randint(100, 12000)
            if i % 4 == 0:
                data = rng.randbytes(size)
            else:
                data = " ".join(rng.choices(words, k=size // 8)).encode()
            (sub / f"file{i:03d}.txt").write_bytes(data)
    (root / "big").mkdir(exist_ok=True)
    for i, mib in enumerate(big):
        (root / "big" / f"blob{i}.bin").write_bytes(rng.randbytes(mib * MiB))


def _describe(root: Path) -> SourceTree:
    files = size = small = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
            if st.st_size < 128 * 1024:
                small += st.st_size
    return SourceTree(root, files, size, small)


@pytest.fixture(scope="session")
def crash_tree(tmp_path_factory: pytest.TempPathFactory) -> SourceTree:
    root = tmp_path_factory.mktemp("crash-source") / "src"
    _make_tree(root, random.Random(SEED))
    return _describe(root)


@pytest.fixture(scope="session")
def empty_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised, empty repository; tests copy it instead of paying for an init each."""
    cli = Cli(tmp_path_factory.mktemp("crash-empty"))
    cli.init()
    return cli.repo


def _copy_tree(tree: SourceTree, dest: Path, *, only_big: tuple[str, ...] | None = None) -> Path:
    def ignore(folder: str, names: list[str]) -> list[str]:
        if only_big is None or os.path.basename(folder) != "big":
            return []
        return [n for n in names if n not in only_big]

    shutil.copytree(tree.path, dest, ignore=ignore)
    return dest


# ---- processes, locks and kills --------------------------------------------------------------


def holds_writer_lock(pid: int, inode: int) -> bool:
    """True if process `pid` holds the flock on the repository's lock file (Linux)."""
    try:
        with open("/proc/locks") as fh:
            lines = fh.readlines()
    except OSError:
        return False
    for line in lines:
        f = line.split()
        if len(f) > 1 and f[1] == "->":
            continue  # a waiter, not a holder
        if len(f) >= 6 and f[1] == "FLOCK" and f[4] == str(pid) and f[5].endswith(f":{inode}"):
            return True
    return False


@dataclass
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    lock_at: float | None  # seconds from start until the writer lock was seen
    ended_at: float | None  # seconds from start until it exited on its own (not killed)
    killed_at: float | None  # seconds from start when SIGKILL was sent (None: it had exited)

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def completed(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        return (
            f"strongroom {' '.join(self.args)}: rc={self.returncode} lock_at={self.lock_at} "
            f"ended_at={self.ended_at} killed_at={self.killed_at}\n"
            f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}"
        )


def run_killed(
    cli: Cli,
    *args: str,
    after_lock: float | None = None,
    after_start: float | None = None,
    when: Callable[[], bool] | None = None,
    then: float = 0.0,
    timeout: float = 120,
) -> Run:
    """Start `strongroom ARGS` and SIGKILL it: `after_lock` seconds after it took the writer
    lock, or `after_start` seconds after it started, or `then` seconds after `when()` first
    returned True. If it exits first, that is recorded instead."""
    assert sum(x is not None for x in (after_lock, after_start, when)) == 1
    inode = os.stat(cli.repo / "lock").st_ino
    t0 = time.monotonic()
    deadline = t0 + timeout
    proc = subprocess.Popen(
        [*strongroom_exe(), *args],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock_at = ended_at = killed_at = None
    try:
        if after_start is not None:
            kill_at = t0 + after_start
        else:
            while proc.poll() is None and time.monotonic() < deadline:
                if lock_at is None and holds_writer_lock(proc.pid, inode):
                    lock_at = time.monotonic() - t0
                if (when is None and lock_at is not None) or (when is not None and when()):
                    break
                time.sleep(0.002)
            kill_at = time.monotonic() + (after_lock if after_lock is not None else then)
        while proc.poll() is None and time.monotonic() < min(kill_at, deadline):
            if lock_at is None and holds_writer_lock(proc.pid, inode):
                lock_at = time.monotonic() - t0
            time.sleep(min(0.003, max(0.0, kill_at - time.monotonic())))
        if proc.poll() is None:
            killed_at = time.monotonic() - t0
            proc.send_signal(signal.SIGKILL)
        else:
            ended_at = time.monotonic() - t0
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # only on an unexpected error above
            proc.kill()
            proc.wait()
    if killed_at is not None and proc.returncode != -signal.SIGKILL:
        ended_at, killed_at = killed_at, None  # it exited just before the signal was sent
    return Run(args, proc.returncode, out, err, lock_at, ended_at, killed_at)


def new_pack_file(repo: Path, *, tmp: bool) -> Callable[[], bool]:
    """A predicate: has a new ``*.tmp`` (tmp=True) or a new renamed pack file appeared?"""
    packs = repo / "packs"

    def names() -> set[str]:
        out: set[str] = set()
        with os.scandir(packs) as subs:
            for sub in subs:
                with contextlib.suppress(OSError), os.scandir(sub.path) as it:
                    out.update(e.name for e in it)
        return out

    before = names()

    def appeared() -> bool:
        return any(n.endswith(".tmp") == tmp for n in names() - before)

    return appeared


def check_ok(cli: Cli, *, read_data: bool = True, context: str = "") -> None:
    args = ("check", "--read-data") if read_data else ("check",)
    res = cli.run(*args, check=False)
    assert res.returncode == 0, (
        f"check failed {context}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    )


# ---- looking at the repository from outside --------------------------------------------------


def _index(repo: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{repo / 'index.sqlite'}?mode=ro", uri=True)


def indexed_packs(repo: Path) -> dict[str, int]:
    store = PackStore(repo)
    try:
        return store.packs()
    finally:
        store.close()


def snapshot_ids(repo: Path) -> list[str]:
    store = PackStore(repo)
    try:
        return [row.snap_id for row in store.list_snapshots()]
    finally:
        store.close()


def leftovers(repo: Path) -> set[str]:
    """``*.tmp`` files and pack files the index does not know: what a killed writer leaves."""
    known = indexed_packs(repo)
    return {
        p.relative_to(repo).as_posix()
        for p in (repo / "packs").glob("*/*")
        if p.name.endswith(".tmp") or p.name not in known
    }


def assert_packs_exact(repo: Path) -> None:
    """Every indexed pack is exactly the blobs the index lists, back to back, nothing else.

    A blob that was already stored and got sent again would be ignored by the index
    (INSERT OR IGNORE) and show up here as bytes nobody accounts for.
    """
    db = _index(repo)
    try:
        rows = db.execute(
            "SELECT p.name, p.size, COALESCE(SUM(b.length), 0), COUNT(b.id), "
            "COALESCE(MIN(b.offset), 0), COALESCE(MAX(b.offset + b.length), 0) "
            "FROM packs p LEFT JOIN blobs b ON b.pack = p.id GROUP BY p.id"
        ).fetchall()
    finally:
        db.close()
    for name, size, total, count, first, end in rows:
        assert count > 0, f"pack {name[:16]} is indexed without any blob"
        assert (total, first, end) == (size, 0, size), (
            f"pack {name[:16]}: {size} bytes but its indexed blobs cover {total} "
            f"(from {first} to {end}): a blob was stored twice or the pack has a hole"
        )


def assert_restore_equals(cli: Cli, source: Path, target: Path) -> None:
    cli.restore(target)
    restored = target / source.name
    want, got = tree_state(source), tree_state(restored)
    assert got.keys() == want.keys(), (
        f"restored tree differs: missing {sorted(want.keys() - got.keys())[:5]}, "
        f"extra {sorted(got.keys() - want.keys())[:5]}"
    )
    bad = [k for k in want if want[k] != got[k]]
    assert not bad, f"{len(bad)} restored entries differ, e.g. {bad[:5]}"


# ---- a reference backup: how big and how long is a full one? ---------------------------------


@dataclass(frozen=True)
class Reference:
    cli: Cli
    source: SourceTree
    uploaded: int  # bytes_uploaded of a full backup
    lock_s: float  # start -> writer lock taken
    work_s: float  # writer lock -> exit
    total_s: float


@pytest.fixture(scope="module")
def reference(
    crash_tree: SourceTree, empty_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    cli = _fresh_cli(tmp_path_factory.mktemp("crash-reference"), empty_repo)
    run = run_killed(cli, "backup", str(crash_tree.path), "--json", after_lock=600)
    assert run.completed and run.ended_at is not None, run.describe()
    out = json.loads(run.stdout)
    assert out["files"] == crash_tree.files and out["bytes_scanned"] == crash_tree.size
    ref = Reference(
        cli=cli,
        source=crash_tree,
        uploaded=out["bytes_uploaded"],
        lock_s=run.lock_at or 0.0,
        work_s=run.ended_at - (run.lock_at or 0.0),
        total_s=run.ended_at,
    )
    print(
        f"\nreference backup: {crash_tree.files} files, {crash_tree.size / MiB:.1f} MiB, "
        f"uploaded {ref.uploaded / MiB:.1f} MiB, lock after {ref.lock_s:.2f}s, "
        f"work {ref.work_s:.2f}s, total {ref.total_s:.2f}s"
    )
    return ref


def _fresh_cli(tmp: Path, template: Path) -> Cli:
    """A Cli on a copy of an empty, initialised repository (saves an init per repository)."""
    cli = Cli(tmp)
    shutil.copytree(template, cli.repo)
    return cli


# ---- 1. kill -9 during backups, again and again ----------------------------------------------


def _churn(src: Path, rng: random.Random, i: int) -> None:
    """Change the tree a little so that every backup of the series has new data to store."""
    hot = src / "churn"
    hot.mkdir(exist_ok=True)
    (hot / "hot.bin").write_bytes(rng.randbytes(3 * MiB))
    (hot / f"new{i:02d}.txt").write_bytes(rng.randbytes(rng.randint(10, 5000)))
    (hot / f"new{i - 2:02d}.txt").unlink(missing_ok=True)
    for _ in range(4):
        f = src / f"dir{rng.randrange(SMALL_DIRS):02d}"
        f = next(f.iterdir()) / f"file{rng.randrange(SMALL_PER_DIR):03d}.txt"
        with open(f, "ab") as fh:
            fh.write(rng.randbytes(rng.randint(1, 300)))


@needs_kill
def test_kill_during_backup_series(
    reference: Reference, empty_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED + 1)
    src = _copy_tree(reference.source, tmp_path / "src")
    cli = _fresh_cli(tmp_path, empty_repo)

    # Kill moments: one before the writer lock (while Python starts), fractions of the
    # backup's work spread evenly over [0, 1), and moments chosen by what the writer is doing:
    # while a pack is being written (a *.tmp exists) and just after a pack's rename (before or
    # while its index transaction commits). Shuffled; then spare late ones.
    fractions = [(k + rng.random()) / 10 for k in range(10)]
    schedule: list[tuple[str, float]] = [("lock", f) for f in fractions]
    schedule += [("tmp", rng.uniform(0.0, 0.05)), ("tmp", rng.uniform(0.0, 0.05)), ("pack", 0.0)]
    rng.shuffle(schedule)
    schedule.insert(0, ("start", rng.uniform(0.02, 0.5 * reference.lock_s)))
    # Spares, used only while fewer than target_kills backups were killed (bounded).
    schedule += [("lock", rng.uniform(0.9, 1.05)) for _ in range(2)]
    schedule += [("lock", rng.uniform(0.0, 0.7)) for _ in range(12)]
    target_kills = 12

    est_work = reference.work_s  # adapted when a backup finishes before its kill
    kills = completed = with_leftovers = 0
    seen_leftovers: set[str] = set()
    snaps = 0
    log: list[str] = []
    for attempt, (mode, value) in enumerate(schedule):
        if kills >= target_kills:
            break
        _churn(src, rng, attempt)
        backup = ("backup", str(src), "--json")
        if mode == "start":
            run = run_killed(cli, *backup, after_start=value)
        elif mode == "lock":
            run = run_killed(cli, *backup, after_lock=value * est_work)
        else:
            event = new_pack_file(cli.repo, tmp=mode == "tmp")
            run = run_killed(cli, *backup, when=event, then=value)
        # Killed, or finished before the kill: anything else (such as "repository in use", a
        # lock the previous victim still holds) is a failure.
        assert run.killed or run.completed, run.describe()
        assert run.killed == (run.killed_at is not None), f"not our SIGKILL: {run.describe()}"
        now = leftovers(cli.repo)
        log.append(
            f"#{attempt} {mode} {value:.2f} -> "
            + (f"killed at {run.killed_at:.2f}s" if run.killed else f"done at {run.ended_at:.2f}s")
            + (f", lock at {run.lock_at:.2f}s" if run.lock_at is not None else ", before the lock")
            + f", {len(now)} leftover(s)"
        )
        if run.killed:
            kills += 1
            with_leftovers += bool(now)
        else:
            completed += 1
            assert run.stdout.strip(), run.describe()
            if run.lock_at is not None and run.ended_at is not None:
                # No floor above what a fast idle machine takes (~0.08 s here): a floor of
                # 0.2 s once put most kill moments after the end of the backup.
                est_work = max(0.02, run.ended_at - run.lock_at)
            # It took the lock, so it removed what earlier victims left, and it finished, so
            # it left nothing of its own.
            assert not now, f"leftovers after a completed backup: {sorted(now)}"
        seen_leftovers |= now

        # The leftovers (if any) must not count against consistency.
        check_ok(cli, context=f"after {log[-1]}; leftovers {sorted(now)}")
        assert_packs_exact(cli.repo)
        after = len(snapshot_ids(cli.repo))
        assert after in (snaps, snaps + 1), f"snapshots went from {snaps} to {after}"
        if run.completed:
            assert after == snaps + 1
        snaps = after

    assert kills >= target_kills, f"only {kills} backups were killed mid-run:\n" + "\n".join(log)

    # After the series, a backup completes, counts every file, leaves no leftovers, and the
    # restore is byte for byte the source.
    final = cli.backup(src)
    expected = _describe(src)
    assert final["files"] == expected.files, final
    assert final["added"] + final["modified"] + final["unchanged"] == expected.files, final
    assert final["bytes_scanned"] == expected.size, final
    assert final["warnings"] == [], final
    assert not leftovers(cli.repo), sorted(leftovers(cli.repo))
    assert not any((cli.repo / p).exists() for p in seen_leftovers)
    assert_packs_exact(cli.repo)
    check_ok(cli, context="after the final backup")
    assert_restore_equals(cli, src, tmp_path / "restore")
    with capsys.disabled():
        print(
            f"\nkill series: {kills} killed ({with_leftovers} left .tmp/unindexed packs), "
            f"{completed} finished first, {snaps} snapshots; {len(seen_leftovers)} leftover "
            "file(s) seen, all removed by later writers\n  " + "\n  ".join(log)
        )


# ---- 1b. a late kill: the next backup re-sends little ----------------------------------------


@needs_kill
def test_late_kill_next_backup_resends_little(
    reference: Reference, empty_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = empty_repo
    full = reference.uploaded
    source = str(reference.source.path)

    # Kill at >= 80% of a full backup's work (lock taken -> exit), so that most packs are
    # indexed but the snapshot is not committed yet. How long the work takes depends on what
    # else the machine is doing, so the estimate is corrected as we go (bounded): a backup that
    # finished first is a fresh measurement; a kill after the commit comes a little earlier
    # next time (not below 80%); a kill before half the data was indexed, later.
    work, frac, tried = reference.work_s, 0.85, []
    chosen: tuple[Cli, Run, int] | None = None
    fallback: tuple[Cli, Run, int] | None = None
    for attempt in range(6):
        cli = _fresh_cli(tmp_path / f"attempt{attempt}", template)
        run = run_killed(cli, "backup", source, "--json", after_lock=frac * work)
        assert run.killed or run.completed, run.describe()
        indexed = sum(indexed_packs(cli.repo).values())
        committed = bool(snapshot_ids(cli.repo))
        tried.append(
            f"{frac:.2f} x {work:.2f}s: rc={run.returncode} indexed={indexed / full:.0%}"
            + (" committed" if committed else "")
        )
        if run.completed:
            if run.lock_at is not None and run.ended_at is not None:
                work = run.ended_at - run.lock_at
            frac = 0.85
            continue
        check_ok(cli, context=f"after a kill at {frac:.2f} of the backup")
        if committed:
            fallback = fallback or (cli, run, indexed)
            frac = max(0.8, frac - 0.05)
        elif indexed >= 0.5 * full:
            chosen = (cli, run, indexed)
            break
        else:
            fallback = (cli, run, indexed)
            frac = min(frac + 0.1, 1.3)
    if chosen is None:
        assert fallback is not None, f"no backup could be killed: {tried}"
        warnings.warn(
            f"no kill landed between half of the data indexed and the commit ({tried})",
            stacklevel=1,
        )
        chosen = fallback
    cli, run, indexed = chosen

    nxt = json.loads(cli.run("backup", source, "--json").stdout)
    uploaded = nxt["bytes_uploaded"]
    assert not leftovers(cli.repo)
    assert_packs_exact(cli.repo)  # no blob of an indexed pack was stored a second time
    # What had to be sent again: everything not indexed at the kill, plus small files, whose
    # bundles depend on thread timing (a re-bundled small file is new bytes), plus trees.
    bound = full - indexed + reference.source.small_size + MiB
    assert uploaded <= bound, (uploaded, full, indexed, tried)
    if indexed >= 0.5 * full:
        assert uploaded < 0.6 * full, (uploaded, full, indexed, tried)
    check_ok(cli, context="after the backup that followed a late kill")
    with capsys.disabled():
        print(
            f"\nlate kill: attempts {tried}; full {full / MiB:.1f} MiB, indexed at kill "
            f"{indexed / MiB:.1f} MiB, next backup uploaded {uploaded / MiB:.1f} MiB "
            f"({uploaded / full:.0%})"
        )


# ---- 1c. kill during forget, a nothing-changed backup and a modified-files backup ------------


@needs_kill
def test_kill_during_forget_unchanged_and_modified_backups(
    crash_tree: SourceTree, empty_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED + 2)
    src = _copy_tree(crash_tree, tmp_path / "src", only_big=("blob1.bin",))
    cli = _fresh_cli(tmp_path, empty_repo)
    first = cli.backup(src)
    log: list[str] = []

    def after_kill(what: str, run: Run) -> int:
        assert run.killed or run.completed, run.describe()
        log.append(
            f"{what}: "
            + (f"killed at {run.killed_at:.2f}s" if run.killed else f"done at {run.ended_at:.2f}s")
            + (f", lock at {run.lock_at:.2f}s" if run.lock_at is not None else "")
        )
        check_ok(cli, context=log[-1])
        assert_packs_exact(cli.repo)
        return len(snapshot_ids(cli.repo))

    # A nothing-changed backup: measure one, then kill others across its length.
    run = run_killed(cli, "backup", str(src), "--json", after_lock=600)
    assert run.completed and run.lock_at is not None and run.ended_at is not None, run.describe()
    unchanged = json.loads(run.stdout)
    assert unchanged["unchanged"] == first["files"] and unchanged["bytes_uploaded"] == 0
    work = run.ended_at - run.lock_at
    snaps = len(snapshot_ids(cli.repo))
    for frac in (rng.uniform(0.0, 0.5), rng.uniform(0.5, 1.0)):
        run = run_killed(cli, "backup", str(src), "--json", after_lock=frac * work)
        after = after_kill(f"unchanged backup at {frac:.2f}", run)
        assert after in (snaps, snaps + 1)
        snaps = after

    # A modified-files backup: change small files and part of the big one.
    big = src / "big" / "blob1.bin"
    small = sorted(src.glob("dir*/sub*/file*.txt"))
    for f in rng.sample(small, 40):
        f.write_bytes(f.read_bytes()[::-1] + b"changed")
    with open(big, "r+b") as fh:
        fh.seek(3 * MiB)
        fh.write(rng.randbytes(2 * MiB))
    for frac in (rng.uniform(0.0, 0.5), rng.uniform(0.5, 1.1)):
        run = run_killed(cli, "backup", str(src), "--json", after_lock=frac * max(work, 0.5))
        after = after_kill(f"modified backup at {frac:.2f}", run)
        assert after in (snaps, snaps + 1)
        snaps = after
    done = cli.backup(src)
    assert done["files"] == first["files"] and done["warnings"] == [], done
    assert not leftovers(cli.repo)

    # forget: it holds the writer lock only for milliseconds; kill right after it takes it.
    for delay in (0.0, rng.uniform(0.005, 0.05)):
        ids = snapshot_ids(cli.repo)
        if len(ids) < 2:  # never forget the newest one: it is restored below
            cli.backup(src)
            ids = snapshot_ids(cli.repo)
        victim = ids[0]
        run = run_killed(cli, "forget", victim, after_lock=delay)
        after = after_kill(f"forget after {delay * 1000:.0f}ms", run)
        now = snapshot_ids(cli.repo)
        assert now in (ids, [i for i in ids if i != victim]), (ids, now)
        if run.completed:
            assert victim not in now
        snaps = after
    assert snapshot_ids(cli.repo), "the series must keep at least one snapshot"
    assert_restore_equals(cli, src, tmp_path / "restore")
    with capsys.disabled():
        print("\nforget/unchanged/modified kills:\n  " + "\n  ".join(log))


# ---- 2. a crash between the pack rename and the index commit ---------------------------------


def _unindexed_pack(packs: Path, prefix: str | None = None) -> Path:
    """A pack file as a writer killed after its rename would leave: name = hash of content."""
    rng = random.Random(SEED + 3)
    for _ in range(20000):
        data = rng.randbytes(rng.randint(1000, 50_000))
        name = blake3.blake3(data).hexdigest()
        if prefix is None or name.startswith(prefix):
            (packs / name[:2]).mkdir(exist_ok=True)
            path = packs / name[:2] / name
            path.write_bytes(data)
            return path
    raise AssertionError("no pack name with that prefix found")  # p ~ e^-78


@pytest.fixture
def small_source(crash_tree: SourceTree, tmp_path: Path) -> Path:
    src = tmp_path / "small-src"
    shutil.copytree(crash_tree.path / "dir00", src / "dir00")
    shutil.copy2(crash_tree.path / "big" / "blob0.bin", src / "blob0.bin")
    return src


def test_unindexed_pack_and_tmp_are_harmless_and_cleaned(
    empty_repo: Path, tmp_path: Path, small_source: Path
) -> None:
    cli = _fresh_cli(tmp_path, empty_repo)
    cli.backup(small_source)
    packs = cli.repo / "packs"
    indexed = indexed_packs(cli.repo)
    some = sorted(indexed)[0]
    crafted = [
        _unindexed_pack(packs),  # a pack whose index transaction never committed
        _unindexed_pack(packs, prefix=some[:2]),  # ... beside an indexed pack
        packs / some[:2] / (some + ".tmp"),  # a torn rewrite of an indexed pack's name
        packs / "ff" / ("ff" + "0" * 62 + ".tmp"),  # a torn write in a folder of its own
    ]
    crafted[2].write_bytes(b"half a pack")
    (packs / "ff").mkdir(exist_ok=True)
    crafted[3].write_bytes(os.urandom(4096))
    assert leftovers(cli.repo) == {p.relative_to(cli.repo).as_posix() for p in crafted}

    # Readers accept them and leave them alone: without the writer lock they cannot know
    # whether a live writer is between its rename and its index commit.
    check_ok(cli, read_data=False)
    check_ok(cli)
    assert all(p.exists() for p in crafted)

    # A writer that cannot get the lock (a live writer holds it) does not touch them either.
    with WriterLock(cli.repo / "lock"):
        blocked = cli.run("backup", str(small_source), "--json", check=False)
    assert blocked.returncode == 1 and "in use" in blocked.stderr, blocked
    assert "Traceback" not in blocked.stderr
    assert all(p.exists() for p in crafted)

    # The next writer removes them; indexed packs stay; the repository is consistent.
    cli.backup(small_source)
    assert not leftovers(cli.repo)
    assert not any(p.exists() for p in crafted)
    assert all(cli.repo.joinpath("packs", n[:2], n).is_file() for n in indexed)
    check_ok(cli)
    assert_packs_exact(cli.repo)
    assert_restore_equals(cli, small_source, cli.repo.parent / "restore")


# ---- 3. a snapshot is never committed while a blob it references is not stored ---------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PackStore]:
    s = PackStore.create(tmp_path / "repo")
    yield s
    s.close()


def _snapshot_rows(root: Path) -> tuple[int, int]:
    db = _index(root)
    try:
        snaps = db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]
        links = db.execute("SELECT COUNT(*) FROM snapshot_blobs").fetchone()[0]
    finally:
        db.close()
    return snaps, links


def test_snapshot_with_unstored_blob_is_never_committed(store: PackStore) -> None:
    a, b = os.urandom(32), os.urandom(32)
    store.add_blob(a, 0, os.urandom(1000))
    store.flush()
    unknown = os.urandom(32)

    with pytest.raises(IntegrityError):
        store.commit_snapshot("s-unknown", 1, b"record", [unknown])
    with pytest.raises(IntegrityError):
        store.commit_snapshot("s-mixed", 2, b"record", [a, unknown])
    # Added but not flushed: in a buffer, not durable, not indexed.
    store.add_blob(b, 0, os.urandom(1000))
    with pytest.raises(IntegrityError):
        store.commit_snapshot("s-pending", 3, b"record", [a, b])
    assert store.list_snapshots() == []
    assert _snapshot_rows(store.root) == (0, 0)

    store.flush()
    store.commit_snapshot("s-ok", 4, b"record", [a, b, a])
    assert [r.snap_id for r in store.list_snapshots()] == ["s-ok"]
    assert store.snapshot_manifest("s-ok") == {a, b}
    assert _snapshot_rows(store.root) == (1, 2)  # seen by another connection: committed

    # A reader (no writer lock) cannot commit at all.
    reader = PackStore(store.root)
    try:
        with pytest.raises(RepositoryError):
            reader.commit_snapshot("s-reader", 5, b"record", [a])
    finally:
        reader.close()
    assert _snapshot_rows(store.root) == (1, 2)


# ---- 4. a torn indexed pack is detected, never silently accepted -----------------------------


def test_truncated_last_pack_is_detected(reference: Reference, tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    shutil.copytree(reference.cli.repo, cli.repo)
    db = _index(cli.repo)
    try:
        name, size = db.execute(
            "SELECT name, size FROM packs ORDER BY created_ns DESC, id DESC LIMIT 1"
        ).fetchone()
    finally:
        db.close()
    path = cli.repo / "packs" / name[:2] / name
    os.truncate(path, size - 1000)  # the tail never reached the disk

    for args in (("check",), ("check", "--read-data")):
        res = cli.run(*args, check=False)
        assert res.returncode != 0, (args, res)
        assert name[:16] in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr

    res = cli.run("restore", "latest", "--target", str(tmp_path / "restore"), check=False)
    assert res.returncode != 0, res
    assert "Traceback" not in res.stderr


# ---- 5. creating a repository: complete or absent --------------------------------------------


def test_create_is_all_or_nothing(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    # What a create killed before its index was linked into place leaves behind.
    (root / "packs").mkdir(parents=True)
    (root / "index.sqlite.init-0123456789abcdef").write_bytes(b"SQLite format 3\0 torn")
    (root / "index.sqlite.init-0123456789abcdef-journal").write_bytes(b"torn")
    with pytest.raises(RepositoryError):
        PackStore(root)  # no index: not a repository
    store = PackStore.create(root, meta={"keyfile": b"wrapped keys", "repo_id": b"r1"})
    try:
        assert store.get_meta("keyfile") == b"wrapped keys"
        assert store.get_meta("repo_id") == b"r1"
    finally:
        store.close()
    assert not [p.name for p in root.iterdir() if p.name.startswith("index.sqlite.init-")]
    with pytest.raises(RepositoryError, match="already exists"):
        PackStore.create(root)

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not ours")
    with pytest.raises(RepositoryError, match="not empty"):
        PackStore.create(other)


# ---- 5. kill -9 during passwd and restore -----------------------------------------------------


def test_kill_during_passwd_leaves_one_working_password(empty_repo: Path, tmp_path: Path) -> None:
    """The key file is replaced in one transaction: after a kill, exactly the old or the new
    password opens the repository, never neither."""
    rng = random.Random(SEED + 5)
    cli = _fresh_cli(tmp_path, empty_repo)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"precious")
    cli.backup(src)
    current = cli.env["STRONGROOM_PASSWORD"]
    for i in range(10):
        new = f"new password {i}"
        pw_file = tmp_path / f"pw{i}"
        pw_file.write_text(new)
        cli.env["STRONGROOM_PASSWORD"] = current
        # Argon2id runs twice (old and new password): spread kills over that whole span.
        run = run_killed(
            cli, "passwd", "--new-password-file", str(pw_file), after_start=rng.uniform(0.0, 1.2)
        )
        opens = []
        for candidate in (current, new):
            res = cli.run(
                "snapshots", "--json", env={"STRONGROOM_PASSWORD": candidate}, check=False
            )
            assert "Traceback" not in res.stderr
            opens.append(res.returncode == 0)
        assert opens.count(True) == 1, (run.describe(), opens)
        if opens[1]:
            assert run.killed or run.completed, run.describe()
            current = new
    cli.env["STRONGROOM_PASSWORD"] = current
    check_ok(cli, context="after passwd kills")


def test_kill_during_restore_then_restore_again(reference: Reference, tmp_path: Path) -> None:
    """Restore writes only into its target; an interrupted restore run again completes it."""
    cli = reference.cli
    target = tmp_path / "target"
    rng = random.Random(SEED + 6)
    for _ in range(3):
        run = run_killed(
            cli,
            "restore",
            "latest",
            "--target",
            str(target),
            after_start=rng.uniform(0.3, max(0.4, reference.total_s)),
        )
        assert run.killed or run.completed, run.describe()
    cli.restore(target)
    assert tree_state(target / "src") == tree_state(reference.source.path)
