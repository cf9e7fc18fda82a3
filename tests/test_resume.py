"""An interrupted backup resumes: the next run sends only what the server does not hold yet.

A ~300 MB tree (big random files and a few thousand small ones) is backed up to a real
strongroom-server on 127.0.0.1; once the server's storage holds more than 60 % of it, the
client is killed (SIGKILL), or the server is (a network cut, as the client sees it) and
restarted. The next backup completes, and what it uploads (`bytes_uploaded`) is what the server
stored meanwhile, give or take a few MB: nothing that was already durable is sent again.
`check --read-data` then reads every blob back. Every wait is bounded.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netfixtures import NetCli, Server, finish, spawn
from test_network_crash import file_state, pack_bytes, storage_dir

pytestmark = pytest.mark.timeout(150)

MiB = 1024 * 1024
BIG_FILES_MIB = (48, 40, 32, 32, 24, 24, 16, 16, 12, 8)  # random: does not compress
SMALL_DIRS, SMALL_PER_DIR = 25, 100  # 2500 small files, ~40 MB, a fifth of them text
KILL_AT = 0.6  # share of the data the server holds when the backup is interrupted
SLACK = 4 * MiB  # trees, and the last partial batch: "a few MB"


@dataclass(frozen=True)
class Tree:
    path: Path
    files: int
    size: int
    small_size: int
    state: dict[str, tuple[Any, ...]]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    root = tmp_path_factory.mktemp("resume") / "src"
    rng = random.Random(4711)
    words = [rng.randbytes(rng.randint(2, 6)).hex() for _ in range(500)]
    files = size = small = 0
    for d in range(SMALL_DIRS):
        sub = root / f"docs{d:02d}"
        sub.mkdir(parents=True)
        for i in range(SMALL_PER_DIR):
            n = rng.randint(100, 32_000)
            text = " ".join(rng.choices(words, k=n // 8)).encode() if i % 5 == 0 else None
            data = text if text is not None else os.urandom(n)
            (sub / f"f{i:03d}.dat").write_bytes(data)
            files, size, small = files + 1, size + len(data), small + len(data)
    (root / "media").mkdir()
    for i, mib in enumerate(BIG_FILES_MIB):
        (root / "media" / f"video{i:02d}.bin").write_bytes(os.urandom(mib * MiB))
        files, size = files + 1, size + mib * MiB
    return Tree(root, files, size, small, file_state(root))


def stored(server: Server, user: str = "alice") -> int:
    """Bytes in the user's indexed packs, as `strongroom-admin usage` reports them."""
    (row,) = [r for r in server.admin("usage", "--json").json() if r["name"] == user]
    return int(row["stored_bytes"])


def wait_disconnected(server: Server, user: str = "alice", timeout: float = 30) -> None:
    """Until the server has seen every connection of `user` end (and so flushed its store)."""
    deadline = time.monotonic() + timeout
    while True:
        log = server.log.read_text(errors="replace")
        if log.count(f"login ok for user {user!r}") == log.count(f"disconnected user={user} "):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the server still has a session of {user}:\n{log[-2000:]}")
        time.sleep(0.05)


def interrupt_when_stored(cli: NetCli, tree: Tree, store: Path, timeout: float = 90) -> Any:
    """Start a backup; return the running client once the server holds KILL_AT of the tree."""
    proc = spawn(cli, "backup", str(tree.path), "--json")
    deadline = time.monotonic() + timeout
    while pack_bytes(store) < KILL_AT * tree.size:
        if proc.poll() is not None:
            raise AssertionError(f"the backup ended before the interruption: {finish(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"not {KILL_AT:.0%} stored after {timeout}s: {finish(proc)}")
        time.sleep(0.005)
    return proc


def resumes(cli: NetCli, server: Server, tree: Tree, before: int) -> dict[str, Any]:
    """The retry completes and uploads what it stores, give or take a few MB."""
    assert before >= 0.5 * tree.size, f"only {before} of {tree.size} bytes were kept"
    out: dict[str, Any] = cli.backup(tree.path)
    after = stored(server)
    sent = out["bytes_uploaded"]
    assert out["added"] == tree.files and out["removed"] == 0, out
    assert sent <= after - before + SLACK, (sent, after, before)
    # Little is sent again: the missing share, small files (bundled anew) and trees.
    assert sent <= tree.size - before + tree.small_size + SLACK, (sent, before, tree.size)
    res = cli.run("check", "--read-data")
    assert res.stdout.startswith("no errors: 1 snapshots"), res.stdout
    assert res.stderr == ""
    print(
        f"\ninterrupted with {before / MiB:.0f} of {tree.size / MiB:.0f} MiB stored; the retry "
        f"uploaded {sent / MiB:.1f} MiB, stored {(after - before) / MiB:.1f} MiB"
    )
    return out


def test_backup_resumes_after_the_client_is_killed(
    tree: Tree, server: Server, alice: NetCli, tmp_path: Path
) -> None:
    store = storage_dir(server, "alice")
    proc = interrupt_when_stored(alice, tree, store)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    wait_disconnected(server)  # what the server had received is stored now
    assert alice.run("snapshots", "--json").json() == []  # no half snapshot
    out = resumes(alice, server, tree, stored(server))
    target = tmp_path / "restored"
    alice.restore(target, out["snapshot"])
    assert file_state(target / tree.path.name) == tree.state
    assert server.alive() and "Traceback" not in server.log.read_text()


def test_backup_resumes_after_the_connection_is_cut(
    tree: Tree, server: Server, alice: NetCli
) -> None:
    store = storage_dir(server, "alice")
    proc = interrupt_when_stored(alice, tree, store)
    server.kill()  # the client's connection dies mid-upload; the server's buffers are lost
    res = finish(proc)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == "", res
    server.start()
    assert alice.run("snapshots", "--json").json() == []
    resumes(alice, server, tree, stored(server))
    assert "Traceback" not in server.log.read_text()
