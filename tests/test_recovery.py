"""Recovery keys end to end (issue 12, part 3): a real server over real TLS, the real client.

A user who lost their password gets an admin reset, runs `strongroom recover` with the
recovery key made at their first login, and reads every backup again; a wrong key is refused
and says nothing about itself; rotate and remove; key files from before recovery keys; an
append-only account; kills at the moments that matter; the same for a local --repo.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PASSWORD, Cli, Result, strongroom_exe
from hostile_server import ProxiedCli, Request, Rewrite, serve_proxy
from netfixtures import ADMIN_PASSWORD, KDF_ENV, NetCli, Server, finish, spawn
from strongroom.keys import KeyFile
from strongroom.protocol import messages as m
from strongroom.recovery import RecoveryKey
from strongroom.recovery_code import decode
from terminal import Terminal
from test_hostile_server import one_line_error
from test_server_hostile import connect, is_error, list_snapshots

pytestmark = pytest.mark.timeout(240)

RESET_PASSWORD = "the admin's reset password"
NEW_PASSWORD = "my new password after recovery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("recovery") / "server-data").start()
    try:
        yield srv
    finally:
        srv.kill()


def row(server: Server, name: str) -> dict[str, object]:
    db = sqlite3.connect(server.data_dir / "users.sqlite", timeout=30)
    try:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone())
    finally:
        db.close()


def stored_keyfile(server: Server, name: str) -> dict[str, object]:
    raw = row(server, name)["keyfile"]
    assert isinstance(raw, bytes)
    parsed: dict[str, object] = json.loads(raw)
    return parsed


def account(
    server: Server, name: str, tmp: Path, *extra_passwd: str, append_only: bool = False
) -> tuple[NetCli, Path]:
    """A new account whose owner chose PASSWORD at first login, which wrote the recovery key
    to a file; returns the client and that file."""
    args = ["user", "add", name, "--password-stdin"] + (["--append-only"] if append_only else [])
    server.admin(*args, input=ADMIN_PASSWORD + "\n")
    cli = NetCli(tmp / f"client-{name}", server, name, PASSWORD)
    key = tmp / f"{name}-recovery.txt"
    res = cli.run(
        "passwd",
        "--new-password-file",
        str(write(tmp / f"{name}-pw", PASSWORD)),
        "--recovery-key-file",
        str(key),
        *extra_passwd,
        env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD},
    )
    assert "recovery key written" in res.stderr
    return cli, key


def write(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


def reset(server: Server, name: str, password: str = RESET_PASSWORD) -> None:
    """The user forgot their password: the admin sets a new one for them."""
    server.admin("user", "passwd", name, "--password-stdin", input=password + "\n")


def recover(cli: Cli, key: Path, tmp: Path, *, check: bool = True) -> Result:
    return cli.run(
        "recover",
        "--recovery-key-file",
        str(key),
        "--new-password-file",
        str(write(tmp / "new-pw", NEW_PASSWORD)),
        env={"STRONGROOM_PASSWORD": RESET_PASSWORD},
        check=check,
    )


def make_tree(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("hello\n")
    (root / "docs" / "deep" / "random.bin").write_bytes(rng.randbytes(1024 * 1024 + 17))
    (root / "empty").write_bytes(b"")
    os.symlink("docs/a.txt", root / "link")
    return root


def files_of(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out


def test_lost_password_admin_reset_recover_and_restore_bit_exact(
    server: Server, tmp_path: Path
) -> None:
    alice, key = account(server, "alice", tmp_path)
    assert key.stat().st_mode & 0o777 == 0o600
    secret = decode(" ".join(ln for ln in key.read_text().splitlines() if not ln.startswith("#")))
    kf = stored_keyfile(server, "alice")
    assert kf["version"] == 2 and set(kf["recovery"]) == {"kdf", "wrapped"}  # type: ignore[arg-type]
    src = make_tree(tmp_path / "src", 1)
    alice.backup(src)
    (src / "docs" / "later.txt").write_text("second snapshot\n")
    alice.backup(src)
    # An ordinary password change keeps the recovery wrapping as it was.
    alice.run("passwd", "--new-password-file", str(write(tmp_path / "pw2", "second password")))
    assert stored_keyfile(server, "alice")["recovery"] == kf["recovery"]
    alice.env["STRONGROOM_PASSWORD"] = "second password"
    before = row(server, "alice")

    # The password is gone; a new computer (no remembered pins, no cache) and an admin reset.
    reset(server, "alice")
    laptop = NetCli(tmp_path / "new-laptop", server, "alice", "not known any more")
    res = recover(laptop, key, tmp_path)
    assert "password changed" in res.stdout and "Traceback" not in res.stderr
    after = row(server, "alice")
    assert after["must_change_password"] == 0
    kf_after = stored_keyfile(server, "alice")
    assert kf_after["recovery"] == kf["recovery"]  # the recovery wrapping is kept as it was
    assert kf_after["salt"] != kf["salt"] and after["auth_hash"] != before["auth_hash"]

    # Everything is readable with the new password, bit for bit.
    laptop.env["STRONGROOM_PASSWORD"] = NEW_PASSWORD
    assert len(laptop.run("snapshots", "--json").json()) == 2
    laptop.restore(tmp_path / "out")
    assert files_of(tmp_path / "out" / "src") == files_of(src)
    # The old password no longer logs in; the recovery key still works for the next time.
    res = alice.run("snapshots", check=False)
    one_line_error(res, "wrong user name or password")
    laptop.run("recovery-key", "verify", "--recovery-key-file", str(key))

    # Nothing the server holds or logged contains the recovery key in any form.
    forms = [secret.hex(), key.read_text().splitlines()[-1]]
    stored = b"".join(p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file())
    log = server.log.read_text()
    for form in forms:
        assert form.encode() not in stored and form not in log
    assert secret not in stored


def test_a_wrong_recovery_key_is_refused_and_tells_nothing(server: Server, tmp_path: Path) -> None:
    bob, key = account(server, "bob", tmp_path)
    reset(server, "bob")
    before = row(server, "bob")
    errors = []
    for i in range(2):  # two other well-formed keys: the same words for both
        other = write(tmp_path / f"other{i}.txt", RecoveryKey.generate().text())
        res = recover(bob, other, tmp_path, check=False)
        errors.append(one_line_error(res, "does not open this account's keys"))
        assert res.returncode == 1
    assert errors[0] == errors[1]
    assert row(server, "bob") == before  # nothing was changed: still reset, same key file
    # A typo is found before anything is sent (no login at all).
    logins = server.log.read_text().count("login ok for user 'bob'")
    text = key.read_text().splitlines()
    last = text[-1]
    text[-1] = last[:3] + ("X" if last[3] != "X" else "Y") + last[4:]
    typo = write(tmp_path / "typo.txt", "\n".join(text))
    res = recover(bob, typo, tmp_path, check=False)
    one_line_error(res, "group 11 of the recovery key has a typo")
    assert res.returncode == 2
    res = recover(bob, write(tmp_path / "short.txt", last), tmp_path, check=False)
    one_line_error(res, "65 characters")
    assert server.log.read_text().count("login ok for user 'bob'") == logins
    # A wrong login password for recover says what to use.
    res = bob.run(
        "recover", "--recovery-key-file", str(key), env={"STRONGROOM_PASSWORD": "nope"}, check=False
    )
    one_line_error(res, "wrong user name or password", "the password the admin set")
    # The right key works.
    recover(bob, key, tmp_path)
    bob.env["STRONGROOM_PASSWORD"] = NEW_PASSWORD
    bob.run("snapshots")
    # Without a reset there is nothing to recover (and nothing changes).
    res = bob.run("recover", "--recovery-key-file", str(key), check=False)
    one_line_error(res, "nothing to recover")


def test_rotate_invalidates_the_old_key_and_remove_leaves_the_password(
    server: Server, tmp_path: Path
) -> None:
    carol, old_key = account(server, "carol", tmp_path)
    src = make_tree(tmp_path / "src", 2)
    carol.backup(src)
    res = carol.run("recovery-key", "create", check=False)
    one_line_error(res, "already has a recovery key", "rotate")
    new_key = tmp_path / "carol-new.txt"
    page = tmp_path / "carol-new.html"
    res = carol.run(
        "recovery-key",
        "rotate",
        "--recovery-key-file",
        str(new_key),
        "--recovery-key-html",
        str(page),
    )
    assert "old one no longer works" in res.stdout
    assert page.stat().st_mode & 0o777 == 0o600
    key_line = new_key.read_text().splitlines()[-1]
    assert key_line in page.read_text() and "carol at 127.0.0.1:" in page.read_text()
    # Never over an existing file, and nothing is changed when it would be.
    before = row(server, "carol")
    res = carol.run("recovery-key", "rotate", "--recovery-key-file", str(new_key), check=False)
    one_line_error(res, "already exists", "never overwritten")
    assert row(server, "carol") == before
    res = carol.run("recovery-key", "verify", "--recovery-key-file", str(old_key), check=False)
    one_line_error(res, "does not open")

    reset(server, "carol")
    res = recover(carol, old_key, tmp_path, check=False)
    one_line_error(res, "does not open this account's keys")
    recover(carol, new_key, tmp_path)
    carol.env["STRONGROOM_PASSWORD"] = NEW_PASSWORD
    carol.restore(tmp_path / "out")
    assert files_of(tmp_path / "out" / "src") == files_of(src)

    assert "has a recovery key" in carol.run("recovery-key", "status").stdout
    assert "removed" in carol.run("recovery-key", "remove").stdout
    assert "recovery" not in stored_keyfile(server, "carol")
    assert stored_keyfile(server, "carol")["version"] == 1
    reset(server, "carol")
    res = recover(carol, new_key, tmp_path, check=False)
    one_line_error(res, "has no recovery key", "previous password")
    # The password alone still opens everything.
    carol.run(
        "passwd",
        "--new-password-file",
        str(write(tmp_path / "pw3", "third password")),
        "--old-password-file",
        str(write(tmp_path / "pw2", NEW_PASSWORD)),
        env={"STRONGROOM_PASSWORD": RESET_PASSWORD},
    )
    carol.env["STRONGROOM_PASSWORD"] = "third password"
    assert len(carol.run("snapshots", "--json").json()) == 1


def test_a_key_file_from_before_recovery_keys_still_works(server: Server, tmp_path: Path) -> None:
    server.admin("user", "add", "dave", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    dave = NetCli(tmp_path / "client-dave", server, "dave", PASSWORD)
    res = dave.run(
        "passwd",
        "--new-password-file",
        str(write(tmp_path / "pw", PASSWORD)),
        "--no-recovery-key",
        env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD},
    )
    assert "recovery key" not in res.stderr.lower()
    kf = stored_keyfile(server, "dave")
    # Exactly the fields (and version) the client wrote before recovery keys existed.
    assert kf["version"] == 1 and set(kf) == {
        "version",
        "kdf",
        "salt",
        "memory_kib",
        "iterations",
        "lanes",
        "wrapped",
        "auth_hash",
    }
    src = make_tree(tmp_path / "src", 3)
    dave.backup(src)
    assert "no recovery key" in dave.run("recovery-key", "status").stdout
    key = tmp_path / "dave.txt"
    dave.run("recovery-key", "create", "--recovery-key-file", str(key))
    kf2 = stored_keyfile(server, "dave")
    assert kf2["version"] == 2
    assert {k: v for k, v in kf2.items() if k not in ("version", "recovery")} == {
        k: v for k, v in kf.items() if k != "version"
    }  # only the recovery wrapping was added: no password hashing ran, the login is the same
    reset(server, "dave")
    recover(dave, key, tmp_path)
    dave.env["STRONGROOM_PASSWORD"] = NEW_PASSWORD
    dave.restore(tmp_path / "out")
    assert files_of(tmp_path / "out" / "src") == files_of(src)


def test_append_only_account_recovers_without_deleting_anything(
    server: Server, tmp_path: Path
) -> None:
    erin, _key = account(server, "erin", tmp_path, append_only=True)
    src = make_tree(tmp_path / "src", 4)
    first = erin.backup(src)["snapshot"]
    (src / "docs" / "a.txt").write_text("changed\n")
    second = erin.backup(src)["snapshot"]
    # Changing the password stays forbidden; replacing only the recovery wrapping is allowed.
    res = erin.run(
        "passwd", "--new-password-file", str(write(tmp_path / "x", "other")), check=False
    )
    one_line_error(res, "append-only")
    new_key = tmp_path / "erin-new.txt"
    generation = row(server, "erin")["generation"]
    with connect(server, "erin") as running:  # a backup in progress elsewhere
        erin.run("recovery-key", "rotate", "--recovery-key-file", str(new_key))
        # Only the recovery wrapping changed: the login and keys did not, no session ended.
        assert sorted(list_snapshots(running)) == sorted([first, second])
    assert row(server, "erin")["generation"] == generation
    # By hand: other sealed keys under the same salt and verifier are refused (they would lock
    # the owner out); the same password part with another recovery wrapping is accepted.
    current = KeyFile.from_json(bytes(row(server, "erin")["keyfile"]))  # type: ignore[arg-type]
    planted = dataclasses.replace(current, wrapped=os.urandom(len(current.wrapped)))
    with connect(server, "erin") as raw:
        refused = raw.call(m.SetKeyFile(planted.to_json().encode()))
        assert is_error(refused, m.ErrorCode.FORBIDDEN), refused
    with connect(server, "erin") as raw:
        other = current.with_recovery(os.urandom(len(current.recovery or b"")))
        assert isinstance(raw.call(m.SetKeyFile(other.to_json().encode())), m.Ok)
        assert isinstance(raw.call(m.SetKeyFile(current.to_json().encode())), m.Ok)
    assert bytes(row(server, "erin")["keyfile"]) == current.to_json().encode()  # type: ignore[arg-type]
    packs = sorted(p.name for p in server.data_dir.rglob("*") if p.suffix == ".pack")
    reset(server, "erin")
    recover(erin, new_key, tmp_path)
    erin.env["STRONGROOM_PASSWORD"] = NEW_PASSWORD
    snaps = {s["id"] for s in erin.run("snapshots", "--json").json()}
    assert snaps == {first, second}
    assert sorted(p.name for p in server.data_dir.rglob("*") if p.suffix == ".pack") == packs
    assert row(server, "erin")["append_only"] == 1
    erin.restore(tmp_path / "out", first[:8])
    assert (tmp_path / "out" / "src" / "docs" / "a.txt").read_text() == "hello\n"
    erin.run("check", "--read-data")


def test_on_a_terminal_the_key_is_shown_once_then_typed_back(
    server: Server, tmp_path: Path
) -> None:
    """A person at a terminal: the first login shows the key; after the reset they type it
    (lower case, spaces instead of dashes), the admin's password and a new one, hidden."""
    server.admin("user", "add", "hana", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(KDF_ENV)
    env.update(
        {
            "STRONGROOM_CONFIG_DIR": str(tmp_path / "config"),
            "STRONGROOM_CACHE_DIR": str(tmp_path / "cache"),
            "STRONGROOM_SERVER": server.address,
            "STRONGROOM_USER": "hana",
            "STRONGROOM_FINGERPRINT": server.fingerprint,
        }
    )
    t = Terminal([*strongroom_exe(), "login"], env)
    t.answer("Password for hana", ADMIN_PASSWORD)
    t.answer("New password:", PASSWORD)
    t.answer("New password (again):", PASSWORD)
    t.expect("Your recovery key for hana at")
    shown = re.findall(r"^    ([0-9A-Z]{5}(?:-[0-9A-Z]{5})*)$", t.expect("logged in as hana"), re.M)
    assert t.finish() == 0
    assert "keep it offline" in t.seen.lower()
    typed = " ".join(shown).replace("-", " ").lower()
    assert len(decode(typed)) == 32

    reset(server, "hana")
    t = Terminal([*strongroom_exe(), "recover"], env)
    t.answer("Recovery key", typed)
    t.expect("the password the admin set")
    t.answer("Password for hana", RESET_PASSWORD)
    t.answer("New password:", NEW_PASSWORD)
    t.answer("New password (again):", NEW_PASSWORD)
    t.expect("your backups open with your new password")
    assert t.finish() == 0
    assert typed not in t.seen and typed.upper() not in t.seen  # typed hidden
    t = Terminal([*strongroom_exe(), "snapshots"], env)
    t.answer("Password for hana", NEW_PASSWORD)
    t.expect("0 snapshot(s)")
    assert t.finish() == 0


# ---- kills at the moments that matter ----------------------------------------------------------


class HoldSetKeyFile(Rewrite):
    """Lets the first SET_KEYFILE reach the server but holds back its OK (`after=True`), or
    keeps the request from the server (`after=False`), so a test can kill the client there."""

    def __init__(self, *, after: bool) -> None:
        super().__init__()
        self.after = after
        self.seen = False
        self.answered = False

    def on_request(self, msg: m.Message, request: Request) -> list[m.Message | bytes] | None:
        if isinstance(msg, m.SetKeyFile):
            self.seen = True
            return None if self.after else []
        return None

    def on_response(self, msg: m.Message, request: Request | None) -> list[m.Message | bytes]:
        if request is not None and isinstance(request.msg, m.SetKeyFile):
            self.answered = True
            return []
        return [msg]


def kill_when(proc: object, condition: object, timeout: float = 60) -> None:
    import subprocess

    assert isinstance(proc, subprocess.Popen)
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the client never got there"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    res = finish(proc)
    assert res.returncode == -signal.SIGKILL


@pytest.mark.parametrize("after", [False, True], ids=["before-server", "after-server"])
def test_rotate_killed_then_run_again(server: Server, tmp_path: Path, after: bool) -> None:
    name = f"frank{int(after)}"
    frank, old_key = account(server, name, tmp_path)
    src = make_tree(tmp_path / "src", 5)
    frank.backup(src)
    key = tmp_path / "rotated.txt"
    hooks = HoldSetKeyFile(after=after)
    with serve_proxy(server, hooks) as proxy:
        proxied = ProxiedCli(frank, proxy)
        proc = spawn(proxied, "recovery-key", "rotate", "--recovery-key-file", str(key))
        kill_when(proc, (lambda: hooks.answered) if after else (lambda: hooks.seen))
    assert not key.exists()  # never a file whose key the account does not hold
    # Whatever the server holds, the password still opens everything, and a second run
    # completes with a key that recovers the account.
    frank.run("snapshots")
    opens_old = frank.run(
        "recovery-key", "verify", "--recovery-key-file", str(old_key), check=False
    )
    assert (opens_old.returncode == 0) == (not after)
    frank.run("recovery-key", "rotate", "--recovery-key-file", str(key))
    reset(server, name)
    recover(frank, key, tmp_path)
    frank.env["STRONGROOM_PASSWORD"] = NEW_PASSWORD
    frank.restore(tmp_path / "out")
    assert files_of(tmp_path / "out" / "src") == files_of(src)


@pytest.mark.parametrize("after", [False, True], ids=["before-server", "after-server"])
def test_recover_killed_then_run_again(server: Server, tmp_path: Path, after: bool) -> None:
    name = f"gina{int(after)}"
    gina, key = account(server, name, tmp_path)
    src = make_tree(tmp_path / "src", 6)
    gina.backup(src)
    reset(server, name)
    write(tmp_path / "new-pw", NEW_PASSWORD)
    hooks = HoldSetKeyFile(after=after)
    with serve_proxy(server, hooks) as proxy:
        proxied = ProxiedCli(gina, proxy)
        proxied.env["STRONGROOM_PASSWORD"] = RESET_PASSWORD
        proc = spawn(
            proxied,
            "recover",
            "--recovery-key-file",
            str(key),
            "--new-password-file",
            str(tmp_path / "new-pw"),
        )
        kill_when(proc, (lambda: hooks.answered) if after else (lambda: hooks.seen))
    assert row(server, name)["must_change_password"] == (0 if after else 1)
    if not after:  # still reset: the same command completes
        recover(gina, key, tmp_path)
    gina.env["STRONGROOM_PASSWORD"] = NEW_PASSWORD
    gina.restore(tmp_path / "out")
    assert files_of(tmp_path / "out" / "src") == files_of(src)


# ---- a local repository -------------------------------------------------------------------------


def test_local_repository_create_recover_rotate_remove(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    key = tmp_path / "local-key.txt"
    res = cli.run(
        "init", "--kdf-memory", "8", "--kdf-iterations", "1", "--recovery-key-file", str(key)
    )
    assert "created repository" in res.stdout and key.stat().st_mode & 0o777 == 0o600
    src = make_tree(tmp_path / "src", 7)
    cli.backup(src)
    res = cli.run(
        "recover",
        "--recovery-key-file",
        str(write(tmp_path / "wrong.txt", RecoveryKey.generate().text())),
        "--new-password-file",
        str(write(tmp_path / "np", NEW_PASSWORD)),
        env={"STRONGROOM_PASSWORD": ""},
        check=False,
    )
    one_line_error(res, "does not open")
    cli.run(
        "recover",
        "--recovery-key-file",
        str(key),
        "--new-password-file",
        str(tmp_path / "np"),
        env={"STRONGROOM_PASSWORD": ""},
    )
    res = cli.run("snapshots", check=False)
    one_line_error(res, "wrong password")
    cli.env["STRONGROOM_PASSWORD"] = NEW_PASSWORD
    cli.restore(tmp_path / "out")
    assert files_of(tmp_path / "out" / "src") == files_of(src)
    # A password change keeps the recovery key.
    cli.run("passwd", "--new-password-file", str(write(tmp_path / "np2", "again")))
    cli.env["STRONGROOM_PASSWORD"] = "again"
    cli.run("recovery-key", "verify", "--recovery-key-file", str(key))
    cli.run("recovery-key", "rotate", "--recovery-key-file", str(tmp_path / "k2.txt"))
    res = cli.run("recovery-key", "verify", "--recovery-key-file", str(key), check=False)
    one_line_error(res, "does not open")
    cli.run("recovery-key", "remove")
    res = cli.run(
        "recover",
        "--recovery-key-file",
        str(tmp_path / "k2.txt"),
        "--new-password-file",
        str(tmp_path / "np"),
        check=False,
    )
    one_line_error(res, "no recovery key")


def test_local_rotate_killed_at_random_moments(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.run("init", "--kdf-memory", "8", "--kdf-iterations", "1", "--no-recovery-key")
    src = make_tree(tmp_path / "src", 8)
    cli.backup(src)
    start = time.monotonic()
    cli.run("recovery-key", "rotate", "--recovery-key-file", str(tmp_path / "measure.txt"))
    took = time.monotonic() - start
    rng = random.Random(12)
    for i in range(4):
        key = tmp_path / f"k{i}.txt"
        proc = spawn(cli, "recovery-key", "rotate", "--recovery-key-file", str(key))
        time.sleep(rng.uniform(0.3, 1.0) * took)
        proc.send_signal(signal.SIGKILL)
        finish(proc)
        cli.run("snapshots")  # the password always opens the repository
        if key.exists():  # a file is only ever written for the key the repository holds
            cli.run("recovery-key", "verify", "--recovery-key-file", str(key))
        else:
            cli.run("recovery-key", "rotate", "--recovery-key-file", str(key))
    cli.run(
        "recover",
        "--recovery-key-file",
        str(key),
        "--new-password-file",
        str(write(tmp_path / "np", NEW_PASSWORD)),
    )
    cli.env["STRONGROOM_PASSWORD"] = NEW_PASSWORD
    cli.run("check", "--read-data")
