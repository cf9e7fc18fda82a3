"""Storage an admin runs for years, on a real strongroom-server (127.0.0.1, TLS).

Append-only accounts (over the real client and as raw protocol messages), the server's own
retention policy (per user, server-wide default, protection, series), quotas, `strongroom-admin
gc` through the admin socket or locally, `strongroom prune`, `usage` and `scrub`; and the race
that GC must win: a backup in progress never loses a blob it is about to reference, whether GC
condemns it while the backup runs or condemned it before the backup started.

Every wait is a poll with a deadline: the server applies its policy after it has answered the
commit, so the client may be gone before the policy has run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import PASSWORD, Result
from netfixtures import NetCli, Server, finish, spawn
from strongroom import crypto, keys
from strongroom.archiver import Archiver
from strongroom.client.login import Target, login, open_connection
from strongroom.client.remote import RemoteRepository
from strongroom.protocol import messages as m
from strongroom.server.stores import UserStore
from test_network_crash import file_state, pack_bytes, storage_dir
from test_server_hostile import (
    assert_no_tracebacks,
    connect,
    is_error,
    list_snapshots,
    storage_index,
)

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
T = TypeVar("T")


# ---- helpers ---------------------------------------------------------------------------------


def when(n: int) -> tuple[str, ...]:
    """--time of the n-th backup: one a day, in order."""
    return ("--time", f"2026-11-{n:02d} 12:00")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def backup(cli: NetCli, src: Path, n: int) -> str:
    out = cli.backup(src, extra=when(n))
    snap: str = out["snapshot"]
    return snap


def wait_for(
    what: str,
    probe: Callable[[], T],
    ok: Callable[[T], bool],
    timeout: float = 30,
    interval: float = 0.05,
) -> T:
    """Poll `probe` until `ok` says yes; fail with the last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout}s")
        time.sleep(interval)


_INDEX: dict[tuple[Path, str], Path] = {}


def query(server: Server, user: str, sql: str) -> list[tuple[Any, ...]]:
    """Read the user's index on the server directly (read-only; WAL lets the server go on)."""
    key = (server.data_dir, user)
    if key not in _INDEX:  # a user's storage folder never changes: ask the admin tool once
        _INDEX[key] = storage_index(server, user)
    db = sqlite3.connect(f"file:{_INDEX[key]}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def server_snapshots(server: Server, user: str) -> dict[str, bool]:
    """Snapshot ID -> protected, as the server holds them."""
    return {
        r[0]: bool(r[1]) for r in query(server, user, "SELECT snap_id, protected FROM snapshots")
    }


def wait_snapshots(server: Server, user: str, expected: set[str], timeout: float = 30) -> None:
    wait_for(
        f"{user}'s snapshots", lambda: set(server_snapshots(server, user)), expected.__eq__, timeout
    )


def usage(server: Server) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in server.admin("usage", "--json").json()}


def gc(server: Server, *args: str) -> dict[str, dict[str, Any]]:
    """`strongroom-admin gc ARGS --json`: user name -> GC report."""
    answers: dict[str, dict[str, Any]] = server.admin("gc", *args, "--json").json()
    return {name: a.get("report", a) for name, a in answers.items()}


def client_snapshots(cli: NetCli) -> list[str]:
    return [s["id"] for s in cli.run("snapshots", "--json").json()]


def one_line_error(res: Result, *needles: str) -> str:
    context = f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert res.returncode == 1, context
    assert "Traceback" not in res.stderr, context
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("strongroom: error: "), context
    for needle in needles:
        assert needle in lines[0], context
    return lines[0]


def check_clean(cli: NetCli) -> None:
    res = cli.run("check", "--read-data")
    assert res.stdout.startswith("no errors"), res.stdout
    assert res.stderr == ""


def restores(cli: NetCli, snap: str, src: Path, target: Path) -> None:
    cli.restore(target, snap)
    assert file_state(target / src.name) == file_state(src)


def remote(server: Server, user: str = "alice", password: str = PASSWORD) -> RemoteRepository:
    """The client library's own logged-in repository, in this process."""
    transport = open_connection(Target(server.address, user, server.fingerprint), None)
    try:
        return login(transport, user, password.encode())
    except BaseException:
        transport.close()
        raise


def condemned(server: Server, user: str) -> int:
    return int(
        query(server, user, "SELECT COUNT(*) FROM blobs WHERE condemned_ns IS NOT NULL")[0][0]
    )


def bye(raw: Any) -> None:
    """End a raw session as the client does: the server lets go of the user's storage."""
    assert raw.call(m.Bye()) == m.Ok()


def log_count(server: Server, needle: str) -> int:
    return server.log.read_text(errors="replace").count(needle)


# ---- append-only -----------------------------------------------------------------------------


def test_append_only_refuses_every_destructive_request(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"first\n")
    s1 = backup(alice, src, 1)
    write(src / "b.bin", os.urandom(100_000))
    s2 = backup(alice, src, 2)
    write(src / "b.bin", os.urandom(100_000))
    s3 = backup(alice, src, 3)
    alice.run("protect", s1)
    with connect(server) as raw:
        keyfile_before = raw.login("alice")
        bye(raw)
    assert isinstance(keyfile_before, m.LoginOk)
    server.admin("user", "set", "alice", "--append-only")
    before = server_snapshots(server, "alice")
    assert before == {s1: True, s2: False, s3: False}

    # The real client: one clear line each, exit 1, and nothing changes.
    newpw = tmp_path / "newpw"
    newpw.write_text("another password\n")
    for args in (
        ("forget", s2),
        ("forget", "--keep-last", "1"),
        ("forget", "--keep-last", "1", "--prune"),
        ("protect", "--remove", s1),
        ("passwd", "--new-password-file", str(newpw)),
    ):
        one_line_error(alice.run(*args, check=False, timeout=60), "append-only")
        assert server_snapshots(server, "alice") == before, args

    # Raw protocol messages, on a connection logged in after the change.
    kdf = crypto.KdfParams(memory_kib=1024, iterations=1, lanes=4)
    other_keys = keys.create_keyfile(b"mallory", keys.RepoKeys.generate(), kdf).to_json().encode()
    with connect(server) as raw:
        ok = raw.login("alice")
        assert isinstance(ok, m.LoginOk) and ok.flags & m.LOGIN_APPEND_ONLY
        own = keys.unlock(keys.KeyFile.from_json(ok.keyfile), PASSWORD.encode())
        rewrapped = keys.create_keyfile(b"mallory", own, kdf).to_json().encode()
        for req in (
            m.DeleteSnapshot(s2),
            m.DeleteSnapshot(s1),
            m.Protect(s1, 0),  # 0 = remove the protection
            m.SetKeyFile(other_keys),  # replacing the keys would make every backup unreadable
            m.SetKeyFile(rewrapped),  # even the same keys under another password
        ):
            refused = raw.call(req)
            assert is_error(refused, m.ErrorCode.FORBIDDEN), (req, refused)
            assert isinstance(refused, m.Error) and "append-only" in refused.message
        # Protecting adds a guarantee, and GC only reclaims what no snapshot uses: allowed.
        assert raw.call(m.Protect(s2, 1)) == m.Ok(1)
        report = raw.call(m.Prune(0))
        assert isinstance(report, m.Json) and json.loads(report.text)["deleted_blobs"] == 0
        assert list_snapshots(raw) == [s1, s2, s3]
    assert server_snapshots(server, "alice") == {s1: True, s2: True, s3: False}
    with connect(server) as raw:
        again = raw.login("alice")
        assert isinstance(again, m.LoginOk) and again.keyfile == keyfile_before.keyfile

    # Backing up still works, and everything reads back.
    write(src / "c.txt", b"fourth\n")
    s4 = backup(alice, src, 4)
    assert client_snapshots(alice) == [s1, s2, s3, s4]
    check_clean(alice)
    restores(alice, s4, src, tmp_path / "out")
    assert_no_tracebacks(server)


def test_server_policy_applies_to_append_only_users(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    # No protection window here: this test is about the policy itself (the window's own
    # tests are in tests/test_adversarial_commits.py).
    server.admin(
        "user", "set", "alice", "--append-only", "--protection-window", "0", "--keep-last", "2"
    )
    src = tmp_path / "src"
    write(src / "same.txt", b"in every snapshot\n" * 1000)
    snaps = []
    for n in range(1, 5):
        # 2 MiB of new random data each time: a snapshot's own packs, dropped whole by GC.
        for old in src.glob("unique*.bin"):
            old.unlink()
        write(src / f"unique{n}.bin", os.urandom(2 * MiB))
        snaps.append(backup(alice, src, n))
    wait_snapshots(server, "alice", set(snaps[2:]))
    assert client_snapshots(alice) == snaps[2:]
    # The removed snapshots' data is gone from the disk too: about two snapshots' worth.
    row = wait_for(
        "reclaimed storage",
        lambda: usage(server)["alice"],
        lambda r: r["stored_bytes"] < 2 * 2 * MiB + MiB and r["reclaimable_bytes"] == 0,
    )
    assert row["snapshots"] == 2 and row["policy"]["last"] == 2
    log = server.log.read_text()
    assert log.count("policy (") >= 2 and "removed 1 snapshot(s)" in log
    # The user still cannot remove anything themselves.
    one_line_error(alice.run("forget", snaps[3], check=False), "append-only")
    check_clean(alice)
    restores(alice, snaps[3], src, tmp_path / "out")
    assert_no_tracebacks(server)


# ---- the server's retention policy ---------------------------------------------------------


def test_server_policy_default_override_protection_and_series(
    server: Server, tmp_path: Path
) -> None:
    server.admin("policy", "set", "--keep-last", "1")
    assert server.admin("policy").stdout.strip() == "default policy: keep last 1"
    alice = server.add_user("alice", tmp_path)
    bob = server.add_user("bob", tmp_path, password="bob's password")
    a, b = tmp_path / "a", tmp_path / "b"
    day = iter(range(1, 29))

    def change(folder: Path) -> None:
        write(folder / "changing.bin", os.urandom(300_000))

    change(a)
    a1 = backup(alice, a, next(day))
    alice.run("protect", a1)  # survives every policy
    change(a)
    backup(alice, a, next(day))
    change(a)
    a3 = backup(alice, a, next(day))
    wait_snapshots(server, "alice", {a1, a3})
    # Another folder of the same user is another series, judged on its own.
    change(b)
    b1 = backup(alice, b, next(day))
    wait_snapshots(server, "alice", {a1, a3, b1})
    # The default applies to every user without a policy of their own.
    bsrc = tmp_path / "bob-src"
    change(bsrc)
    backup(bob, bsrc, next(day))
    change(bsrc)
    bob2 = backup(bob, bsrc, next(day))
    wait_snapshots(server, "bob", {bob2})

    # A user's own policy overrides the default.
    server.admin("user", "set", "alice", "--keep-last", "3")
    assert usage(server)["alice"]["policy"]["last"] == 3
    change(a)
    a4 = backup(alice, a, next(day))
    change(a)
    a5 = backup(alice, a, next(day))
    wait_snapshots(server, "alice", {a1, a3, a4, a5, b1})
    change(a)
    a6 = backup(alice, a, next(day))
    wait_snapshots(server, "alice", {a1, a4, a5, a6, b1})
    change(bsrc)
    bob3 = backup(bob, bsrc, next(day))
    wait_snapshots(server, "bob", {bob3})

    # --no-policy: back to the default.
    server.admin("user", "set", "alice", "--no-policy")
    assert usage(server)["alice"]["policy"] is None
    change(a)
    a7 = backup(alice, a, next(day))
    wait_snapshots(server, "alice", {a1, a7, b1})
    assert server_snapshots(server, "alice")[a1] is True

    # No default any more: nothing is removed.
    server.admin("policy", "clear")
    change(a)
    a8 = backup(alice, a, next(day))
    time.sleep(0.5)  # a policy would have been applied by the time the client has its answer
    assert set(server_snapshots(server, "alice")) == {a1, a7, a8, b1}
    assert set(server_snapshots(server, "bob")) == {bob3}
    assert client_snapshots(alice) == [a1, b1, a7, a8]
    # What the policy removed was reclaimed, and what it kept is whole.
    wait_for("alice reclaimed", lambda: usage(server)["alice"]["reclaimable_bytes"], (0).__eq__)
    check_clean(alice)
    restores(alice, a8, a, tmp_path / "out")
    check_clean(bob)
    assert_no_tracebacks(server)


# ---- quota -----------------------------------------------------------------------------------


def test_quota_refuses_the_backup_and_gc_frees_what_it_left(server: Server, tmp_path: Path) -> None:
    alice = server.add_user("alice", tmp_path, extra=("--quota", "3M"))
    fits = tmp_path / "fits"
    write(fits / "one.bin", os.urandom(MiB))
    s1 = backup(alice, fits, 1)
    ok = usage(server)["alice"]
    assert ok["last_backup_result"] == "ok" and ok["snapshots"] == 1
    too_big = tmp_path / "too-big"
    write(too_big / "five.bin", os.urandom(5 * MiB))

    res = alice.run("backup", str(too_big), "--json", *when(2), check=False)
    line = one_line_error(res, "quota")
    assert "3145728" in line and res.stdout == ""
    assert client_snapshots(alice) == [s1]
    restores(alice, s1, fits, tmp_path / "out")

    # The admin sees the failure and the space its uploads left behind.
    row = wait_for(
        "failed upload counted",
        lambda: usage(server)["alice"],
        lambda r: r["reclaimable_bytes"] > 0,
    )
    assert row["quota"] == 3 * MiB and row["snapshots"] == 1
    assert row["stored_bytes"] > MiB and row["stored_bytes"] <= 3 * MiB
    assert row["last_backup_result"].startswith("failed"), row
    assert row["last_backup_ns"] > ok["last_backup_ns"]
    table = server.admin("usage").stdout
    assert "alice" in table and "3.0 MiB" in table and "failed" in table

    reports = gc(server, "alice")
    assert reports["alice"]["reclaimed_bytes"] > 0
    after = usage(server)["alice"]
    assert after["reclaimable_bytes"] == 0
    assert after["stored_bytes"] < row["stored_bytes"] and after["stored_bytes"] < 1.1 * MiB
    check_clean(alice)
    restores(alice, s1, fits, tmp_path / "out2")
    assert_no_tracebacks(server)


# ---- gc, prune, usage and scrub --------------------------------------------------------------


def test_gc_through_the_server_or_locally_and_prune_over_the_network(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "kept.txt", b"kept\n" * 10_000)
    write(src / "u1.bin", os.urandom(12 * MiB))
    s1 = backup(alice, src, 1)
    (src / "u1.bin").unlink()
    write(src / "u2.bin", os.urandom(12 * MiB))
    s2 = backup(alice, src, 2)
    (src / "u2.bin").unlink()
    s3 = backup(alice, src, 3)

    def state() -> tuple[Any, ...]:
        row = usage(server)["alice"]
        blobs = query(server, "alice", "SELECT COUNT(*), COUNT(condemned_ns) FROM blobs")[0]
        return row["stored_bytes"], row["reclaimable_bytes"], row["snapshots"], blobs

    # `strongroom prune` over the network: the server collects, with no key.
    alice.run("forget", s1)
    before = state()
    assert before[1] >= 12 * MiB
    dry = alice.run("prune", "--dry-run", "--json").json()
    assert dry["dry_run"] is True and dry["unreferenced_bytes"] == before[1]
    assert state() == before
    pruned = alice.run("prune", "--json").json()
    assert pruned["reclaimed_bytes"] >= 8 * MiB, pruned
    assert state()[0] == before[0] - pruned["reclaimed_bytes"]

    # `strongroom-admin gc` while the server runs: through its admin socket.
    alice.run("forget", s2)
    before = state()
    seen = log_count(server, "admin gc")
    text = server.admin("gc", "alice", "--dry-run").stdout
    assert "could be reclaimed" in text and text.startswith("alice: ")
    dry_report = gc(server, "alice", "--dry-run")["alice"]
    assert dry_report["dry_run"] is True and dry_report["unreferenced_bytes"] == before[1]
    assert state() == before  # a dry run changes nothing, not even condemns
    assert log_count(server, "admin gc (dry run) for user 'alice'") == 2
    assert log_count(server, "admin gc") == seen + 2

    # ...and with the server stopped, the admin tool does the work itself.
    assert server.stop() == 0
    local = gc(server, "alice")["alice"]
    assert local["reclaimed_bytes"] >= 8 * MiB
    assert log_count(server, "admin gc") == seen + 2  # nobody asked the (stopped) server
    after_local = usage(server)["alice"]
    assert after_local["stored_bytes"] == before[0] - local["reclaimed_bytes"]
    # Nothing else to do: gc of every user, as text.
    assert server.admin("gc").stdout.startswith("alice: 0 B unreferenced, 0 B reclaimed")
    server.start()
    assert client_snapshots(alice) == [s3]
    check_clean(alice)
    restores(alice, s3, src, tmp_path / "out")
    assert_no_tracebacks(server)


def test_usage_and_scrub_on_a_healthy_server(server: Server, tmp_path: Path) -> None:
    alice = server.add_user("alice", tmp_path, extra=("--quota", "5M"))
    server.add_user("bob", tmp_path, password="bob's password")  # nothing stored yet
    src = tmp_path / "src"
    write(src / "f.bin", os.urandom(300_000))
    backup(alice, src, 1)
    res = server.admin("usage")
    assert res.returncode == 0 and "alice" in res.stdout and "bob" in res.stdout
    assert "5.0 MiB" in res.stdout and "never" in res.stdout
    rows = usage(server)
    assert rows["alice"]["stored_bytes"] > 300_000 and rows["alice"]["quota"] == 5 * MiB
    assert rows["alice"]["snapshots"] == 1 and rows["alice"]["last_backup_result"] == "ok"
    assert rows["alice"]["reclaimable_bytes"] == 0
    assert rows["bob"]["stored_bytes"] == 0 and rows["bob"]["last_backup_ns"] is None
    scrub = server.admin("scrub")
    assert scrub.returncode == 0 and "alice:" in scrub.stdout and ": ok" in scrub.stdout
    report = server.admin("scrub", "--json").json()
    assert report["alice"]["ok"] is True and report["alice"]["problems"] == []
    assert report["alice"]["bytes_read"] == rows["alice"]["stored_bytes"]
    assert server.admin("scrub", "alice").returncode == 0


# ---- the race: GC while a backup runs ------------------------------------------------------


def test_gc_reads_the_open_sessions_after_condemning(tmp_path: Path) -> None:
    """A session that logs in and lists the live blobs while GC waits for the user's lock to
    condemn them must hold them back; it used to be missed (the sessions were read first)."""
    store = UserStore(tmp_path / "user")
    try:
        blobs = [(os.urandom(32), 1, os.urandom(1000)) for _ in range(5)]  # trees, as roots
        root = blobs[0][0]
        store.put(blobs)
        store.commit("a" * 32, 1, b"record", [b[0] for b in blobs], "", root=root, refs=5)
        store.store.delete_snapshot("a" * 32)
        reports: list[Any] = []
        with store.lock:  # an upload of another session holds the lock
            runner = threading.Thread(target=lambda: reports.append(store.gc()))
            runner.start()
            time.sleep(0.3)  # GC has started and waits for the lock to condemn
            token = object()
            store.sessions[token] = time.time_ns()  # a backup logs in...
            known = store.store.all_blob_ids()  # ...and learns what is stored
            assert len(known) == 5
        runner.join(30)
        assert not runner.is_alive()
        assert reports[0].deleted_blobs == 0 and reports[0].waiting_blobs == 5
        store.commit("b" * 32, 2, b"record", known, "", root=root, refs=5)  # still there
        assert store.store.snapshot_manifest("b" * 32) == known
        # Once that backup has ended, GC frees what is really unreferenced, in one run.
        store.sessions.pop(token)
        store.store.delete_snapshot("b" * 32)
        report = store.gc()
        assert report.deleted_blobs == 5 and report.newly_condemned == 5
        assert store.store.stored_bytes() == 0
    finally:
        store.close()


def test_gc_during_a_backup_keeps_what_it_will_reference(
    server: Server, alice: NetCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup lists the server's blobs, then S1 is forgotten and GC runs (through the
    admin socket); the backup then sends only what was missing and commits a snapshot that
    references the rest: the commit succeeds and the snapshot reads back whole."""
    monkeypatch.setenv("STRONGROOM_NO_PROCESSES", "1")
    src = tmp_path / "src"
    for i in range(8):
        write(src / "shared" / f"s{i}.bin", os.urandom(MiB))
    write(src / "old-only.bin", os.urandom(10 * MiB))
    s1 = backup(alice, src, 1)
    (src / "old-only.bin").unlink()
    write(src / "new.bin", os.urandom(2 * MiB))

    repo = remote(server)
    events: list[dict[str, Any]] = []
    listed = repo.known_blob_ids

    def list_then_collect() -> set[bytes]:
        ids = listed()
        with connect(server, "alice") as raw:
            assert raw.call(m.DeleteSnapshot(s1)) == m.Ok(1)
            bye(raw)
        events.append(gc(server, "alice")["alice"])
        return ids

    repo.known_blob_ids = list_then_collect  # type: ignore[method-assign]
    try:
        result = Archiver(repo, None).run([str(src)], None, time_ns=time.time_ns())
    finally:
        repo.close()
    (report,) = events
    assert report["deleted_blobs"] == 0 and report["reclaimed_bytes"] == 0, report
    assert report["waiting_blobs"] >= 9, report  # S1's blobs wait for the running backup
    assert result.bytes_uploaded < 3 * MiB  # it did rely on what it had listed
    s2 = result.snapshot.id
    assert client_snapshots(alice) == [s2]
    check_clean(alice)
    restores(alice, s2, src, tmp_path / "out")

    # With the backup over, GC frees what really is unreferenced, and only that.
    freed = gc(server, "alice")["alice"]
    assert freed["reclaimed_bytes"] >= 8 * MiB, freed
    assert usage(server)["alice"]["reclaimable_bytes"] < 3 * MiB  # in packs not worth repacking
    check_clean(alice)
    restores(alice, s2, src, tmp_path / "out2")
    assert "admin gc for user 'alice'" in server.log.read_text()
    assert_no_tracebacks(server)


def wait_pack_growth(
    proc: subprocess.Popen[str], store: Path, threshold: int, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while pack_bytes(store) < threshold:
        if proc.poll() is not None:
            raise AssertionError(f"the backup ended too soon: {finish(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {threshold} bytes stored after {timeout}s: {finish(proc)}")
        time.sleep(0.005)


@pytest.mark.timeout(240)
def test_real_client_paused_while_gc_runs(server: Server, alice: NetCli, tmp_path: Path) -> None:
    """The same with the real client, paused (SIGSTOP) once it is uploading: it has listed the
    server's blobs and will reference S1's unchanged files without sending them."""
    src = tmp_path / "src"
    for i in range(4):
        write(src / "shared" / f"s{i}.bin", os.urandom(4 * MiB))
    for i in range(200):
        write(src / "small" / f"f{i:03d}.txt", f"small file {i}\n".encode() * (i + 1))
    write(src / "old-only.bin", os.urandom(16 * MiB))
    s1 = backup(alice, src, 1)
    store = storage_dir(server, "alice")
    base = pack_bytes(store)
    (src / "old-only.bin").unlink()
    for i in range(4):
        write(src / "new" / f"n{i}.bin", os.urandom(24 * MiB))
    state = file_state(src)

    proc = spawn(alice, "backup", str(src), "--json", *when(2))
    try:
        wait_pack_growth(proc, store, base + 16 * MiB)
        proc.send_signal(signal.SIGSTOP)
        with connect(server, "alice") as raw:
            assert raw.call(m.DeleteSnapshot(s1)) == m.Ok(1)
            bye(raw)
        report = gc(server, "alice")["alice"]
        assert report["deleted_blobs"] == 0 and report["reclaimed_bytes"] == 0, report
        assert report["waiting_blobs"] > 0, report
    finally:
        proc.send_signal(signal.SIGCONT)
    res = finish(proc, timeout=120)
    assert res.returncode == 0, res
    out = res.json()
    assert out["bytes_uploaded"] < 4 * 24 * MiB + 2 * MiB, out  # S1's files were not re-sent
    assert client_snapshots(alice) == [out["snapshot"]]
    check_clean(alice)
    alice.restore(tmp_path / "out", out["snapshot"])
    assert file_state(tmp_path / "out" / "src") == state

    freed = gc(server, "alice")["alice"]
    assert freed["reclaimed_bytes"] >= 8 * MiB and freed["waiting_blobs"] == 0, freed
    check_clean(alice)
    assert "admin gc for user 'alice'" in server.log.read_text()
    assert_no_tracebacks(server)


@pytest.mark.timeout(240)
def test_blobs_condemned_before_the_backup_are_sent_again(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    """GC condemned S1's blobs (a session still open kept them from being deleted); a backup
    that starts afterwards is not told about them, sends them again, which revives them (no
    second copy is stored); a GC in the middle of that backup deletes the ones not revived
    yet, and the backup stores those anew. Either way it commits and reads back whole."""
    src = tmp_path / "src"
    for i in range(6):
        write(src / f"big{i}.bin", os.urandom(16 * MiB))
    state = file_state(src)
    s1 = backup(alice, src, 1)
    total = usage(server)["alice"]["stored_bytes"]
    blobs = int(query(server, "alice", "SELECT COUNT(*) FROM blobs")[0][0])

    with connect(server, "alice") as holder:  # an older session keeps condemned blobs
        alice.run("forget", s1)
        report = gc(server, "alice")["alice"]
        assert report["newly_condemned"] == blobs and report["deleted_blobs"] == 0, report
        assert report["waiting_blobs"] == blobs
        bye(holder)
    assert condemned(server, "alice") == blobs
    assert usage(server)["alice"]["stored_bytes"] == total

    # 1. Condemned, not deleted: the backup re-sends everything; the server revives it.
    out = alice.backup(src, extra=when(2))
    assert out["bytes_uploaded"] >= 0.95 * total, out
    assert condemned(server, "alice") == 0
    assert usage(server)["alice"]["stored_bytes"] == total  # revived, not stored twice
    check_clean(alice)

    # 2. Condemned again, and a GC deletes some while the next backup is reviving them.
    alice.run("forget", out["snapshot"])
    with connect(server, "alice") as holder:
        gc(server, "alice")
        bye(holder)
    assert condemned(server, "alice") == blobs
    store = storage_dir(server, "alice")
    proc = spawn(alice, "backup", str(src), "--json", *when(3))
    try:
        wait_for(
            "a revived blob",
            lambda: condemned(server, "alice"),
            lambda n: n < blobs or proc.poll() is not None,
            timeout=60,
            interval=0.002,
        )
        proc.send_signal(signal.SIGSTOP)
        assert proc.poll() is None, "the backup ended before it could be paused"
        report = gc(server, "alice")["alice"]
        assert report["deleted_blobs"] > 0, report  # the backup logged in after the condemning
    finally:
        proc.send_signal(signal.SIGCONT)
    res = finish(proc, timeout=120)
    assert res.returncode == 0, res
    snap = res.json()["snapshot"]
    assert condemned(server, "alice") == 0
    assert pack_bytes(store) <= total + 16 * MiB
    check_clean(alice)
    alice.restore(tmp_path / "out", snap)
    assert file_state(tmp_path / "out" / "src") == state
    assert gc(server, "alice")["alice"]["unreferenced_bytes"] == 0
    assert_no_tracebacks(server)


def test_a_blob_deleted_by_gc_can_be_stored_again(server: Server, alice: NetCli) -> None:
    """While the user's store stays open, a blob GC deleted is stored again when sent (the
    store once remembered it as "pending" for good, and skipped it: the commit failed)."""
    blob = (os.urandom(32), 1, os.urandom(1000))  # a tree: it is each snapshot's root
    with connect(server, "alice") as raw:  # one connection: the user's store stays open
        assert raw.call(m.PutBlobs([blob])) == m.Ok(1)
        assert raw.call(m.ManifestPart([blob[0]])) == m.Ok(1)
        snap = "1" * 32
        assert raw.call(m.Commit(snap, time.time_ns(), b"record", "", blob[0])) == m.Ok()
        assert raw.call(m.DeleteSnapshot(snap)) == m.Ok(1)
        report = raw.call(m.Prune(0))
        assert isinstance(report, m.Json) and json.loads(report.text)["deleted_blobs"] == 1
        # Not stored any more: a backup that needs it sends it again.
        assert raw.call(m.Have([blob[0]])) == m.Ids([blob[0]])
        assert raw.call(m.PutBlobs([blob])) == m.Ok(1)
        assert raw.call(m.ManifestPart([blob[0]])) == m.Ok(1)
        assert raw.call(m.Commit("2" * 32, time.time_ns(), b"record", "", blob[0])) == m.Ok()
