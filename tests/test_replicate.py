"""`strongroom-admin replicate NAME --to DIR` (issue 12, part 4b): a keyless replica.

A real server holds the account; the replica is a second data folder on which a second real
server is started, and the user logs in there with their own password, lists, checks every
blob and restores bit-exact. Later runs copy only what is new, follow protection, password
and settings changes and removals; a run killed with SIGKILL half-way completes on the next,
copying only what the replica lacks. The admin never types or holds a user key.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import tree_state
from copyfixtures import (
    MiB,
    blob_count,
    has_indexed_blobs,
    make_tree,
    one_line_error,
    same_records,
    snapshots,
    storage,
)
from netfixtures import NetCli, Server, exe, finish

PASSWORD = "dave's own password"


@dataclass
class Primary:
    server: Server
    dave: NetCli
    tmp: Path
    source: Path
    state: dict[bytes, tuple[Any, ...]]  # the source as the first snapshot has it


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Primary]:
    tmp = tmp_path_factory.mktemp("replicate")
    source = tmp / "data"
    make_tree(source)
    server = Server(tmp / "primary").start()
    try:
        dave = server.add_user("dave", tmp, password=PASSWORD, directory="/home/dave")
        server.admin("user", "set", "dave", "--quota", "2G", "--keep-daily", "7")
        dave.backup(source, extra=("--tag", "first"))
        yield Primary(server, dave, tmp, source, tree_state(source))
    finally:
        server.kill()


def replicate(primary: Primary, name: str, target: Path, *extra: str) -> dict[str, Any]:
    res = primary.server.admin("replicate", name, "--to", str(target), "--json", *extra)
    report: dict[str, Any] = json.loads(res.stdout)
    return report


def replica_client(server: Server, primary: Primary, password: str = PASSWORD) -> NetCli:
    return NetCli(primary.tmp / f"replica-client-{server.port}", server, "dave", password)


def test_replica_restores_with_the_users_password(primary: Primary) -> None:
    target = primary.tmp / "replica"
    first = replicate(primary, "dave", target)
    assert first["account"] == "created" and first["problems"] == []
    assert first["added"] == [s["id"] for s in snapshots(primary.dave)]
    assert first["bytes_copied"] > 20 * MiB

    # Only ciphertext: no file content or name is in the replica's folder.
    marker = (primary.source / "dir3" / "inner" / "s7.txt").read_bytes()[:40]
    for dirpath, _dirs, names in os.walk(target):
        for name in names:
            data = Path(dirpath, name).read_bytes()
            assert marker not in data and b"inner" not in data, name

    # Changes on the primary: a new snapshot, a protection, a new password.
    (primary.source / "dir4" / "new.txt").write_text("after the first replica\n")
    primary.dave.backup(primary.source)
    first_id = snapshots(primary.dave)[0]["id"]
    primary.dave.run("protect", first_id)
    newpw = primary.tmp / "dave-newpw"
    newpw.write_text("dave's second password\n")
    primary.dave.run("passwd", "--new-password-file", str(newpw))
    primary.dave.env["STRONGROOM_PASSWORD"] = "dave's second password"

    second = replicate(primary, "dave", target)
    assert second["account"] == "updated" and len(second["added"]) == 1
    assert second["protection_changed"] == 1
    assert 0 < second["bytes_copied"] < MiB  # only the new snapshot's few blobs
    again = replicate(primary, "dave", target)
    assert (again["account"], again["added"], again["blobs_copied"]) == ("unchanged", [], 0)

    # A removal is mirrored, unless --keep-deleted.
    second_id = snapshots(primary.dave)[-1]["id"]
    primary.dave.run("forget", second_id)
    kept = replicate(primary, "dave", target, "--keep-deleted")
    assert kept["removed"] == []
    mirrored = replicate(primary, "dave", target)
    assert mirrored["removed"] == [second_id]

    replica = Server(target).start()
    try:
        users = replica.admin("user", "list", "--json").json()
        assert [(u["name"], u["directory"], u["quota"]) for u in users] == [
            ("dave", "/home/dave", 2 * 1024**3)
        ]
        old = replica_client(replica, primary)
        one_line_error(old.run("snapshots", check=False), "password")
        dave = replica_client(replica, primary, "dave's second password")
        rows = snapshots(dave)
        same_records(rows, snapshots(primary.dave))
        assert [r["protected"] for r in rows] == [True]
        dave.restore(primary.tmp / "restore-replica", first_id)
        assert tree_state(primary.tmp / "restore-replica" / "data") == primary.state

        # The replica has the same keys: `strongroom copy` into it moves blobs as they are
        # stored, and trees keep their IDs.
        (primary.source / "dir5" / "copied.txt").write_text("copied, not replicated\n")
        primary.dave.backup(primary.source)
        to = ("--to-server", replica.address, "--to-user", "dave")
        env = {
            "STRONGROOM_TO_FINGERPRINT": replica.fingerprint,
            "STRONGROOM_TO_PASSWORD": "dave's second password",
        }
        copied = primary.dave.run("copy", *to, "--json", env=env).json()
        assert len(copied["copied"]) == 1 and copied["trees_rewritten"] == 0
        assert 0 < copied["bytes_stored"] < MiB
        same_records(snapshots(dave), snapshots(primary.dave))
        assert "no errors: 2 snapshots" in dave.run("check", "--read-data").stdout
    finally:
        replica.stop()


def test_replicate_killed_and_resumed(primary: Primary) -> None:
    erin = primary.server.add_user("erin", primary.tmp, password="erin's password")
    erin.backup(primary.source)
    target = primary.tmp / "replica-killed"
    cmd = [*exe("strongroom-admin"), "--data-dir", str(primary.server.data_dir)]
    proc = subprocess.Popen(
        [*cmd, "replicate", "erin", "--to", str(target)],
        env=primary.server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if (target / "storage").is_dir() and any(
            has_indexed_blobs(p) for p in (target / "storage").iterdir()
        ):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "replicate ended before a pack was indexed"
    proc.send_signal(signal.SIGKILL)
    assert finish(proc).returncode == -signal.SIGKILL

    replica = Server(target)
    (store,) = [p for p in (target / "storage").iterdir() if p.is_dir()]
    before = blob_count(store / "index.sqlite")
    report = replicate(primary, "erin", target)
    after = blob_count(store / "index.sqlite")
    assert before > 0 and report["blobs_copied"] == after - before < after
    assert after == blob_count(storage(primary.server, "erin") / "index.sqlite")
    assert replicate(primary, "erin", target)["blobs_copied"] == 0
    scrub = replica.admin("scrub", "erin")
    assert "erin:" in scrub.stdout and ": ok" in scrub.stdout


def test_bad_input(primary: Primary) -> None:
    server = primary.server
    one_line_error(
        server.admin("replicate", "nobody", "--to", str(primary.tmp / "x"), check=False),
        "no user nobody",
    )
    one_line_error(
        server.admin("replicate", "dave", "--to", str(server.data_dir), check=False),
        "another data folder",
    )
    a_file = primary.tmp / "a-file"
    a_file.write_text("")
    one_line_error(
        server.admin("replicate", "dave", "--to", str(a_file), check=False), "not a folder"
    )
    one_line_error(
        server.admin("replicate", "dave", "--to", "backup.example.org:44000", check=False),
        "rsync",
    )
    (primary.tmp / "a-folder").mkdir()
    (primary.tmp / "a-folder" / "notes.txt").write_text("not a data folder")
    one_line_error(
        server.admin("replicate", "dave", "--to", str(primary.tmp / "a-folder"), check=False),
        "not a strongroom data folder",
    )
    assert sorted(os.listdir(primary.tmp / "a-folder")) == ["notes.txt"]
    # Another dave is never overwritten: one of that server's own (his store has no mark;
    # his login is left as it was), one replicated from another server (another mark).
    own = primary.tmp / "own-folder"
    admin = [*exe("strongroom-admin"), "--data-dir", str(own)]
    add = [*admin, "user", "add", "dave", "--password-stdin"]
    subprocess.run(add, env=server.env, input="x\n", text=True, check=True, capture_output=True)
    one_line_error(
        server.admin("replicate", "dave", "--to", str(own), check=False), "not a replica"
    )
    listed = subprocess.run(
        [*admin, "user", "list", "--json"], env=server.env, text=True, capture_output=True
    )
    assert [u["must_change_password"] for u in json.loads(listed.stdout)] == [True]
    other = primary.tmp / "other-folder"
    replicate(primary, "dave", other)
    (store,) = [p for p in (other / "storage").iterdir() if p.is_dir()]
    for value, error in ((b"0" * 32, "replica of another account"), (None, "not a replica")):
        with sqlite3.connect(store / "index.sqlite") as db:
            if value is None:
                db.execute("DELETE FROM meta WHERE name = 'replica_of'")
            else:
                db.execute("UPDATE meta SET value = ? WHERE name = 'replica_of'", (value,))
        db.close()
        one_line_error(server.admin("replicate", "dave", "--to", str(other), check=False), error)
