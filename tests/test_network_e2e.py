"""End to end over the network: a real strongroom-server, the real admin tool, real clients.

Everything here runs the three programs as separate processes on 127.0.0.1 with real TLS
(see netfixtures.py): the admin's side of an account's life (add, reset, delete), the user's
side (first password change, login and pinning, backup of the recorded folder, restore, ls,
diff, snapshots, forget, check), several users and clients at once, what a copy of the server's
data folder reveals (nothing), the errors a person sees, and a server restart.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from clusterfixtures import ClusterServer
from conftest import PASSWORD, Cli, Result, tree_state
from netfixtures import ADMIN_PASSWORD, KDF_ENV, NetCli, Server, finish, spawn

MiB = 1024 * 1024
MTIME = 1_700_000_000_000_000_000  # a fixed past time, so no file is "racy" (just modified)


# ---- helpers ---------------------------------------------------------------------------------


def one_line_error(res: Result, *needles: str, code: int | None = 1) -> str:
    """The failure a person sees: exactly one line on stderr, a non-zero exit, no traceback."""
    context = f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert res.returncode != 0, context
    if code is not None:
        assert res.returncode == code, context
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, context
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, context
    line = lines[0]
    assert line.startswith("strongroom: error: "), context
    assert "internal error" not in line, context
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


class ConfigCli(Cli):
    """The client as a person uses it after `strongroom login`: only the saved config (server,
    user, pinned fingerprint) and a password; no server settings in the environment."""

    def __init__(self, tmp: Path, password: str = PASSWORD) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(tmp)
        for name in (
            "STRONGROOM_REPO",
            "STRONGROOM_SERVER",
            "STRONGROOM_USER",
            "STRONGROOM_FINGERPRINT",
            "STRONGROOM_CA_FILE",
        ):
            self.env.pop(name, None)
        self.env.update(KDF_ENV)
        self.env["STRONGROOM_PASSWORD"] = password
        self.config_dir = tmp / "config"
        self.env["STRONGROOM_CONFIG_DIR"] = str(self.config_dir)

    @property
    def config_file(self) -> Path:
        return self.config_dir / "client.json"


def write(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    os.utime(path, ns=(MTIME, MTIME))
    return path


def make_documents(root: Path) -> int:
    """A small tree with the things restore must reproduce; returns the number of files."""
    write(root / "notes.txt", "meeting notes\n" * 200)
    write(root / "report.md", "# Report\n\nAll fine.\n")
    write(root / "photos" / "cat.jpg", os.urandom(300_000))
    write(root / "photos" / "2024" / "dog.jpg", os.urandom(3 * MiB))
    write(root / "code" / "main.py", "print('hi')\n", 0o755)
    write(root / "code" / "lib" / "util.py", "def f():\n    return 1\n")
    write(root / "empty.txt", b"")
    write(root / "private.key", "not really a key\n", 0o600)
    (root / "link").symlink_to("notes.txt")
    for d in (root / "code" / "lib", root / "code", root / "photos" / "2024", root / "photos"):
        os.utime(d, ns=(MTIME, MTIME))
    return 9


def storage_ids(server: Server) -> dict[str, str]:
    users = json.loads(server.admin("user", "list", "--json").stdout)
    return {u["name"]: u["storage_id"] for u in users}


def snapshot_list(cli: Cli) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = cli.run("snapshots", "--json").json()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def assert_restores(cli: Cli, source: Path, target: Path, snapshot: str = "latest") -> None:
    cli.restore(target, snapshot)
    assert tree_state(target / source.name) == tree_state(source)


# ---- the whole flow --------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_whole_flow_admin_to_user_to_delete(server: Server, tmp_path: Path) -> None:
    docs = tmp_path / "home" / "Documents"
    nfiles = make_documents(docs)

    # The admin creates the account with the folder to back up and a first password.
    out = server.admin(
        "user", "add", "alice", "--directory", str(docs), "--password-stdin",
        input=ADMIN_PASSWORD + "\n",
    ).stdout  # fmt: skip
    assert "alice" in out and "must choose a new password" in out

    # Before choosing their own password the user cannot back up (nor read).
    first = NetCli(tmp_path / "first", server, "alice", ADMIN_PASSWORD)
    one_line_error(first.run("backup", check=False, input=""), "strongroom passwd")
    one_line_error(first.run("snapshots", check=False, input=""), "strongroom passwd")
    newpw = tmp_path / "newpw"
    newpw.write_text(PASSWORD + "\n")
    res = first.run("passwd", "--new-password-file", str(newpw), input="")
    assert "password changed" in res.stdout
    one_line_error(first.run("backup", check=False, input=""), "wrong user name or password")

    # `login` remembers server, user and the pinned certificate; never the password.
    me = ConfigCli(tmp_path / "me")
    res = me.run(
        "login", "--server", server.address, "--user", "alice",
        "--fingerprint", server.fingerprint, input="",
    )  # fmt: skip
    assert "logged in as alice" in res.stdout and str(docs) in res.stdout
    saved = json.loads(me.config_file.read_text())
    assert saved["server"] == server.address and saved["user"] == "alice"
    assert saved["fingerprints"] == {server.address: server.fingerprint}
    raw = me.config_file.read_bytes()
    assert PASSWORD.encode() not in raw and ADMIN_PASSWORD.encode() not in raw
    if os.name == "posix":
        assert stat.S_IMODE(me.config_file.stat().st_mode) == 0o600

    # A local repository with the same history: network output must have the same shape.
    local = Cli(tmp_path / "local")
    local.init()

    # `backup` with no path backs up the folder the admin recorded.
    b1 = me.backup()
    assert (b1["added"], b1["modified"], b1["removed"], b1["unchanged"]) == (nfiles, 0, 0, 0)
    assert b1["bytes_uploaded"] > 3 * MiB  # the random photo does not compress
    local.backup(docs)
    state1 = tree_state(docs)
    snaps = snapshot_list(me)
    assert [s["paths"] for s in snaps] == [[str(docs)]]

    # Change, add and delete.
    write(docs / "notes.txt", "meeting notes, revised\n" * 300)
    write(docs / "photos" / "2024" / "dog.jpg", os.urandom(3 * MiB + 17))
    write(docs / "new.txt", "new file\n")
    write(docs / "photos" / "2024" / "bird.jpg", os.urandom(200_000))
    write(docs / "newdir" / "a.txt", "a\n")
    write(docs / "newdir" / "b.txt", "b\n")
    (docs / "report.md").unlink()
    (docs / "code" / "lib" / "util.py").unlink()
    (docs / "code" / "lib").rmdir()
    for d in (docs / "code", docs / "photos" / "2024", docs / "newdir", docs):
        os.utime(d, ns=(MTIME + 10**9, MTIME + 10**9))
    b2 = me.backup()
    counts = (b2["added"], b2["modified"], b2["removed"], b2["unchanged"])
    assert counts == (4, 2, 2, nfiles - 4), b2
    assert b2["parent"] == b1["snapshot"]
    # Only the changed content went up: the unchanged 300 kB photo was not re-sent.
    assert 3 * MiB < b2["bytes_uploaded"] < 3 * MiB + 450_000, b2
    l2 = local.backup(docs)
    assert (l2["added"], l2["modified"], l2["removed"], l2["unchanged"]) == counts

    # Restore equals the source, byte for byte and with metadata; the old snapshot too.
    assert_restores(me, docs, tmp_path / "out-latest")
    me.restore(tmp_path / "out-first", b1["snapshot"][:8])
    assert tree_state(tmp_path / "out-first" / "Documents") == state1

    # ls, diff, snapshots: the same output as a local repository with the same history.
    for args in (("ls", "latest"), ("ls", "-l", "latest"), ("ls", "--json", "latest")):
        assert me.run(*args).stdout == local.run(*args).stdout, args
    photos = "/Documents/photos"
    assert me.run("ls", "latest", photos).stdout == local.run("ls", "latest", photos).stdout
    assert f"{photos}/2024/bird.jpg\n" in me.run("ls", "latest", photos).stdout
    remote_snaps, local_snaps = snapshot_list(me), snapshot_list(local)
    assert len(remote_snaps) == len(local_snaps) == 2
    for r, lo in zip(remote_snaps, local_snaps, strict=True):
        assert r.keys() == lo.keys()
        assert r["paths"] == lo["paths"] == [str(docs)]
        assert r["stats"].keys() == lo["stats"].keys()
        assert r["stats"]["files"] == lo["stats"]["files"]
    remote_diff = me.run("diff", remote_snaps[0]["short_id"], remote_snaps[1]["short_id"]).stdout
    local_diff = local.run("diff", local_snaps[0]["short_id"], local_snaps[1]["short_id"]).stdout
    assert remote_diff == local_diff
    assert sorted(remote_diff.splitlines()[:-2]) == sorted(
        [
            "+    /Documents/new.txt",
            "+    /Documents/newdir/",
            "+    /Documents/newdir/a.txt",
            "+    /Documents/newdir/b.txt",
            "+    /Documents/photos/2024/bird.jpg",
            "M    /Documents/notes.txt",
            "M    /Documents/photos/2024/dog.jpg",
            "-    /Documents/report.md",
            "-    /Documents/code/lib/",
            "-    /Documents/code/lib/util.py",
        ]
    )
    assert remote_diff.endswith("\n5 added, 3 removed, 2 modified, 0 changed type\n")
    table = me.run("snapshots").stdout
    assert remote_snaps[0]["short_id"] in table and "2 snapshot(s)" in table

    # forget and check --read-data.
    res = me.run("forget", b1["snapshot"][:8])
    assert res.stdout.strip() == f"removed snapshot {b1['snapshot'][:8]}"
    assert [s["id"] for s in snapshot_list(me)] == [b2["snapshot"]]
    res = me.run("check", "--read-data")
    assert re.fullmatch(
        r"no errors: 1 snapshots, \d+ trees checked, \d+ blobs read and verified\n", res.stdout
    ), res.stdout
    local.run("forget", local_snaps[0]["short_id"])
    assert re.sub(r"\d+", "N", res.stdout) == re.sub(
        r"\d+", "N", local.run("check", "--read-data").stdout
    )

    # The admin deletes the account: the client can no longer log in.
    out = server.admin("user", "delete", "alice", "--yes").stdout
    assert "alice" in out
    one_line_error(me.run("snapshots", check=False, input=""), "wrong user name or password")
    one_line_error(me.run("backup", check=False, input=""), "wrong user name or password")
    res = me.run(
        "login", "--server", server.address, "--user", "alice",
        "--fingerprint", server.fingerprint, check=False, input="",
    )  # fmt: skip
    one_line_error(res, "wrong user name or password")
    assert server.alive()


@pytest.mark.timeout(120)
def test_recorded_folder_relative_to_home(server: Server, tmp_path: Path) -> None:
    """The admin may record '~/Documents' (the user's home differs per computer)."""
    home = tmp_path / "home"
    docs = home / "Documents"
    write(docs / "a.txt", "a\n")
    alice = server.add_user("alice", tmp_path, directory="~/Documents")
    out = alice.run("backup", "--json", env={"HOME": str(home), "USERPROFILE": str(home)}).json()
    assert out["added"] == 1
    assert [s["paths"] for s in snapshot_list(alice)] == [[str(docs)]]


# ---- password reset by the admin -------------------------------------------------------------


@pytest.mark.timeout(180)
def test_admin_reset_needs_the_old_password(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_documents(src)
    alice = server.add_user("alice", tmp_path)
    first = alice.backup(src)
    reset = "reset-by-the-admin-4711"
    out = server.admin("user", "passwd", "alice", "--password-stdin", input=reset + "\n").stdout
    assert "must choose a new password" in out and "previous password" in out

    new = "a brand new password of alice"
    new_file, old_file, admin_file = tmp_path / "new", tmp_path / "old", tmp_path / "admin"
    new_file.write_text(new + "\n")
    old_file.write_text(PASSWORD + "\n")
    admin_file.write_text(reset + "\n")
    with_reset = {"STRONGROOM_PASSWORD": reset}

    # The previous password no longer logs in; the reset one must be replaced first.
    one_line_error(alice.run("snapshots", check=False, input=""), "wrong user name or password")
    one_line_error(
        alice.run("backup", str(src), check=False, env=with_reset, input=""), "strongroom passwd"
    )
    # Replacing it needs the previous password: the admin's alone cannot unlock the data.
    res = alice.run(
        "passwd", "--new-password-file", str(new_file), check=False, env=with_reset, input=""
    )
    one_line_error(res, "previous", "--old-password-file")
    res = alice.run(
        "passwd", "--new-password-file", str(new_file), "--old-password-file", str(admin_file),
        check=False, env=with_reset, input="",
    )  # fmt: skip
    one_line_error(res, "not your previous password")
    # ... and nothing changed: the account still waits for a change with the right password.
    one_line_error(
        alice.run("backup", str(src), check=False, env=with_reset, input=""), "strongroom passwd"
    )

    res = alice.run(
        "passwd", "--new-password-file", str(new_file), "--old-password-file", str(old_file),
        env=with_reset, input="",
    )  # fmt: skip
    assert "password changed" in res.stdout
    alice.env["STRONGROOM_PASSWORD"] = new
    assert [s["id"] for s in snapshot_list(alice)] == [first["snapshot"]]
    assert_restores(alice, src, tmp_path / "out", first["snapshot"])
    again = alice.backup(src)
    assert again["unchanged"] == first["added"] and again["added"] == 0
    alice.run("check", "--read-data")
    for old in (PASSWORD, reset):
        res = alice.run("snapshots", check=False, env={"STRONGROOM_PASSWORD": old}, input="")
        one_line_error(res, "wrong user name or password")


# ---- several users -------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_two_users_at_the_same_time_are_isolated(server: Server, tmp_path: Path) -> None:
    alice = server.add_user("alice", tmp_path)
    bob = server.add_user("bob", tmp_path, password="bob's own password")
    a_src, b_src = tmp_path / "alice-files", tmp_path / "bob-files"
    make_documents(a_src)
    make_documents(b_src)
    shared = os.urandom(6 * MiB)  # the same content in both: never shared between users
    write(a_src / "shared.bin", shared)
    write(b_src / "shared.bin", shared)
    write(b_src / "only-bob.txt", "bob\n")

    procs = [
        spawn(alice, "backup", str(a_src), "--json"),
        spawn(bob, "backup", str(b_src), "--json"),
    ]
    a_res, b_res = (finish(p) for p in procs)
    assert a_res.returncode == 0 and b_res.returncode == 0, (a_res, b_res)
    a_out, b_out = a_res.json(), b_res.json()
    assert a_out["added"] == 10 and b_out["added"] == 11
    assert a_out["bytes_uploaded"] > 9 * MiB and b_out["bytes_uploaded"] > 9 * MiB

    a_snaps, b_snaps = snapshot_list(alice), snapshot_list(bob)
    assert [s["id"] for s in a_snaps] == [a_out["snapshot"]]
    assert [s["id"] for s in b_snaps] == [b_out["snapshot"]]
    assert a_snaps[0]["paths"] == [str(a_src)] and b_snaps[0]["paths"] == [str(b_src)]
    one_line_error(alice.run("ls", b_out["snapshot"], check=False, input=""), "no snapshot")
    one_line_error(bob.run("forget", a_out["snapshot"], check=False, input=""), "no snapshot")

    assert_restores(alice, a_src, tmp_path / "out-a")
    assert_restores(bob, b_src, tmp_path / "out-b")

    ids = storage_ids(server)
    assert ids["alice"] != ids["bob"]
    # Each user's storage holds that user's data: both hold the shared file's ~6 MiB.
    usage = {u["name"]: u for u in json.loads(server.admin("usage", "--json").stdout)}
    assert usage["alice"]["stored_bytes"] > 9 * MiB and usage["bob"]["stored_bytes"] > 9 * MiB
    if server.embedded:
        a_dir, b_dir = (server.data_dir / "storage" / ids[n] for n in ("alice", "bob"))
        assert a_dir.is_dir() and b_dir.is_dir()
        assert "alice" not in str(a_dir) and "bob" not in str(b_dir)  # named by a random ID
        for d in (a_dir, b_dir):
            assert sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) > 9 * MiB


@pytest.mark.timeout(240)
def test_four_clients_of_two_users_in_parallel(server: Server, tmp_path: Path) -> None:
    alice = server.add_user("alice", tmp_path)
    bob = server.add_user("bob", tmp_path, password="bob's own password")
    common = os.urandom(4 * MiB)  # two clients of one user upload the same blobs at once
    sources: dict[str, list[Path]] = {"alice": [], "bob": []}
    for user in ("alice", "bob"):
        for n in (1, 2):
            src = tmp_path / f"{user}-pc{n}"
            make_documents(src)
            write(src / "common.bin", common)
            write(src / "own.bin", os.urandom(2 * MiB))
            for i in range(150):
                write(src / "many" / f"f{i:03d}.txt", f"{user} {n} {i}\n" * (i + 1))
            sources[user].append(src)
    clients = {"alice": alice, "bob": bob}
    procs = [
        (user, src, spawn(clients[user], "backup", str(src), "--json"))
        for user in ("alice", "bob")
        for src in sources[user]
    ]
    results = [(user, src, finish(p, 180)) for user, src, p in procs]
    for user, src, res in results:
        assert res.returncode == 0, (user, src, res)
        assert res.json()["added"] == 9 + 2 + 150
    for user, cli in clients.items():
        snaps = snapshot_list(cli)
        assert sorted(s["paths"][0] for s in snaps) == sorted(map(str, sources[user]))
        res = cli.run("check", "--read-data")
        assert res.stdout.startswith("no errors: 2 snapshots"), res.stdout
        for snap in snaps:
            src = Path(snap["paths"][0])
            assert_restores(cli, src, tmp_path / f"out-{src.name}", snap["short_id"])
    assert server.alive()


# ---- what the server (and a thief of its disk) can see -------------------------------------


def _needles(values: Iterable[bytes]) -> list[bytes]:
    out = []
    for v in values:
        out += [v, v.hex().encode()]
    return out


@pytest.mark.timeout(180)
def test_server_data_folder_reveals_no_names_contents_or_passwords(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    folder_names = ["Zq7-Secret-Project-Folder-9f1c2b7e", "Wv3-Hidden-Subfolder-Name-41d8a6c0"]
    file_names = [
        "Qx7-Payroll-Confidential-8d3e51aa.xlsx",
        "Kp2-Diary-Entry-Private-0b6f93d2.txt",
        "Ym5-Big-Random-Payload-77c2e0f4.bin",
        "Hs8-Small-Note-File-Name-2a9d4c61.txt",
    ]
    compressible = b"COMPRESSIBLE-MARKER-3f9a7c1e5b2d-distinctive-text "
    small_marker = b"tiny secret note SMALL-MARKER-b7e9d21a8c64f0e3 for the bundle"
    incompressible = os.urandom(5 * MiB)
    top = src / folder_names[0]
    sub = top / folder_names[1]
    write(top / file_names[0], compressible * 40_000)  # ~2 MB that zstd squeezes a lot
    write(sub / file_names[1], b"Dear diary, " + compressible * 20 + b" the end")
    write(sub / file_names[2], incompressible)
    write(top / file_names[3], small_marker)
    out = alice.backup(src)
    assert out["added"] == 4
    write(sub / file_names[1], b"Dear diary, second day " + compressible * 30)
    alice.backup(src)  # a second snapshot: trees and records are rewritten

    windows = [incompressible[i : i + 48] for i in range(0, len(incompressible) - 48, MiB // 2)]
    secrets = [
        *(n.encode() for n in folder_names + file_names),
        compressible.strip(),
        small_marker,
        b"Dear diary",
        *windows,
        PASSWORD.encode(),
        ADMIN_PASSWORD.encode(),
    ]
    needles = _needles(secrets)

    def scan(where: str) -> int:
        if isinstance(server, ClusterServer):  # PostgreSQL's tables and the bucket's objects
            files = server.stored_state(tmp_path / f"state-{where.replace(' ', '-')}")
        else:
            files = [p for p in server.data_dir.rglob("*") if p.is_file()]
            files.append(server.log)
        total = 0
        for f in files:
            for name in folder_names + file_names:
                assert name.lower() not in str(f).lower(), f"{where}: {name} in a file name"
            data = f.read_bytes()
            total += len(data)
            lowered = data.lower()
            for needle in needles:
                assert needle.lower() not in lowered, f"{where}: {needle[:40]!r} found in {f}"
        return total

    running = scan("server running")
    assert running > 5 * MiB  # the scan did see the stored data
    assert server.embedded == any(p.suffix == ".sqlite" for p in server.data_dir.rglob("*"))
    assert server.stop() == 0  # SQLite folds its write-ahead log into the database files
    scan("server stopped")


# ---- errors a person can act on --------------------------------------------------------------


@pytest.mark.timeout(120)
def test_error_server_not_reachable_and_bad_address(server: Server, alice: NetCli) -> None:
    closed = f"127.0.0.1:{free_port()}"
    res = alice.run("snapshots", "--server", closed, check=False, input="")
    one_line_error(res, "cannot reach server", closed, "strongroom-server running")
    for bad, needle in (
        ("127.0.0.1:notaport", "bad port"),
        ("127.0.0.1:99999", "bad port"),
        (":44000", "bad server address"),
        ("[::1", "bad server address"),
    ):
        res = alice.run("snapshots", "--server", bad, check=False, input="")
        one_line_error(res, needle, code=2)  # a usage error
        res = alice.run("login", "--server", bad, "--user", "alice", check=False, input="")
        one_line_error(res, needle, code=2)


@pytest.mark.timeout(120)
def test_error_fingerprints(server: Server, alice: NetCli, tmp_path: Path) -> None:
    other = "SHA256:" + "ab" * 32
    res = alice.run("snapshots", check=False, env={"STRONGROOM_FINGERPRINT": other}, input="")
    line = one_line_error(res, "CHANGED", server.fingerprint, "--fingerprint")
    assert "CHANGED" in line
    # No fingerprint at all and no terminal to ask on: say how to give it.
    alice.env.pop("STRONGROOM_FINGERPRINT")
    res = alice.run("backup", str(tmp_path), check=False, input="")
    one_line_error(
        res, "not trusted", server.fingerprint, "--fingerprint", "STRONGROOM_FINGERPRINT"
    )
    # The refused connections pinned nothing; the file holds only the account's pins from
    # the first login (key-derivation cost and key check), no server, user or fingerprint.
    saved = json.loads((tmp_path / "client-alice" / "config" / "client.json").read_text())
    assert saved["fingerprints"] == {} and saved["server"] is None and saved["user"] is None
    assert list(saved["accounts"]) == [f"{server.address}|alice"]


@pytest.mark.timeout(120)
def test_error_password_and_folders(server: Server, tmp_path: Path) -> None:
    gone = tmp_path / "folder-that-is-not-here"
    alice = server.add_user("alice", tmp_path, directory=str(gone))
    res = alice.run("snapshots", check=False, env={"STRONGROOM_PASSWORD": "wrong"}, input="")
    one_line_error(res, "wrong user name or password")
    res = alice.run("backup", "/nonexistent", check=False, input="")
    one_line_error(res, "/nonexistent", "no such file or folder")
    res = alice.run("backup", check=False, input="")
    one_line_error(res, str(gone), "recorded", "does not exist")
    assert snapshot_list(alice) == []
    gone.mkdir()
    write(gone / "now.txt", "here\n")
    assert alice.backup()["added"] == 1


@pytest.mark.timeout(180)
def test_error_quota_exceeded_keeps_previous_snapshots(server: Server, tmp_path: Path) -> None:
    alice = server.add_user("alice", tmp_path, extra=("--quota", "1M"))
    src = tmp_path / "src"
    write(src / "small.txt", "fits in the quota\n" * 100)
    write(src / "pic.bin", os.urandom(200_000))
    first = alice.backup(src)
    big = tmp_path / "big"
    for i in range(5):
        write(big / f"random{i}.bin", os.urandom(MiB))
    res = alice.run("backup", str(big), "--json", check=False, input="")
    one_line_error(res, "quota")
    assert res.stdout == ""
    assert [s["id"] for s in snapshot_list(alice)] == [first["snapshot"]]
    assert_restores(alice, src, tmp_path / "out", first["snapshot"])
    alice.run("check", "--read-data")
    # More room: the same backup now goes through.
    server.admin("user", "set", "alice", "--quota", "20M")
    assert alice.backup(big)["added"] == 5
    alice.run("check", "--read-data")


# ---- login and trust on first use ------------------------------------------------------------


@pytest.mark.timeout(180)
def test_login_pins_on_first_use_and_refuses_another_certificate(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", "a\n")
    me = ConfigCli(tmp_path / "me")
    # No --fingerprint and no terminal to ask on: refuse, and remember nothing.
    res = me.run("login", "--server", server.address, "--user", "alice", check=False, input="")
    one_line_error(res, "not trusted", server.fingerprint, "--fingerprint")
    assert not me.config_file.exists()
    # Nothing saved yet: other commands say how to start.
    one_line_error(me.run("snapshots", check=False, input=""), "strongroom login", code=2)
    # A failed login (wrong password) remembers nothing either.
    res = me.run(
        "login", "--server", server.address, "--user", "alice",
        "--fingerprint", server.fingerprint, check=False, env={"STRONGROOM_PASSWORD": "wrong"},
        input="",
    )  # fmt: skip
    one_line_error(res, "wrong user name or password")
    assert not me.config_file.exists()

    res = me.run(
        "login", "--server", server.address, "--user", "alice",
        "--fingerprint", server.fingerprint.removeprefix("SHA256:").upper(), input="",
    )  # fmt: skip
    assert "logged in as alice" in res.stdout
    assert json.loads(me.config_file.read_text())["fingerprints"] == {
        server.address: server.fingerprint
    }
    assert me.backup(src)["added"] == 1
    saved_config = me.config_file.read_text()

    # Another server (its own certificate) on another port, and a config that names it with
    # a pinned value that is not its certificate: refused before anything is sent.
    other = Server(tmp_path / "other-data").start()
    try:
        assert other.fingerprint != server.fingerprint
        cfg = json.loads(saved_config)
        cfg["server"] = other.address
        cfg["fingerprints"][other.address] = server.fingerprint
        me.config_file.write_text(json.dumps(cfg))
        res = me.run("snapshots", check=False, input="")
        one_line_error(res, "CHANGED", server.fingerprint, other.fingerprint)
        # Without a pin for it, the other server is not trusted either.
        del cfg["fingerprints"][other.address]
        me.config_file.write_text(json.dumps(cfg))
        one_line_error(me.run("snapshots", check=False, input=""), "not trusted")
        assert "login ok" not in other.log.read_text()
    finally:
        other.kill()

    # The same address answered by a different server (what an attacker would do).
    me.config_file.write_text(saved_config)
    server.kill()
    impostor = Server(tmp_path / "impostor-data")
    impostor.port = server.port
    impostor.start()
    try:
        assert impostor.address == server.address
        res = me.run("backup", str(src), check=False, input="")
        one_line_error(res, "CHANGED", "Nothing was sent")
        assert "login" not in impostor.log.read_text()
        assert json.loads(me.config_file.read_text())["fingerprints"] == {
            server.address: server.fingerprint
        }
    finally:
        impostor.kill()


# ---- server restart ------------------------------------------------------------------------


@pytest.mark.embedded_only  # one process stopped; two nodes restarted: test_scaleout.py
@pytest.mark.timeout(180)
def test_server_restart_keeps_users_and_snapshots(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_documents(src)
    first = alice.backup(src)
    bob = server.add_user("bob", tmp_path, password="bob's password")
    write(tmp_path / "bobs" / "b.txt", "b\n")
    bob.backup(tmp_path / "bobs")

    proc = server.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, server.log.read_text()
    assert "stopped" in out
    one_line_error(alice.run("snapshots", check=False, input=""), "cannot reach server")

    server.start()
    assert [s["id"] for s in snapshot_list(alice)] == [first["snapshot"]]
    assert len(snapshot_list(bob)) == 1
    again = alice.backup(src)
    assert again["parent"] == first["snapshot"] and again["unchanged"] == first["added"]
    assert again["bytes_uploaded"] < 20_000  # only trees and the record
    assert_restores(alice, src, tmp_path / "out", first["snapshot"])
    alice.run("check", "--read-data")
    assert sorted(storage_ids(server)) == ["alice", "bob"]
