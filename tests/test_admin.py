"""`strongroom-admin`: the user commands, the menu, and the data folder they manage.

Everything goes through the real program in subprocesses against a temporary data folder (the
menu through a pseudo-terminal); the parsers and the TLS helpers are also tested directly.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Result
from strongroom import crypto, keys
from strongroom.errors import StrongroomError, UsageError
from strongroom.fingerprint import fingerprint_of_der, normalize_fingerprint
from strongroom.server.datadir import DataDir
from strongroom.server.tls import certificate_fingerprint, ensure_certificate, server_ssl_context
from strongroom.server.userdb import (
    SCHEMA_VERSION,
    User,
    UserDB,
    parse_quota,
    parse_size,
    validate_username,
)
from terminal import Terminal

PW = "first-Pa55word-for-the-admin-tests"
FINGERPRINT = re.compile(r"SHA256:[0-9a-f]{64}")


def admin_exe() -> list[str]:
    exe = shutil.which("strongroom-admin", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "strongroom.admin.cli"]


class Admin:
    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.datadir = DataDir(self.data)
        self.env = {
            **os.environ,
            "STRONGROOM_DATA_DIR": str(self.data),
            "STRONGROOM_INSECURE_TEST_KDF": "1",
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
        for name in ("STRONGROOM_DEBUG", "STRONGROOM_TLS_CERT"):
            self.env.pop(name, None)

    def run(self, *args: str, input: str | None = None, check: bool = True) -> Result:
        proc = subprocess.run(
            [*admin_exe(), *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=input if input is not None else "",
            timeout=60,
        )
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"strongroom-admin {args} exited {proc.returncode}: {proc.stderr}")
        return res

    def add(self, name: str, *extra: str, password: str = PW, check: bool = True) -> Result:
        args = ("user", "add", "--password-stdin", *extra, "--", name)
        return self.run(*args, input=password + "\n", check=check)

    def users(self) -> dict[str, Any]:
        return {u["name"]: u for u in self.run("user", "list", "--json").json()}

    def row(self, name: str) -> User:
        db = UserDB(self.datadir.users_db)
        try:
            user = db.get(name)
        finally:
            db.close()
        assert user is not None
        return user


@pytest.fixture
def admin(tmp_path: Path) -> Admin:
    return Admin(tmp_path)


def one_line_error(res: Result, code: int) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("strongroom-admin: error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def password_matches(user: User, password: str) -> bool:
    pk = crypto.split_master(crypto.derive_master(password.encode(), user.salt, user.kdf))
    return crypto.constant_time_equal(keys.auth_hash(pk.auth_key), user.auth_hash)


# ---- user add / list ----------------------------------------------------------------------


def test_add_and_list(admin: Admin) -> None:
    res = admin.add("alice", "--directory", "/home/alice/Documents", "--quota", "50G")
    assert "user alice added" in res.stdout and "/home/alice/Documents" in res.stdout
    assert "new password" in res.stdout
    admin.add("bob", "--append-only")

    users = admin.users()
    assert list(users) == ["alice", "bob"]
    alice, bob = users["alice"], users["bob"]
    assert alice["directory"] == "/home/alice/Documents" and alice["quota"] == 50 * 1024**3
    assert alice["must_change_password"] is True and alice["append_only"] is False
    assert alice["last_backup"] is None and alice["has_keys"] is False
    assert bob["append_only"] is True and bob["quota"] is None and bob["directory"] == ""
    for u in users.values():
        assert not {"salt", "auth_hash", "keyfile", "kdf"} & set(u)

    table = admin.run("user", "list").stdout
    assert "alice" in table and "/home/alice/Documents" in table and "50.0 GiB" in table
    assert "never" in table and "2 user(s)" in table

    # The login verifier is derived from the password with the stored salt and the KDF cost.
    row = admin.row("alice")
    assert row.kdf == crypto.KdfParams(memory_kib=1024, iterations=1)
    assert password_matches(row, PW) and not password_matches(row, PW + "x")
    assert row.keyfile is None and re.fullmatch(r"[0-9a-f]{32}", row.storage_id)

    # Each user gets an empty pack store under a random name.
    storage = admin.datadir.storage_path(row.storage_id)
    index = storage / "index.sqlite"
    assert index.is_file() and (storage / "packs").is_dir()
    with sqlite3.connect(index) as db:
        meta = dict(db.execute("SELECT name, value FROM meta"))
    assert meta["repo_id"] == row.storage_id.encode()
    assert admin.row("bob").storage_id != row.storage_id


def test_data_folder_layout_and_modes(admin: Admin) -> None:
    admin.add("alice")
    d = admin.datadir
    for path in (d.root, d.tls_dir, d.storage_root):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for path in (d.secret_path, d.users_db):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = d.server_secret()
    assert len(secret) == 32
    d.ensure()
    assert d.server_secret() == secret
    with pytest.raises(ValueError):
        d.storage_path("../etc")
    with pytest.raises(ValueError):
        d.storage_path("A" * 32)
    d.secret_path.write_bytes(b"short")
    with pytest.raises(StrongroomError, match="damaged"):
        d.server_secret()


def test_duplicate_and_invalid_names(admin: Admin) -> None:
    admin.add("alice")
    assert "already exists" in one_line_error(admin.add("alice", check=False), 2)
    assert "already exists" in one_line_error(admin.add("ALICE", check=False), 2)
    for bad in (".hidden", "-dash", "with space", "é"):
        assert "invalid user name" in one_line_error(admin.add(bad, check=False), 2)
    one_line_error(admin.add("", check=False), 2)
    assert "relative" not in admin.users()
    res = admin.add("carol", "--directory", "relative/path", check=False)
    assert "absolute" in one_line_error(res, 2)
    assert "invalid size" in one_line_error(admin.add("carol", "--quota", "lots", check=False), 2)
    assert list(admin.users()) == ["alice"]


def test_password_sources(admin: Admin) -> None:
    # No terminal and no --password-stdin: a clear usage error, nothing created.
    res = admin.run("user", "add", "dave", input="x\n", check=False)
    assert "--password-stdin" in one_line_error(res, 2)
    res = admin.run("user", "add", "dave", "--password-stdin", input="\n", check=False)
    assert "no password" in one_line_error(res, 2)
    assert admin.users() == {}
    # Only the first line counts; a CRLF ending is not part of the password.
    admin.run("user", "add", "dave", "--password-stdin", input=f"{PW}\r\nsecond line\n")
    assert password_matches(admin.row("dave"), PW)


def test_no_password_in_data_folder(admin: Admin) -> None:
    first, second = "Unmistakable-Secret-One-7f3a", "Unmistakable-Secret-Two-9c1e"
    admin.add("alice", "--directory", "/home/alice", password=first)
    admin.run("user", "passwd", "alice", "--password-stdin", input=second + "\n")
    admin.run("fingerprint")
    files = [p for p in admin.data.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for path in files:
        data = path.read_bytes()
        for secret in (first, second):
            assert secret.encode() not in data, path
            assert secret.encode("utf-16-le") not in data, path


# ---- user set / passwd / delete -------------------------------------------------------------


def test_set(admin: Admin) -> None:
    admin.add("alice", "--quota", "1G")
    server_view = UserDB(admin.datadir.users_db)  # as a running server holds it open
    res = admin.run("user", "set", "alice", "--directory", "C:\\Users\\alice", "--append-only")
    assert "C:\\Users\\alice" in res.stdout and "append-only yes" in res.stdout
    u = admin.users()["alice"]
    assert u["directory"] == "C:\\Users\\alice" and u["append_only"] and u["quota"] == 1024**3
    seen = server_view.get("alice")  # no cache: the open database sees the change at once
    assert seen is not None and seen.append_only and seen.directory == "C:\\Users\\alice"
    server_view.close()
    admin.run("user", "set", "alice", "--quota", "1.5T")
    assert admin.users()["alice"]["quota"] == int(1.5 * 1024**4)
    admin.run("user", "set", "alice", "--quota", "none", "--no-append-only")
    u = admin.users()["alice"]
    assert u["quota"] is None and not u["append_only"] and u["directory"] == "C:\\Users\\alice"

    assert "no user" in one_line_error(
        admin.run("user", "set", "nobody", "--quota", "1G", check=False), 2
    )
    assert "nothing to change" in one_line_error(admin.run("user", "set", "alice", check=False), 2)
    one_line_error(admin.run("user", "set", "alice", "--quota", "0", check=False), 2)
    one_line_error(admin.run("user", "set", "alice", "--directory", "docs", check=False), 2)
    assert admin.users()["alice"]["quota"] is None


def test_passwd(admin: Admin) -> None:
    admin.add("alice")
    before = admin.row("alice")
    # The user's own password change (what the server does) stores their key file.
    keyfile = keys.create_keyfile(b"users-own", keys.RepoKeys.generate(), before.kdf)
    db = UserDB(admin.datadir.users_db)
    db.set_keyfile(before.id, keyfile, generation=before.generation)
    db.close()
    changed = admin.row("alice")
    assert not changed.must_change_password and changed.keyfile == keyfile.to_json().encode()
    assert password_matches(changed, "users-own")

    res = admin.run("user", "passwd", "alice", "--password-stdin", input="reset-by-admin\n")
    assert "new password at their next login" in res.stdout
    assert "previous password" in res.stdout
    after = admin.row("alice")
    assert after.must_change_password and after.keyfile == changed.keyfile
    assert after.salt != changed.salt
    assert password_matches(after, "reset-by-admin") and not password_matches(after, "users-own")
    assert admin.users()["alice"]["has_keys"] is True

    res = admin.run("user", "passwd", "nobody", "--password-stdin", input="x\n", check=False)
    assert "no user nobody" in one_line_error(res, 2)


def test_delete(admin: Admin) -> None:
    admin.add("alice")
    admin.add("bob")
    alice, bob = admin.row("alice"), admin.row("bob")
    alice_dir = admin.datadir.storage_path(alice.storage_id)
    bob_dir = admin.datadir.storage_path(bob.storage_id)

    # Without a terminal, deleting needs --yes.
    assert "--yes" in one_line_error(admin.run("user", "delete", "alice", check=False), 2)
    assert "alice" in admin.users()

    res = admin.run("user", "delete", "alice", "--yes")
    assert "deleted" in res.stdout and str(alice_dir) in res.stdout
    assert alice_dir.is_dir() and "alice" not in admin.users()

    res = admin.run("user", "delete", "bob", "--yes", "--purge-data")
    assert "deleted" in res.stdout and not bob_dir.exists()
    assert admin.users() == {}
    assert "no user" in one_line_error(admin.run("user", "delete", "bob", "--yes", check=False), 2)
    # The name is free again, with new storage.
    admin.add("alice")
    assert admin.row("alice").storage_id != alice.storage_id


# ---- errors ---------------------------------------------------------------------------------


def test_usage_and_environment_errors(admin: Admin, tmp_path: Path) -> None:
    one_line_error(admin.run("--bogus", check=False), 2)
    one_line_error(admin.run("user", "add", check=False), 2)
    one_line_error(admin.run("user", "frobnicate", check=False), 2)
    assert admin.run("--help").stdout.startswith("Usage: strongroom-admin")
    assert not admin.data.exists()  # --help creates nothing
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = admin.run("--data-dir", str(blocker / "data"), "user", "list", check=False)
    one_line_error(res, 1)
    res = admin.run("--data-dir", str(blocker), "user", "list", check=False)
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr
    # A database written by a newer version is refused, not misread.
    admin.add("alice")
    with sqlite3.connect(admin.datadir.users_db) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert "newer" in one_line_error(admin.run("user", "list", check=False), 1)


# ---- fingerprint and TLS --------------------------------------------------------------------


def test_fingerprint(admin: Admin) -> None:
    first = admin.run("fingerprint").stdout.strip()
    assert FINGERPRINT.fullmatch(first)
    assert admin.run("fingerprint").stdout.strip() == first
    assert certificate_fingerprint(admin.datadir.cert_path) == first
    assert stat.S_IMODE(admin.datadir.key_path.stat().st_mode) == 0o600
    ensure_certificate(admin.datadir)  # existing pair: unchanged
    assert certificate_fingerprint(admin.datadir.cert_path) == first
    other = admin.run("fingerprint", "--cert", str(admin.datadir.cert_path)).stdout.strip()
    assert other == first
    res = admin.run("fingerprint", "--cert", str(admin.data / "missing.pem"), check=False)
    one_line_error(res, 1)


def test_fingerprint_race(tmp_path: Path) -> None:
    """Several processes making the certificate at once agree on one."""
    admin = Admin(tmp_path)
    procs = [
        subprocess.Popen(
            [*admin_exe(), "fingerprint"], env=admin.env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert outputs == {certificate_fingerprint(admin.datadir.cert_path)}
    assert sorted(p.name for p in admin.datadir.tls_dir.iterdir()) == ["cert.pem", "key.pem"]


def test_tls_handshake_with_the_generated_certificate(tmp_path: Path) -> None:
    datadir = DataDir(tmp_path / "data")
    datadir.ensure()
    ensure_certificate(datadir, ["backup.example.org", "192.0.2.7"])
    server_ctx = server_ssl_context(datadir.cert_path, datadir.key_path)
    client_ctx = ssl.create_default_context(cafile=str(datadir.cert_path))
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.sendall(b"hello")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname="backup.example.org") as c:
            assert c.recv(5) == b"hello"
            der = c.getpeercert(binary_form=True)
            assert c.version() in ("TLSv1.3", "TLSv1.2")
    finally:
        thread.join(10)
    assert not errors
    assert der is not None
    assert fingerprint_of_der(der) == certificate_fingerprint(datadir.cert_path)

    with pytest.raises(UsageError):
        server_ssl_context(datadir.cert_path, tmp_path / "nope.pem")
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(UsageError):
        server_ssl_context(datadir.cert_path, tmp_path / "junk.pem")


def test_normalize_fingerprint() -> None:
    hexdigits = "0123456789abcdef" * 4
    canonical = "SHA256:" + hexdigits
    colons = ":".join(hexdigits[i : i + 2] for i in range(0, 64, 2))
    for text in (canonical, hexdigits.upper(), "sha256:" + colons.upper(), f"  {colons} "):
        assert normalize_fingerprint(text) == canonical
    for bad in ("", "SHA256:", hexdigits[:-1], hexdigits + "0", "g" * 64, "MD5:" + hexdigits):
        with pytest.raises(UsageError):
            normalize_fingerprint(bad)


# ---- parsers --------------------------------------------------------------------------------

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([*sorted(_NAME_CHARS), " ", "/", "é", "\n", ":"])))
def test_validate_username(name: str) -> None:
    ok = 1 <= len(name) <= 64 and set(name) <= _NAME_CHARS and name[0] not in ".-"
    if ok:
        validate_username(name)
    else:
        with pytest.raises(UsageError):
            validate_username(name)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**40),
    st.sampled_from(["", "K", "M", "G", "T"]),
    st.sampled_from(["", "iB", "B"]),
)
def test_parse_size_units(n: int, unit: str, suffix: str) -> None:
    text = f"{n}{unit}{suffix if unit else ''}"
    factor = 1024 ** ["", "K", "M", "G", "T"].index(unit)
    if n * factor >= 2**63:
        with pytest.raises(UsageError, match="too large"):
            parse_size(text)
        return
    assert parse_size(text) == n * factor
    assert parse_size(text.lower()) == n * factor
    assert parse_size(f" {n} {unit}") == n * factor


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_parse_size_never_crashes(text: str) -> None:
    try:
        value = parse_size(text)
    except UsageError:
        return
    assert 0 <= value < 2**63


def test_parse_size_examples() -> None:
    assert parse_size("500M") == 500 * 1024**2
    assert parse_size("10GiB") == parse_size("10G") == 10 * 1024**3
    assert parse_size("1.5T") == 3 * 1024**4 // 2
    assert parse_size("1024") == 1024
    for bad in ("", "G", "-1G", "1.5.2G", "1e9", "10 X", "9" * 50, "99999999E"):
        with pytest.raises(UsageError):
            parse_size(bad)
    assert parse_quota("none") is None and parse_quota("2G") == 2 * 1024**3
    with pytest.raises(UsageError):
        parse_quota("0")


# ---- the database ---------------------------------------------------------------------------


def test_userdb_calls(tmp_path: Path) -> None:
    db = UserDB(tmp_path / "users.sqlite")
    kdf = crypto.KdfParams(memory_kib=1024, iterations=1)
    u = db.add("Alice", directory="/home/alice", salt=b"s" * 16, kdf=kdf, auth_hash=b"h" * 32)
    assert db.get("alice") == u and db.get_by_id(u.id) == u and db.list() == [u]
    assert u.must_change_password and u.keyfile is None and not u.append_only
    db.record_backup(u.id, 123, "ok")
    after = db.get_by_id(u.id)
    assert after is not None and (after.last_backup_ns, after.last_backup_result) == (123, "ok")
    changed = db.update("alice", quota=10, append_only=True)
    assert (changed.quota, changed.append_only, changed.directory) == (10, True, "/home/alice")
    assert db.update("alice", quota=None).quota is None
    with pytest.raises(UsageError):
        db.update("nobody", quota=1)
    deleted = db.delete("ALICE")
    assert deleted is not None and deleted.id == u.id and deleted.name == "Alice"
    assert db.get("alice") is None and db.delete("alice") is None
    with pytest.raises(StrongroomError):
        db.set_login(u.id, salt=b"t" * 16, kdf=kdf, auth_hash=b"i" * 32, must_change=True)
    db.record_backup(u.id, 456, "ok")  # a deleted user: nothing to record, no error
    db.close()
    with sqlite3.connect(tmp_path / "users.sqlite") as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_parallel_processes_share_the_database(admin: Admin) -> None:
    names = [f"user{i}" for i in range(8)]
    procs = [
        subprocess.Popen(
            [*admin_exe(), "user", "add", name, "--password-stdin"],
            env=admin.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{PW}\n".encode())
        proc.stdin.close()
    for proc in procs:
        proc.wait(60)
        assert proc.stderr is not None
        assert proc.returncode == 0, proc.stderr.read()
        for stream in (proc.stdout, proc.stderr):
            assert stream is not None
            stream.close()
    assert sorted(admin.users()) == names
    with sqlite3.connect(admin.datadir.users_db) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = {admin.row(n).storage_id for n in names}
    assert len(ids) == len(names)
    assert sorted(p.name for p in admin.datadir.storage_root.iterdir()) == sorted(ids)


# ---- the interactive menu, through a pseudo-terminal ----------------------------------------


def test_menu(admin: Admin) -> None:
    secret = "Menu-Secret-Pass-4242"
    t = Terminal(admin_exe(), admin.env)
    t.answer("choice: ", "9")
    t.expect("unknown choice")
    t.answer("choice: ", "1")
    t.answer("user name (Enter to cancel): ", "bad name")
    t.expect("invalid user name")
    t.answer("user name (Enter to cancel): ", "dave")
    t.answer("password: ", "first-try")
    t.answer("password (again): ", "second-try")
    t.expect("differ")
    t.answer("password: ", secret)
    t.answer("password (again): ", secret)
    t.answer("(Enter for none): ", "/home/dave/Documents")
    t.answer("quota (e.g. 50G, Enter for none): ", "lots")
    t.expect("invalid size")
    t.answer("quota (e.g. 50G, Enter for none): ", "10G")
    t.answer("append-only? [y/N]: ", "y")
    t.expect("user dave added")
    t.answer("choice: ", "3")
    shown = t.expect("1 user(s)")
    assert "dave" in shown and "/home/dave/Documents" in shown and "10.0 GiB" in shown

    # A second user, added while a command-line listing proves the change is visible at once.
    t.answer("choice: ", "1")
    t.answer("user name (Enter to cancel): ", "dave")
    t.expect("already exists")
    t.answer("user name (Enter to cancel): ", "")
    t.expect("cancelled")
    users = admin.users()
    assert users["dave"]["quota"] == 10 * 1024**3 and users["dave"]["append_only"]
    dave_storage = admin.datadir.storage_path(admin.row("dave").storage_id)
    assert (dave_storage / "index.sqlite").is_file()
    assert password_matches(admin.row("dave"), secret)

    t.answer("choice: ", "2")
    t.answer("user to delete (Enter to cancel): ", "dave")
    t.answer("delete user dave? [y/N]: ", "y")
    t.answer("stored backups for good? [y/N]: ", "y")
    t.expect("user dave deleted")
    t.answer("choice: ", "3")
    t.expect("0 user(s)")
    t.answer("choice: ", "4")
    assert t.finish() == 0
    assert secret not in t.seen and "first-try" not in t.seen  # passwords are never echoed
    assert admin.users() == {} and not dave_storage.exists()


def test_menu_ends_at_end_of_input(admin: Admin) -> None:
    proc = subprocess.run(
        admin_exe(), env=admin.env, input="3\n", capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "0 user(s)" in proc.stdout


def test_commands_on_a_terminal(admin: Admin) -> None:
    t = Terminal([*admin_exe(), "user", "add", "frank"], admin.env)
    t.answer("New password for frank: ", "typed-secret")
    t.answer("Repeat it: ", "typed-secret")
    t.expect("user frank added")
    assert t.finish() == 0 and "typed-secret" not in t.seen
    assert password_matches(admin.row("frank"), "typed-secret")

    t = Terminal([*admin_exe(), "user", "add", "gina"], admin.env)
    t.answer("New password for gina: ", "one")
    t.answer("Repeat it: ", "two")
    assert t.finish() == 1 and "differ" in t.seen and "gina" not in admin.users()

    t = Terminal([*admin_exe(), "user", "delete", "frank"], admin.env)
    t.answer("delete user frank? [y/N]: ", "n")
    assert t.finish() == 1 and "nothing deleted" in t.seen
    t = Terminal([*admin_exe(), "user", "delete", "frank", "--purge-data"], admin.env)
    t.answer("delete user frank and all their stored backups? [y/N]: ", "y")
    assert t.finish() == 0
    assert admin.users() == {} and not any(admin.datadir.storage_root.iterdir())


def test_ctrl_c_at_password_prompt(admin: Admin) -> None:
    t = Terminal([*admin_exe(), "user", "add", "erin"], admin.env)
    t.expect("New password for erin: ")
    t.proc.send_signal(signal.SIGINT)
    assert t.finish() == 130
    assert "interrupted" in t.seen and "Traceback" not in t.seen
    assert admin.users() == {}
