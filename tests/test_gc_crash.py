"""Crash safety of garbage collection: real processes, real SIGKILL, no mocks of the store.

A repository is prepared once in which a prune has every kind of work to do: two packs to
repack (most of their bytes are garbage) and two to drop (all garbage). Each test copies it and
kills a prune: at each step GC reports (`step` hook of collect_garbage in a small Python child
process, which SIGKILLs itself there), between a new pack's ``.tmp`` write and its rename, and
at random moments of a real `strongroom prune`. After every kill:

* `strongroom check --read-data` passes (so the repository opens and every blob is intact),
* every kept snapshot restores byte for byte,
* the next `strongroom prune` completes, and leaves exactly the packs an uninterrupted prune
  leaves, with no file in packs/ that the index does not name.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli, strongroom_exe, tree_state
from test_crash import holds_writer_lock
from test_gc import disk_packs, index_db, index_packs, write_random

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not os.path.exists("/proc/locks"),
    reason="needs SIGKILL and /proc/locks (Linux)",
)

MiB = 1024 * 1024
SEED = 20261129

# name -> size in KiB; snapshot -> the files it holds. S1..S4 are forgotten before the prune:
# P1 (S1: keep1 + die1) and P2 (S2: keep2 + die2) are mostly garbage -> repacked;
# P3 (S3: die3) and P4 (S4: die4) are all garbage -> dropped; P0 and P5 are kept as they are.
FILES = {"base": 512, "keep1": 3072, "die1": 4096, "keep2": 2048, "die2": 3072}
FILES |= {"die3": 3072, "die4": 2048, "keep5": 1024}
SNAPSHOTS = [
    ("base",),
    ("base", "keep1", "die1"),
    ("base", "keep1", "keep2", "die2"),
    ("base", "keep1", "keep2", "die3"),
    ("base", "keep1", "keep2", "die4"),
    ("base", "keep1", "keep2", "keep5"),
]
KEPT = (0, 5)


@dataclass(frozen=True)
class Template:
    repo: Path
    snaps: dict[str, dict[Any, tuple[Any, ...]]]  # kept snapshot id -> its source's state
    final: tuple[Any, ...]  # index after an uninterrupted prune
    work_s: float  # how long that prune ran after taking the writer lock


def index_state(repo: Path) -> tuple[Any, ...]:
    """What a finished prune decides: the packs, and where each blob lives."""
    db = index_db(repo)
    try:
        packs = db.execute("SELECT name, size FROM packs ORDER BY name").fetchall()
        blobs = db.execute(
            "SELECT hex(b.blob_id), p.name, b.offset, b.length FROM blobs b "
            "JOIN packs p ON p.id = b.pack ORDER BY b.blob_id"
        ).fetchall()
        snaps = db.execute("SELECT snap_id FROM snapshots ORDER BY snap_id").fetchall()
    finally:
        db.close()
    return tuple(packs), tuple(blobs), tuple(snaps)


# ---- killing ---------------------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    lock_at: float | None
    ended_at: float | None

    def describe(self) -> str:
        return (
            f"rc={self.returncode} lock_at={self.lock_at} ended_at={self.ended_at}\n{self.stderr}"
        )


def prune_killed(cli: Cli, after_lock: float, timeout: float = 60) -> Run:
    """`strongroom prune`, SIGKILLed `after_lock` seconds after it took the writer lock (if it
    has not finished by then)."""
    inode = os.stat(cli.repo / "lock").st_ino
    t0 = time.monotonic()
    deadline = t0 + timeout
    proc = subprocess.Popen(
        [*strongroom_exe(), "prune", "--json"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock_at = ended_at = None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if holds_writer_lock(proc.pid, inode):
                lock_at = time.monotonic() - t0
                break
            time.sleep(0.001)
        kill_at = time.monotonic() + after_lock
        while proc.poll() is None and time.monotonic() < min(kill_at, deadline):
            time.sleep(min(0.002, max(0.0, kill_at - time.monotonic())))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        else:
            ended_at = time.monotonic() - t0
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Run(proc.returncode, out, err, lock_at, ended_at)


# The child: GC on the store with a hook that SIGKILLs the process at the n-th `target` step.
# "pack-tmp" is not a GC step: it is the moment a new pack's .tmp file is complete and fsync'd
# but not yet renamed to its final name.
_GC_CHILD = """
import os, signal, sys
from pathlib import Path
from strongroom.store import PackStore
from strongroom.store.gc import collect_garbage

root, target, nth = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seen = {}

def step(name):
    seen[name] = seen.get(name, 0) + 1
    if name == target and seen[name] == nth:
        os.kill(os.getpid(), signal.SIGKILL)

real_replace = os.replace

def replace(src, dst):
    if str(src).endswith(".tmp"):
        step("pack-tmp")
    return real_replace(src, dst)

os.replace = replace
store = PackStore(root, writer=True)
report = collect_garbage(store, step=step)
print("finished", seen, report)
"""


def gc_killed_at(repo: Path, target: str, nth: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _GC_CHILD, str(repo), target, str(nth)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- the prepared repository -----------------------------------------------------------------


def utc_cli(tmp: Path) -> Cli:
    cli = Cli(tmp)
    cli.env["TZ"] = "UTC"
    return cli


def copy_of(template: Template, tmp: Path) -> Cli:
    cli = utc_cli(tmp)
    shutil.copytree(template.repo, cli.repo)
    return cli


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    tmp = tmp_path_factory.mktemp("gc-crash")
    cli = utc_cli(tmp / "build")
    cli.init()
    src = tmp / "src"
    src.mkdir()
    ids: list[str] = []
    states: dict[str, dict[Any, tuple[Any, ...]]] = {}
    for n, names in enumerate(SNAPSHOTS):
        for old in src.iterdir():
            if old.stem not in names:
                old.unlink()
        for name in names:
            if not (src / f"{name}.bin").exists():
                write_random(src / f"{name}.bin", FILES[name] * 1024, f"{SEED}-{name}")
        snap = cli.backup(src, extra=("--time", f"2025-0{n + 1}-01 12:00"))["snapshot"]
        ids.append(snap)
        if n in KEPT:
            states[snap] = tree_state(src)
    assert len(index_packs(cli.repo)) == len(SNAPSHOTS)  # one pack per backup, as planned
    cli.run("forget", *(s for n, s in enumerate(ids) if n not in KEPT))

    # An uninterrupted prune on a copy: what every interrupted one must end up as.
    ref = copy_of(Template(cli.repo, states, (), 0.0), tmp / "reference")
    run = prune_killed(ref, after_lock=120)
    assert run.returncode == 0 and run.lock_at is not None and run.ended_at, run.describe()
    report = ref.run("prune", "--json").json()  # a second prune has nothing left to do
    assert report["reclaimed_bytes"] == 0, report
    first = _json(run.stdout)
    assert (first["repacked_packs"], first["deleted_packs"]) == (2, 2), first
    assert disk_packs(ref.repo) == index_packs(ref.repo)
    ref.run("check", "--read-data")
    return Template(cli.repo, states, index_state(ref.repo), run.ended_at - run.lock_at)


def _json(text: str) -> dict[str, Any]:
    import json

    return dict(json.loads(text))


def assert_recovers(cli: Cli, template: Template, tmp: Path, context: str) -> None:
    res = cli.run("check", "--read-data", check=False)
    assert res.returncode == 0, f"{context}: check failed\n{res.stdout}\n{res.stderr}"
    for snap, state in template.snaps.items():
        target = tmp / f"restore-{snap[:8]}"
        cli.restore(target, snap)
        assert tree_state(target / "src") == state, f"{context}: {snap[:8]} restores wrong"
    res = cli.run("prune", "--json", check=False)
    assert res.returncode == 0, f"{context}: the next prune failed\n{res.stderr}"
    on_disk = disk_packs(cli.repo)
    assert on_disk == index_packs(cli.repo), f"{context}: packs/ holds files the index lacks"
    assert not any(name.endswith(".tmp") for name in on_disk)
    assert index_state(cli.repo) == template.final, f"{context}: differs from a clean prune"


# ---- kills at each step ----------------------------------------------------------------------

STEPS = [
    ("condemned", 1),  # condemned, nothing deleted yet
    ("pack-tmp", 1),  # first repack: its new pack only a .tmp
    ("new-pack-written", 1),  # first repack: new pack durable, not indexed
    ("switched", 1),  # first repack: index switched, old pack file still there
    ("pack-tmp", 2),
    ("new-pack-written", 2),
    ("switched", 2),
    ("dropped", 1),  # first dead pack: gone from the index, file still there
    ("dropped", 2),
]


@pytest.mark.parametrize(("step", "nth"), STEPS, ids=[f"{s}-{n}" for s, n in STEPS])
def test_kill_gc_at_step(template: Template, tmp_path: Path, step: str, nth: int) -> None:
    cli = copy_of(template, tmp_path)
    before = index_packs(cli.repo)
    proc = gc_killed_at(cli.repo, step, nth)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    leftovers = set(disk_packs(cli.repo)) - set(index_packs(cli.repo))
    if step in ("new-pack-written", "switched", "dropped", "pack-tmp"):
        assert leftovers, "the kill should have left a file for the next writer to remove"
    if step == "condemned":
        assert index_packs(cli.repo) == before
    assert_recovers(cli, template, tmp_path, f"killed at {step} #{nth}")


def test_kill_prune_twice_in_a_row(template: Template, tmp_path: Path) -> None:
    """Killed after the first repack, then killed again after the first drop of the second
    attempt: the third prune still ends where a clean one does."""
    cli = copy_of(template, tmp_path)
    assert gc_killed_at(cli.repo, "switched", 1).returncode == -signal.SIGKILL
    assert gc_killed_at(cli.repo, "dropped", 1).returncode == -signal.SIGKILL
    assert_recovers(cli, template, tmp_path, "killed twice")


def test_kill_prune_at_random_moments(template: Template, tmp_path: Path) -> None:
    """`strongroom prune` SIGKILLed at moments spread over the length of a clean prune's work
    (measured after taking the writer lock, so start-up time does not count)."""
    rng = random.Random(SEED)
    fractions = [0.03, 0.12, 0.3, 0.6]  # early-heavy: a faster run still gets killed
    killed = 0
    for i, fraction in enumerate(fractions):
        delay = template.work_s * (fraction + rng.uniform(0, 0.08))
        cli = copy_of(template, tmp_path / f"kill{i}")
        run = prune_killed(cli, after_lock=delay)
        context = f"random kill {i} after {delay:.3f}s: {run.describe()}"
        assert run.lock_at is not None, context
        if run.returncode == -signal.SIGKILL:
            killed += 1
        else:
            assert run.returncode == 0, context
        assert_recovers(cli, template, tmp_path / f"kill{i}", context)
    assert killed >= 2, f"only {killed} of {len(fractions)} prunes were interrupted"
