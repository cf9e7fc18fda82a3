"""An attacker holding an append-only account's password (ransomware on the client) tries to
wipe its backups through the server's own retention, with the project's client library
speaking the real protocol to a real server (issue 8, finding 1).

The attack that worked before: commit forged snapshots (random IDs; times far in the future,
now and in the past; every series seen in LIST_SNAPSHOTS; empty and minimal manifests) and
let the admin's policy, applied after each commit, remove the genuine ones. Now the policy
judges append-only accounts by the time the server received each snapshot, never removes one
received within the protection window, commits need a non-empty manifest holding a stored root
tree, future times are refused, and commits per hour and snapshots per account are bounded.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import PASSWORD
from netfixtures import NetCli, Server
from strongroom import tree
from strongroom.blobs import BlobType
from strongroom.client.login import Target, login, open_connection
from strongroom.client.remote import RemoteRepository
from strongroom.client.transport import RemoteError
from strongroom.protocol import messages as m
from strongroom.retention import Policy
from strongroom.server.stores import decide
from strongroom.server.userdb import User
from strongroom.snapshot import Snapshot, new_snapshot_id, seal_snapshot
from strongroom.store import SnapshotRow
from test_network_crash import file_state
from test_server_hostile import (
    assert_no_tracebacks,
    connect,
    is_error,
    list_snapshots,
    storage_index,
)

pytestmark = pytest.mark.timeout(240)

HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS


def attacker_session(server: Server, user: str) -> RemoteRepository:
    """What ransomware with the password has: the real client library, logged in."""
    transport = open_connection(Target(server.address, user, server.fingerprint), None)
    return login(transport, user, PASSWORD.encode())


def minimal_root(repo: RemoteRepository) -> bytes:
    """A valid, empty root tree the attacker stores, so forged snapshots pass every check."""
    raw = tree.encode_tree([])
    codec = repo.codecs.get()
    tree_id = codec.hash(raw)
    repo.add_blob(tree_id, BlobType.TREE, codec.encode(tree_id, raw))
    repo.flush()
    return tree_id


def forge(repo: RemoteRepository, root: bytes, when_ns: int, series: str) -> str:
    snap = Snapshot(
        id=new_snapshot_id(),
        time_ns=when_ns,
        host="forged",
        username="mallory",
        paths=["/"],
        tree=root.hex(),
    )
    repo.commit_snapshot(
        snap.id, when_ns, seal_snapshot(repo.keys.aead(), snap), [root], series, root=root
    )
    return snap.id


def genuine_history(alice: NetCli, tmp_path: Path, count: int) -> dict[str, dict[str, object]]:
    """`count` real backups of a changing folder; snapshot ID -> the folder's state then."""
    src = tmp_path / "src"
    states: dict[str, dict[str, object]] = {}
    for n in range(count):
        (src / "sub").mkdir(parents=True, exist_ok=True)
        (src / f"file{n}.bin").write_bytes(os.urandom(50_000 + n))
        (src / "sub" / "changing.txt").write_text(f"version {n}\n" * 100)
        snap = alice.backup(src)["snapshot"]
        states[snap] = file_state(src)
    return states


def assert_every_genuine_restores(
    alice: NetCli, states: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    for snap, state in states.items():
        out = tmp_path / f"restore-{snap[:8]}"
        alice.restore(out, snap)
        assert file_state(out / "src") == state, f"snapshot {snap[:8]} did not restore bit-exact"
        shutil.rmtree(out)


def wait_policy_ran(server: Server, commits: int, timeout: float = 30) -> None:
    """The server applies its policy after answering each commit: wait for the last one."""
    deadline = time.monotonic() + timeout
    while server.log.read_text().count("committed snapshot") < commits:
        assert time.monotonic() < deadline, "the server did not log the commits"
        time.sleep(0.05)
    time.sleep(0.3)  # the policy runs right after the commit's log line


@pytest.mark.parametrize(
    "policy",
    [("--keep-last", "3"), ("--keep-daily", "7", "--keep-weekly", "4")],
    ids=["count", "calendar"],
)
def test_forged_commits_cannot_wipe_an_append_only_account(
    tmp_path: Path, policy: tuple[str, ...]
) -> None:
    server = Server(
        tmp_path / "server-data", env={"STRONGROOM_MAX_COMMITS_PER_HOUR": "1000"}
    ).start()
    try:
        alice = server.add_user("alice", tmp_path)
        server.admin("user", "set", "alice", "--append-only", *policy)
        states = genuine_history(alice, tmp_path, 4)
        genuine = set(states)
        repo = attacker_session(server, "alice")
        try:
            series = {row.series for row in repo.snapshot_rows()}
            root = minimal_root(repo)
            now = time.time_ns()
            refused = 0
            forged = []
            for i in range(30):
                # Future (refused), present, and past times; every series; and a new one.
                offsets = [40 * DAY_NS, 2 * HOUR_NS, 0, -DAY_NS, -400 * DAY_NS]
                when = now + offsets[i % len(offsets)] + i
                for s in [*sorted(series), "f" * 32]:
                    if len(forged) + refused >= 60:
                        break
                    try:
                        forged.append(forge(repo, root, when, s))
                    except RemoteError as exc:
                        assert exc.code == m.ErrorCode.BAD_REQUEST
                        assert "ahead of the server's clock" in str(exc)
                        refused += 1
            assert refused >= 20 and len(forged) >= 30
            # An empty manifest, or one without a stored root tree, is refused outright.
            for manifest, root_id in (([], root), ([root], os.urandom(32))):
                snap = Snapshot(new_snapshot_id(), now, "f", "m", ["/"], root.hex())
                with pytest.raises(RemoteError) as err:
                    repo.commit_snapshot(
                        snap.id,
                        now,
                        seal_snapshot(repo.keys.aead(), snap),
                        manifest,
                        "f" * 32,
                        root=root_id,
                    )
                assert err.value.code == m.ErrorCode.BAD_REQUEST
        finally:
            repo.close()
        wait_policy_ran(server, 4 + len(forged))
        left = set(list_snapshots_of(server, "alice"))
        assert genuine <= left, "the server's policy removed a genuine snapshot"
        log = server.log.read_text()
        assert "ahead of the server's clock" in log and "backdated" in log
        assert_every_genuine_restores(alice, states, tmp_path)
        assert_no_tracebacks(server)
    finally:
        server.kill()


def list_snapshots_of(server: Server, user: str) -> list[str]:
    with connect(server, user) as raw:
        return list_snapshots(raw)


def test_commit_rate_and_snapshot_count_are_bounded(tmp_path: Path) -> None:
    server = Server(
        tmp_path / "server-data",
        env={"STRONGROOM_MAX_COMMITS_PER_HOUR": "6", "STRONGROOM_MAX_SNAPSHOTS": "4"},
    ).start()
    try:
        alice = server.add_user("alice", tmp_path)
        bob = server.add_user("bob", tmp_path, password="bob's password")
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_text("x")
        repo = attacker_session(server, "alice")
        try:
            root = minimal_root(repo)
            for _ in range(4):
                forge(repo, root, time.time_ns(), "a" * 32)
            # The account holds the server's maximum: the next commit is refused.
            with pytest.raises(RemoteError) as err:
                forge(repo, root, time.time_ns(), "a" * 32)
            assert err.value.code == m.ErrorCode.RATE_LIMITED
            assert "limit" in str(err.value)
            # Refused attempts count against the hour too: the 7th is refused for the rate.
            with pytest.raises(RemoteError):
                forge(repo, root, time.time_ns(), "a" * 32)
            with pytest.raises(RemoteError) as err:
                forge(repo, root, time.time_ns(), "a" * 32)
            assert err.value.code == m.ErrorCode.RATE_LIMITED
            assert "in the last hour" in str(err.value)
        finally:
            repo.close()
        # The real client says so in one line; another account is not affected.
        res = alice.run("backup", str(src), check=False)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert "in the last hour" in res.stderr
        assert bob.backup(src)["snapshot"]
        log = server.log.read_text()
        assert log.count("commit refused") >= 4
        assert_no_tracebacks(server)
    finally:
        server.kill()


def test_raw_commit_checks(tmp_path: Path) -> None:
    """The same checks against hand-made frames: a data blob as root, a root outside the
    manifest, an empty manifest, a time far ahead; then a valid one passes."""
    server = Server(tmp_path / "server-data").start()
    try:
        server.add_user("alice", tmp_path)
        data = (os.urandom(32), 0, os.urandom(100))
        root = (os.urandom(32), 1, os.urandom(100))
        with connect(server, "alice") as raw:
            assert raw.call(m.PutBlobs([data, root])) == m.Ok(2)
            now = time.time_ns()
            cases = [
                ([data[0]], data[0], now, "is not a stored tree"),
                ([data[0]], root[0], now, "is not a stored tree"),
                ([], root[0], now, "manifest is empty"),
                ([root[0]], root[0], now + 2 * HOUR_NS, "ahead of the server's clock"),
            ]
            for manifest, root_id, when, needle in cases:
                if manifest:
                    raw.call(m.ManifestPart(manifest))
                answer = raw.call(m.Commit(new_snapshot_id(), when, b"r" * 64, "", root_id))
                assert is_error(answer, m.ErrorCode.BAD_REQUEST), answer
                assert isinstance(answer, m.Error) and needle in answer.message
            assert list_snapshots(raw) == []
            raw.call(m.ManifestPart([root[0], data[0]]))
            assert raw.call(m.Commit(new_snapshot_id(), now, b"r" * 64, "", root[0])) == m.Ok()
            # Blobs shorter than any real stored blob are refused (they would be free).
            raw.send(m.PutBlobs([(os.urandom(32), 0, b"")]))
            assert [msg.code for _r, msg in raw.until_closed()] == [m.ErrorCode.BAD_REQUEST]
        assert_no_tracebacks(server)
    finally:
        server.kill()


# ---- the rules themselves, on rows -------------------------------------------------------


def _user(append_only: bool, window_s: int) -> User:
    return User(
        id=1,
        name="alice",
        storage_id="0" * 32,
        directory="",
        salt=b"s" * 16,
        kdf=None,  # type: ignore[arg-type]
        auth_hash=b"",
        keyfile=None,
        must_change_password=False,
        quota=None,
        append_only=append_only,
        created_ns=0,
        last_backup_ns=None,
        last_backup_result=None,
        protect_window_s=window_s,
    )


def _row(snap_id: str, client_ns: int, received_ns: int, series: str = "s") -> SnapshotRow:
    return SnapshotRow(snap_id, client_ns, b"", series, False, received_ns)


def test_retention_times_and_window_on_rows() -> None:
    now = time.time_ns()
    keep_last_2 = Policy(last=2)
    # Genuine snapshots received 30 and 20 days ago; forged ones received now, but dated by
    # the client 10 years ahead or in the past.
    rows = [
        _row("genuine-old", now - 30 * DAY_NS, now - 30 * DAY_NS),
        _row("genuine-new", now - 20 * DAY_NS, now - 20 * DAY_NS),
        _row("forged-past", now - 3650 * DAY_NS, now),
        _row("forged-future", now + 3650 * DAY_NS, now),
    ]

    def kept(user: User) -> set[str]:
        return {d.candidate.id for d in decide(rows, user, keep_last_2) if d.keep}

    # Append-only: judged by the time the server received them; forged ones are the newest.
    assert kept(_user(True, 0)) == {"forged-past", "forged-future"}
    # The protection window keeps whatever was received within it: a 25-day window saves
    # genuine-new; what a window cannot save is older than the window (choose it longer than
    # the time it takes to notice a compromise).
    assert kept(_user(True, 25 * 86400)) == {"genuine-new", "forged-past", "forged-future"}
    assert kept(_user(True, 40 * 86400)) == {r.snap_id for r in rows}
    # Other accounts: the client's time, but never after the time it was received.
    assert kept(_user(False, 0)) == {"genuine-new", "forged-future"}


def test_backdated_forgeries_cannot_take_the_calendar_of_genuine_snapshots(tmp_path: Path) -> None:
    """No protection window here: the server's own clock alone keeps the calendar. Genuine
    snapshots received on three earlier days (their received times set in the stopped server's
    index, as if the days had passed); the attacker commits forgeries dated late on each of
    those days. Judged by the client's time they would take every day's bucket; judged by when
    the server received them they all fall on today, and the genuine days stay."""
    server = Server(tmp_path / "server-data").start()
    try:
        alice = server.add_user("alice", tmp_path)
        states = genuine_history(alice, tmp_path, 3)
        genuine = list(states)
        index = storage_index(server, "alice")
        server.stop()
        today = time.time_ns() // DAY_NS * DAY_NS
        db = sqlite3.connect(index)
        for days_ago, snap in zip((3, 2, 1), genuine, strict=True):
            noon = today - days_ago * DAY_NS + 12 * HOUR_NS
            db.execute(
                "UPDATE snapshots SET time_ns = ?, received_ns = ? WHERE snap_id = ?",
                (noon, noon, snap),
            )
        db.commit()
        db.close()
        server.start()
        # The policy from now on (set earlier, it would have thinned today's genuine backups).
        server.admin(
            "user", "set", "alice", "--append-only", "--protection-window", "0",
            "--keep-daily", "4",
        )  # fmt: skip
        repo = attacker_session(server, "alice")
        try:
            series = repo.snapshot_rows()[0].series
            root = minimal_root(repo)
            for days_ago in (3, 2, 1):
                late = today - days_ago * DAY_NS + 23 * HOUR_NS
                forge(repo, root, late, series)
        finally:
            repo.close()
        wait_policy_ran(server, 6)
        left = set(list_snapshots_of(server, "alice"))
        assert set(genuine) <= left, "a backdated forgery took a genuine snapshot's day"
        assert len(left) == 4  # the three genuine days and one of today's forgeries
        assert_every_genuine_restores(alice, states, tmp_path)
    finally:
        server.kill()
