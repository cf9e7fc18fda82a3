"""What one user can make the server hold (issue 8, findings 7 and 8), on a real server.

- Nothing stored is free: tiny blobs are refused, every blob's index row and every snapshot's
  record, row and manifest rows count against the quota.
- A connection's pending manifest lives in a temporary file, not in server memory.
- `user delete --purge-data` while the server runs ends the user's sessions and closes their
  storage first, and a crash half-way is finished by the next start.
- The client's cache (plain file names) is private to its user.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from netfixtures import NetCli, Server
from strongroom.protocol import messages as m
from strongroom.server.stores import BLOB_CHARGE, MANIFEST_REF_CHARGE, SNAPSHOT_CHARGE
from strongroom.snapshot import new_snapshot_id
from test_network_crash import storage_dir
from test_server_hostile import assert_no_tracebacks, connect, is_error, list_snapshots

pytestmark = pytest.mark.timeout(240)

MiB = 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_files(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return out


def test_tiny_blobs_index_rows_and_records_count_against_the_quota(
    server: Server, tmp_path: Path
) -> None:
    server.add_user("alice", tmp_path, extra=("--quota", "100K"))
    quota = 100 * 1024
    with connect(server, "alice") as raw:
        # Empty and too-short stored blobs are refused outright (no real blob is that small).
        raw.send(m.PutBlobs([(os.urandom(32), 0, b"")]))
        assert [msg.code for _r, msg in raw.until_closed()] == [m.ErrorCode.BAD_REQUEST]
    stored = 0
    with connect(server, "alice") as raw:
        # The smallest blobs a client can store, 100 at a time, until the quota says no.
        for _ in range(100):
            batch = [(os.urandom(32), 0, os.urandom(29)) for _ in range(100)]
            answer = raw.call(m.PutBlobs(batch))
            if isinstance(answer, m.Error):
                assert is_error(answer, m.ErrorCode.QUOTA_EXCEEDED), answer
                break
            stored += 100
        else:
            raise AssertionError("the quota never refused")
    # Refused while the bytes alone were a third of the quota: the index rows count too.
    assert stored * 29 < quota / 2
    assert stored * (29 + BLOB_CHARGE) <= quota
    # `usage` shows what the quota counts, beside the bytes in packs.
    deadline = time.monotonic() + 30
    while True:  # the store writes out what it buffered when the last session ends
        (row,) = [r for r in server.admin("usage", "--json").json() if r["name"] == "alice"]
        if row["stored_bytes"] >= stored * 29 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert row["quota_used_bytes"] >= row["stored_bytes"] + stored * BLOB_CHARGE
    assert_no_tracebacks(server)


def test_snapshot_records_and_manifests_count_against_the_quota(
    server: Server, tmp_path: Path
) -> None:
    server.add_user("alice", tmp_path, extra=("--quota", "600K"))
    root = (os.urandom(32), 1, os.urandom(1000))
    with connect(server, "alice") as raw:
        assert raw.call(m.PutBlobs([root])) == m.Ok(1)
        # A 512 KiB record fits once (with its charges), not twice.
        record = os.urandom(512 * 1024)
        raw.call(m.ManifestPart([root[0]]))
        assert raw.call(m.Commit(new_snapshot_id(), time.time_ns(), record, "", root[0])) == m.Ok()
        raw.call(m.ManifestPart([root[0]]))
        refused = raw.call(m.Commit(new_snapshot_id(), time.time_ns(), record, "", root[0]))
        assert is_error(refused, m.ErrorCode.QUOTA_EXCEEDED), refused
        assert "record and manifest" in refused.message  # type: ignore[attr-defined]
        assert len(list_snapshots(raw)) == 1
    assert SNAPSHOT_CHARGE > 0 and MANIFEST_REF_CHARGE > 0
    assert_no_tracebacks(server)


def test_a_huge_pending_manifest_does_not_live_in_server_memory(
    server: Server, tmp_path: Path
) -> None:
    """4,000,000 IDs (the most one commit may stage) cost the server a temporary file, not
    ~430 MB of Python set; the memory it gains stays under a part's worth plus noise."""
    server.add_user("alice", tmp_path)
    assert server.proc is not None
    pid = server.proc.pid
    with connect(server, "alice") as raw:
        raw.call(m.ManifestPart([os.urandom(32)]))  # the first part opens the file
        before = rss_kib(pid)
        peak = before
        per_part = 65536
        for i in range(4_000_000 // per_part):
            ids = [i.to_bytes(4, "big") + os.urandom(28) for _ in range(per_part)]
            assert raw.call(m.ManifestPart(ids)) == m.Ok(1 + (i + 1) * per_part)
            if i % 8 == 0:
                peak = max(peak, rss_kib(pid))
        peak = max(peak, rss_kib(pid))
        # One more part is over the limit: the connection is closed, the server lives.
        raw.send(m.ManifestPart([os.urandom(32) for _ in range(per_part)]))
        assert [msg.code for _r, msg in raw.until_closed(30)] == [m.ErrorCode.BAD_REQUEST]
    grown_mib = (peak - before) / 1024
    # The README states: a connection holds at most one frame and its decoded copy in memory.
    assert grown_mib < 64, f"server memory grew {grown_mib:.0f} MiB for a staged manifest"
    # Nothing staged is left on disk: the server holds no manifest file open any more.
    assert server.proc is not None
    deadline = time.monotonic() + 10
    while any(
        # an anonymous temporary file in the data folder (O_TMPFILE: "…/#123 (deleted)")
        str(server.data_dir) in link and link.endswith("(deleted)")
        for link in open_files(pid)
    ):
        assert time.monotonic() < deadline, "a staged manifest file is still open"
        time.sleep(0.1)
    assert_no_tracebacks(server)


def test_purge_while_the_server_runs_ends_sessions_first(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    bob = server.add_user("bob", tmp_path, password="bob's password")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(200_000))
    alice.backup(src)
    store = storage_dir(server, "alice")
    with connect(server, "alice") as open_session:
        out = server.admin("user", "delete", "alice", "--yes", "--purge-data")
        assert "with their stored backups" in out.stdout
        answers = open_session.until_closed()
        assert [msg.code for _r, msg in answers] == [m.ErrorCode.SESSION_ENDED], answers
    assert not store.exists()
    assert not list((server.data_dir / "storage").glob(".purge-*"))
    bob.backup(src)  # everyone else is served
    assert_no_tracebacks(server)


@pytest.mark.parametrize("stage", ["row-deleted", "renamed"])
def test_a_purge_interrupted_by_a_crash_is_finished_at_the_next_start(
    tmp_path: Path, stage: str
) -> None:
    """The state a kill leaves after each step of the purge (the row and the queue entry are
    one transaction, so there is no state between them): the next start completes it."""
    server = Server(tmp_path / "server-data").start()
    try:
        alice = server.add_user("alice", tmp_path)
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_text("data\n")
        alice.backup(src)
        users = json.loads(server.admin("user", "list", "--json").stdout)
        (sid,) = [u["storage_id"] for u in users if u["name"] == "alice"]
        server.stop()
        store = server.data_dir / "storage" / sid
        db = sqlite3.connect(server.data_dir / "users.sqlite", isolation_level=None)
        db.execute("BEGIN")
        db.execute("DELETE FROM users WHERE name = 'alice'")
        db.execute("INSERT INTO pending_purges(storage_id) VALUES(?)", (sid,))
        db.execute("COMMIT")
        db.close()
        trash = server.data_dir / "storage" / f".purge-{sid}"
        if stage == "renamed":
            os.replace(store, trash)
        server.start()
        assert not store.exists() and not trash.exists()
        db = sqlite3.connect(server.data_dir / "users.sqlite")
        assert db.execute("SELECT COUNT(*) FROM pending_purges").fetchone()[0] == 0
        db.close()
        # Storage a plain `user delete` kept (no purge queued) is never touched.
        bob = server.add_user("bob", tmp_path, password="bob's password")
        bob.backup(src)
        server.admin("user", "delete", "bob", "--yes")
        kept = storage_dir_by_scan(server)
        server.stop()
        server.start()
        assert all(p.exists() for p in kept)
    finally:
        server.kill()


def storage_dir_by_scan(server: Server) -> list[Path]:
    return [p for p in (server.data_dir / "storage").iterdir() if not p.name.startswith(".")]


def test_the_client_cache_is_private(server: Server, alice: NetCli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a secret file name.txt").write_text("x")
    # An older cache folder of this account, readable by others, is tightened; the base folder
    # is the user's choice (it could be /tmp) and is left as it is.
    account_cache = alice.cache / storage_dir(server, "alice").name
    account_cache.mkdir(parents=True)
    os.chmod(alice.cache, 0o755)
    os.chmod(account_cache, 0o755)
    alice.backup(src)
    assert stat.S_IMODE(alice.cache.stat().st_mode) == 0o755
    for path in [account_cache, *account_cache.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        wanted = 0o700 if path.is_dir() else 0o600
        assert mode & ~wanted == 0, f"{path} has mode {mode:o}"
    # A cache made from scratch is private from the top.
    fresh = tmp_path / "fresh-cache"
    alice.run("backup", str(src), env={"STRONGROOM_CACHE_DIR": str(fresh)})
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_staged_manifests_are_bounded_per_account_and_by_the_quota(
    server: Server, tmp_path: Path
) -> None:
    """Staged manifests are server disk: an account's connections together may stage at most
    one largest manifest, and no more than its quota."""
    server.add_user("alice", tmp_path, extra=("--quota", "1M"))
    part = [os.urandom(32) for _ in range(16384)]  # 512 KiB of IDs
    with connect(server, "alice") as one, connect(server, "alice") as two:
        assert one.call(m.ManifestPart(part)) == m.Ok(16384)
        # The second connection would take the account past its 1 MiB quota in staged IDs.
        assert two.call(m.ManifestPart(part)) == m.Ok(16384)
        two.send(m.ManifestPart(part))
        assert [msg.code for _r, msg in two.until_closed()] == [m.ErrorCode.QUOTA_EXCEEDED]
        # What the closed connection staged no longer counts: the first may stage again.
        assert one.call(m.ManifestPart(part)) == m.Ok(2 * 16384)
    assert_no_tracebacks(server)
