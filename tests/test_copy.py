"""`strongroom copy` (issue 12, part 4): snapshots to a second place, with real servers.

One server on 127.0.0.1 for the module, with accounts whose passwords (and so keys) all
differ, and local repositories with passwords of their own: every copy here re-encrypts and
rewrites trees. Copies keep IDs, times and tags; `check --read-data` passes on the
destination and a restore from it is bit-exact; a second run copies nothing; a copy killed
with SIGKILL half-way completes on the next run, storing only what the destination lacks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Cli
from copyfixtures import (
    MiB,
    blob_count,
    has_indexed_blobs,
    make_tree,
    one_line_error,
    restored_equal,
    same_records,
    snapshots,
    storage,
)
from netfixtures import NetCli, Server, finish, spawn


@dataclass
class Net:
    server: Server
    alice: NetCli
    tmp: Path
    source: Path


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("copy")
    source = tmp / "data"
    make_tree(source)
    server = Server(tmp / "server-data").start()
    try:
        alice = server.add_user("alice", tmp, password="alice's password")
        alice.backup(source, extra=("--tag", "first"))
        yield Net(server, alice, tmp, source)
    finally:
        server.kill()


def local_repo(path: Path, password: str) -> Cli:
    cli = Cli(path.parent)
    cli.repo = path
    cli.env.update({"STRONGROOM_REPO": str(path), "STRONGROOM_PASSWORD": password})
    cli.env["STRONGROOM_CACHE_DIR"] = str(path.parent / f"{path.name}-cache")
    cli.init()
    return cli


def copy_env(password: str, **dest: str) -> dict[str, str]:
    return {"STRONGROOM_TO_PASSWORD": password, **dest}


def to_server(net: Net, user: str) -> tuple[str, ...]:
    return ("--to-server", net.server.address, "--to-user", user)


def fp(net: Net) -> dict[str, str]:
    return {"STRONGROOM_TO_FINGERPRINT": net.server.fingerprint}


# ---- server -> local repository, incremental, nothing twice --------------------------------


def test_server_to_local_repo(net: Net) -> None:
    alice = net.alice
    (net.source / "dir1" / "added.txt").write_text("second snapshot\n")
    alice.backup(net.source, extra=("--tag", "second"))
    local = local_repo(net.tmp / "offsite", "a local password")

    first = alice.run(
        "copy", "--to-repo", str(local.repo), "--json", env=copy_env("a local password")
    )
    report = first.json()
    theirs = snapshots(alice)
    assert report["copied"] == [s["id"] for s in theirs] and report["skipped"] == []
    assert report["trees_rewritten"] > 0  # other keys: every tree is written again
    same_records(snapshots(local), theirs)
    assert {tuple(s["tags"]) for s in snapshots(local)} == {("first",), ("second",)}
    again = alice.run(
        "copy", "--to-repo", str(local.repo), "--json", env=copy_env("a local password")
    )
    nothing = again.json()
    assert nothing["copied"] == [] and len(nothing["skipped"]) == 2
    assert nothing["blobs_read"] == nothing["blobs_stored"] == 0

    # One more snapshot: only its few new blobs go over (the ID map knows the rest).
    (net.source / "dir2" / "inner" / "s3.txt").write_text("changed\n")
    alice.backup(net.source)
    third = alice.run(
        "copy", "latest", "--to-repo", str(local.repo), "--json", env=copy_env("a local password")
    ).json()
    assert third["copied"] == [snapshots(alice)[-1]["id"]]
    assert 0 < third["bytes_stored"] < MiB and third["bytes_read"] < MiB
    restored_equal(local, net.tmp / "restore-local", net.source)
    assert "no errors: 3 snapshots" in local.run("check", "--read-data").stdout


# ---- local repository -> another server account ------------------------------------------


def test_local_repo_to_server_account(net: Net) -> None:
    repo = local_repo(net.tmp / "laptop", "laptop password")
    repo.backup(net.source, extra=("--tag", "laptop"))
    bob = net.server.add_user("bob", net.tmp, password="bob's password")
    out = repo.run("copy", *to_server(net, "bob"), env={**copy_env("bob's password"), **fp(net)})
    assert "1 snapshot(s) copied, 0 already there" in out.stdout
    same_records(snapshots(bob), snapshots(repo))
    assert "no errors: 1 snapshots" in bob.run("check", "--read-data").stdout
    restored_equal(bob, net.tmp / "restore-bob", net.source)


# ---- account -> account, killed half-way and resumed ---------------------------------------


def test_account_to_account_killed_and_resumed(net: Net) -> None:
    carol = net.server.add_user("carol", net.tmp, password="carol's password")
    store = storage(net.server, "carol")
    args = ("copy", *to_server(net, "carol"), "--json")
    env = {**copy_env("carol's password"), **fp(net)}
    proc = spawn_with(net.alice, env, *args)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not has_indexed_blobs(store) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the copy ended before a pack was indexed; make the tree larger"
    proc.send_signal(signal.SIGKILL)
    assert finish(proc).returncode == -signal.SIGKILL
    assert snapshots(carol) == []  # nothing half-visible
    before = blob_count(store / "index.sqlite")
    assert before > 0

    resumed = net.alice.run(*args, env=env).json()
    after = blob_count(store / "index.sqlite")
    assert len(resumed["copied"]) == len(snapshots(net.alice))
    # Only what the destination lacked was stored again.
    assert resumed["blobs_stored"] == after - before
    assert resumed["blobs_stored"] < after
    same_records(snapshots(carol), snapshots(net.alice))
    assert "no errors" in carol.run("check", "--read-data").stdout
    restored_equal(carol, net.tmp / "restore-carol", net.source)
    again = net.alice.run(*args, env=env).json()
    assert again["copied"] == [] and again["blobs_stored"] == 0


def spawn_with(cli: NetCli, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    saved = dict(cli.env)
    cli.env.update(env)
    try:
        return spawn(cli, *args)
    finally:
        cli.env.clear()
        cli.env.update(saved)


# ---- bad input: one line, non-zero exit ------------------------------------------------------


def test_bad_input(net: Net) -> None:
    alice = net.alice
    local = local_repo(net.tmp / "bad-input", "right")
    dest = ("--to-repo", str(local.repo))
    one_line_error(
        alice.run("copy", "deadbeef", *dest, env=copy_env("right"), check=False), "deadbeef"
    )
    one_line_error(alice.run("copy", *dest, env=copy_env("wrong"), check=False), "destination")
    one_line_error(
        alice.run(
            "copy", *dest, env={**copy_env("right"), "STRONGROOM_PASSWORD": "no"}, check=False
        ),
        "source",
    )
    one_line_error(
        alice.run(
            "copy", "--to-server", "127.0.0.1:1", "--to-user", "x", env=copy_env("p"), check=False
        ),
        "destination",
    )
    one_line_error(alice.run("copy", check=False), "--to-repo")
    one_line_error(alice.run("copy", "--to-server", net.server.address, check=False), "--to-user")
    one_line_error(
        local.run("copy", "--to-repo", str(local.repo), env=copy_env("right"), check=False),
        "same repository",
    )
    one_line_error(
        alice.run("copy", *dest, env={"STRONGROOM_TO_PASSWORD": ""}, check=False, input=""),
        "STRONGROOM_TO_PASSWORD",
    )
    nowhere = net.tmp / "no-such-repo"
    one_line_error(
        alice.run("copy", "--to-repo", str(nowhere), env=copy_env("x"), check=False), "init"
    )


# ---- a blob the destination lost below a tree it still has -------------------------------


def test_blob_lost_below_a_present_tree_is_copied_again(cli: Cli, tmp_path: Path) -> None:
    """The walk skips subtrees the destination has; a blob missing below one (as GC leaves
    an interrupted copy's blobs) is still found and sent, in-process on real repositories."""
    from strongroom.checker import check
    from strongroom.crypto import KdfParams
    from strongroom.repository import LocalRepository, load_snapshots
    from strongroom.transfer.copier import Copier
    from strongroom.transfer.idmap import IdMap

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.bin").write_bytes(os.urandom(300_000))
    (data / "b.txt").write_text("small\n")
    cli.backup(data)
    src = LocalRepository.open(cli.repo, cli.env["STRONGROOM_PASSWORD"].encode())
    dst = LocalRepository.init(tmp_path / "dst", b"other", KdfParams(memory_kib=8192, iterations=1))
    try:
        (snap,) = load_snapshots(src)

        def copy() -> Copier:
            idmap = IdMap(src.keys.id_key, dst.keys.id_key, root=tmp_path / "cache")
            copier = Copier(src, dst, idmap)
            try:
                copier.copy(snap, src.repo_id)
            finally:
                copier.close()
                idmap.close()
            return copier

        copy()
        dst.store.delete_snapshot(snap.id)
        (lost,) = [
            bytes(r[0]) for r in dst.store.query("SELECT blob_id FROM blobs WHERE length > 200000")
        ]
        with dst.store.transaction() as db:
            db.execute("DELETE FROM blobs WHERE blob_id = ?", (lost,))
        again = copy()
        # Read: the three trees (root, data, data/sub), to find it, and the lost blob.
        assert (again.stats.blobs_stored, again.stats.blobs_read) == (1, 4)
        assert check(dst, read_data=True).ok
        assert [s.id for s in load_snapshots(dst)] == [snap.id]
    finally:
        src.close()
        dst.close()
