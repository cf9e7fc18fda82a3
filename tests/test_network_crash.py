"""Nothing is lost over the network (DESIGN.md): SIGKILL of the server or of the client in the
middle of a backup, with real processes on 127.0.0.1 and real TLS.

The moment of the kill is chosen by watching the server's storage folder fill up with packs
(every wait is bounded), so it does not depend on how fast this machine happens to be. After a
kill: the client that lost its server says so in one line; the restarted server shows no half
snapshot; the next backup completes, re-sends only what was not durably stored, and
`check --read-data` and a full restore agree with the source.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Result
from netfixtures import NetCli, Server, finish, spawn

MiB = 1024 * 1024
SEED = 20240917
BIG_FILES_MIB = (32, 24, 24, 20, 16, 16, 12, 10, 8, 6, 4, 2)  # random: does not compress
SMALL_DIRS, SMALL_PER_DIR = 20, 100  # 2000 small files, ~20 MB, mostly random
PACK_SLACK = 20 * MiB  # a pack (8 MiB + one blob) renamed but not yet indexed at the kill, etc.


@dataclass(frozen=True)
class Source:
    path: Path
    files: int
    size: int
    small_size: int  # bytes in small files, whose bundling may differ from run to run
    state: dict[str, tuple[Any, ...]]


def file_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Like conftest.tree_state, with a digest instead of the contents (the tree is large)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                with open(p, "rb") as fh:
                    digest = hashlib.file_digest(fh, "blake2b").hexdigest()
                out[rel] = ("file", st.st_mode, st.st_mtime_ns, st.st_size, digest)
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """~200 MB: a dozen large random files and 2000 small ones (a fifth of them text)."""
    root = tmp_path_factory.mktemp("net-crash-source") / "src"
    rng = random.Random(SEED)
    words = [rng.randbytes(rng.randint(2, 6)).hex() for _ in range(1000)]
    files = size = small = 0
    for d in range(SMALL_DIRS):
        sub = root / f"dir{d:02d}" / f"sub{d % 4}"
        sub.mkdir(parents=True)
        for i in range(SMALL_PER_DIR):
            n = rng.randint(200, 20000)
            text = " ".join(rng.choices(words, k=n // 8)).encode() if i % 5 == 0 else None
            data = text if text is not None else os.urandom(n)
            (sub / f"file{i:03d}.dat").write_bytes(data)
            files, size, small = files + 1, size + len(data), small + len(data)
    (root / "big").mkdir()
    for i, mib in enumerate(BIG_FILES_MIB):
        (root / "big" / f"part{i:02d}.bin").write_bytes(os.urandom(mib * MiB))
        files, size = files + 1, size + mib * MiB
    (root / "big" / "link").symlink_to("part00.bin")
    files += 1
    return Source(root, files, size, small, file_state(root))


# ---- helpers ---------------------------------------------------------------------------------


def storage_dir(server: Server, user: str) -> Path:
    users = json.loads(server.admin("user", "list", "--json").stdout)
    (sid,) = [u["storage_id"] for u in users if u["name"] == user]
    return server.data_dir / "storage" / sid


def pack_bytes(store: Path) -> int:
    """Bytes in complete pack files (a pack being written is still NAME.tmp)."""
    total = 0
    for dirpath, _dirs, names in os.walk(store / "packs"):
        for name in names:
            if not name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):  # a pack removed meanwhile
                    total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def start_backup_until(
    cli: NetCli, src: Path, store: Path, threshold: int, timeout: float = 90
) -> subprocess.Popen[str]:
    """Start a backup and return once the server has stored `threshold` bytes of packs."""
    proc = spawn(cli, "backup", str(src), "--json")
    deadline = time.monotonic() + timeout
    while pack_bytes(store) < threshold:
        if proc.poll() is not None:
            res = finish(proc)
            raise AssertionError(f"the backup ended before the kill: {res}")
        if time.monotonic() > deadline:
            proc.kill()
            finish(proc)
            raise AssertionError(f"no {threshold} bytes stored after {timeout}s")
        time.sleep(0.005)
    return proc


def one_line_error(res: Result, *needles: str) -> str:
    context = f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert res.returncode == 1, context
    assert "Traceback" not in res.stderr, context
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("strongroom: error: "), context
    assert "internal error" not in lines[0], context
    for needle in needles:
        assert needle in lines[0], context
    return lines[0]


def resend_bound(source: Source, stored_at_kill: int) -> int:
    """What a backup after a kill may upload: what was not durably stored and indexed, plus
    small files (their bundles depend on thread timing: a re-bundled file is new bytes), plus
    trees and a pack that was renamed but not yet indexed at the kill."""
    return source.size - stored_at_kill + source.small_size + PACK_SLACK


def backup_completes_and_restores(
    cli: NetCli, source: Source, tmp_path: Path, stored_at_kill: int
) -> dict[str, Any]:
    out: dict[str, Any] = cli.backup(source.path)
    assert out["added"] == source.files and out["removed"] == 0, out
    assert out["bytes_uploaded"] <= resend_bound(source, stored_at_kill), (out, stored_at_kill)
    res = cli.run("check", "--read-data")
    assert res.stdout.startswith("no errors: 1 snapshots"), res.stdout
    assert res.stderr == ""
    target = tmp_path / "restored"
    cli.restore(target)
    assert file_state(target / source.path.name) == source.state
    shutil.rmtree(target)
    return out


def discard(server: Server) -> None:
    """After a passing test: stop the server and free its ~200 MB (a failure keeps it)."""
    server.kill()
    shutil.rmtree(server.data_dir, ignore_errors=True)


# ---- the server dies ---------------------------------------------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.parametrize("fraction", [0.15, 0.5, 0.85], ids=["early", "middle", "late"])
def test_server_killed_during_backup(
    source: Source, server: Server, alice: NetCli, tmp_path: Path, fraction: float
) -> None:
    store = storage_dir(server, "alice")
    proc = start_backup_until(alice, source.path, store, int(fraction * source.size))
    server.kill()  # SIGKILL: no chance to flush, close or say goodbye
    stored_at_kill = pack_bytes(store)
    res = finish(proc)
    one_line_error(res, f"server {server.address}")
    assert res.stdout == ""

    server.start()  # same port, same data folder
    assert alice.run("snapshots", "--json").json() == []  # no half snapshot
    out = backup_completes_and_restores(alice, source, tmp_path, stored_at_kill)
    if fraction >= 0.8:  # most of the data was durable: the resumed run re-sends little
        assert out["bytes_uploaded"] < 0.4 * source.size, (out, stored_at_kill)
    print(
        f"\nserver killed at {stored_at_kill / MiB:.0f} of {source.size / MiB:.0f} MiB stored; "
        f"next backup uploaded {out['bytes_uploaded'] / MiB:.1f} MiB in {out['duration']}s"
    )
    assert "Traceback" not in server.log.read_text()
    discard(server)


@pytest.mark.timeout(150)
def test_server_stopped_during_backup(
    source: Source, server: Server, alice: NetCli, tmp_path: Path
) -> None:
    """SIGTERM (an admin restarting the service) in the middle of a backup: the server stops
    cleanly and soon; the backup either finished or failed with one line, never half-done."""
    store = storage_dir(server, "alice")
    proc = start_backup_until(alice, source.path, store, source.size // 2)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    out, _ = server.proc.communicate(timeout=30)
    assert server.proc.returncode == 0, server.log.read_text()[-2000:]
    assert "stopped" in out
    res = finish(proc)
    stored_at_stop = pack_bytes(store)
    server.start()
    snaps = alice.run("snapshots", "--json").json()
    if res.returncode == 0:  # the server let the running backup finish before stopping
        assert [s["id"] for s in snaps] == [res.json()["snapshot"]]
        alice.run("forget", "latest")
    else:
        one_line_error(res, f"server {server.address}")
        assert snaps == []
    backup_completes_and_restores(alice, source, tmp_path, stored_at_stop)
    assert "Traceback" not in server.log.read_text()
    discard(server)


# ---- the client dies ---------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_client_killed_during_backup(
    source: Source, server: Server, alice: NetCli, tmp_path: Path
) -> None:
    bob = server.add_user("bob", tmp_path, password="bob's own password")
    store = storage_dir(server, "alice")
    proc = start_backup_until(alice, source.path, store, source.size // 2)
    proc.kill()
    finish(proc)
    stored_at_kill = pack_bytes(store)

    # The server keeps serving: another user backs up, and the killed user reads.
    assert server.alive()
    bob_src = tmp_path / "bob-src"
    bob_src.mkdir()
    (bob_src / "b.txt").write_text("bob\n")
    assert bob.backup(bob_src)["added"] == 1
    assert alice.run("snapshots", "--json").json() == []  # no half snapshot
    res = alice.run("check", "--read-data")
    assert res.stdout.startswith("no errors: 0 snapshots"), res.stdout

    out = backup_completes_and_restores(alice, source, tmp_path, stored_at_kill)
    assert out["bytes_uploaded"] < 0.75 * source.size, (out, stored_at_kill)
    print(
        f"\nclient killed at {stored_at_kill / MiB:.0f} of {source.size / MiB:.0f} MiB stored; "
        f"next backup uploaded {out['bytes_uploaded'] / MiB:.1f} MiB in {out['duration']}s"
    )
    bob.run("check", "--read-data")
    assert server.alive()
    assert "Traceback" not in server.log.read_text()
    discard(server)
