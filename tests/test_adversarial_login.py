"""Logins under attack (issue 8, findings 2-5), against a real server with the real client.

- A compromised server (or an admin with the database) hands out a cheap Argon2id cost, plants
  keys it knows at the forced password change, swaps or removes an account's keys: the real
  client refuses before sending anything derived from the password, or before using the keys.
- A session opened with a stolen password ends the moment the admin resets it.
- Names are folded once (enumeration, throttle evasion); attempts are serialised and lock out;
  connection slots are bounded per address (TLS handshakes included) and per account.

The "compromised server" edits the server's own database, exactly as its admin could.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import PASSWORD
from hostile_server import ProxiedCli, Request, Rewrite, serve_proxy
from netfixtures import ADMIN_PASSWORD, NetCli, Server
from strongroom import crypto, keys
from strongroom.protocol import messages as m
from strongroom.server.accounts import login_material
from strongroom.server.throttle import FailureThrottle, LoginRefused, address_group
from test_network_crash import one_line_error
from test_server_hostile import (
    HOST,
    IO_TIMEOUT,
    Raw,
    assert_no_tracebacks,
    connect,
    is_error,
    list_snapshots,
)

pytestmark = pytest.mark.timeout(180)

SECURE = {"STRONGROOM_INSECURE_TEST_KDF": ""}  # the client's real floor: 64 MiB, 3 passes


def users_db(server: Server) -> sqlite3.Connection:
    """The server's user database, opened as its admin (or an intruder) could."""
    return sqlite3.connect(server.data_dir / "users.sqlite", isolation_level=None, timeout=30)


def row(server: Server, name: str) -> dict[str, object]:
    db = users_db(server)
    try:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return dict(found)
    finally:
        db.close()


def set_columns(server: Server, name: str, **values: object) -> None:
    db = users_db(server)
    try:
        assigns = ", ".join(f"{k} = ?" for k in values)
        db.execute(f"UPDATE users SET {assigns} WHERE name = ?", (*values.values(), name))
    finally:
        db.close()


def logins_logged(server: Server, user: str) -> int:
    log = server.log.read_text()
    return log.count(f"login ok for user {user!r}") + log.count(f"login failed for user {user!r}")


# ---- finding 2: the server must not choose a cheap key derivation ------------------------------


def test_a_weak_kdf_from_the_server_is_refused_before_anything_is_sent(
    server: Server, tmp_path: Path
) -> None:
    # An account whose login was set at 1 MiB / 1 pass (the old test knob, or a hostile
    # server): the client's real floor refuses it, before the Argon2id run and the LOGIN.
    server.admin("user", "add", "weak", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert row(server, "weak")["kdf_memory_kib"] == 1024
    cli = NetCli(tmp_path / "client-weak", server, "weak", ADMIN_PASSWORD)
    before = logins_logged(server, "weak")
    res = cli.run("snapshots", check=False, env=SECURE)
    one_line_error(res, "weak password hashing", "1 MiB, 1 pass", "64 MiB, 3 passes")
    time.sleep(0.2)
    assert logins_logged(server, "weak") == before  # no LOGIN reached the server
    assert_no_tracebacks(server)


def full_cost_account(
    server: Server, name: str, tmp_path: Path, client_env: dict[str, str]
) -> NetCli:
    """An account the admin made at the full cost (no test knob), whose owner then chose their
    own password with a client in `client_env`."""
    server.env["STRONGROOM_INSECURE_TEST_KDF"] = ""
    try:
        server.admin("user", "add", name, "--password-stdin", input=ADMIN_PASSWORD + "\n")
    finally:
        server.env["STRONGROOM_INSECURE_TEST_KDF"] = "1"
    cli = NetCli(tmp_path / f"client-{name}", server, name, PASSWORD)
    newpw = tmp_path / f"newpw-{name}"
    newpw.write_text(PASSWORD + "\n")
    cli.run(
        "passwd",
        "--new-password-file",
        str(newpw),
        env={**client_env, "STRONGROOM_PASSWORD": ADMIN_PASSWORD},
    )
    return cli


def test_a_cost_lower_than_last_time_is_refused(server: Server, tmp_path: Path) -> None:
    # The admin makes the account at full cost (no test knob) and the user logs in with the
    # real floor: this computer remembers 64 MiB / 3 passes for the account.
    erin = full_cost_account(server, "erin", tmp_path, SECURE)
    assert row(server, "erin")["kdf_memory_kib"] == 65536
    # A routine admin reset keeps the account's cost (even with the test knob on the admin).
    server.admin("user", "passwd", "erin", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert row(server, "erin")["kdf_memory_kib"] == 65536
    # A compromised server lowers the cost (a new salt and verifier at 1 MiB, 1 pass): even a
    # client whose own floor is lower refuses, because it remembers what this account used.
    cheap = crypto.KdfParams(memory_kib=1024, iterations=1)
    salt, verifier = login_material(ADMIN_PASSWORD.encode(), cheap)
    set_columns(
        server, "erin", salt=salt, kdf_memory_kib=1024, kdf_iterations=1, auth_hash=verifier
    )
    before = logins_logged(server, "erin")
    res = erin.run("snapshots", check=False, env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD})
    one_line_error(res, "weaker password hashing than at your last login", "--accept-new-keys")
    assert logins_logged(server, "erin") == before
    pins = json.loads((tmp_path / "client-erin" / "config" / "client.json").read_text())
    assert pins["accounts"][f"{server.address}|erin"]["memory_kib"] == 65536


def test_key_files_are_wrapped_with_the_clients_own_cost(server: Server, tmp_path: Path) -> None:
    """The key file the client sends at the forced change is never cheaper than the cost the
    server asked for, even with the client's test floor (1 MiB)."""
    full_cost_account(server, "fred", tmp_path, {})
    keyfile = json.loads(bytes(row(server, "fred")["keyfile"]))  # type: ignore[arg-type]
    assert (keyfile["memory_kib"], keyfile["iterations"]) == (65536, 3)


# ---- finding 3: keys planted or swapped by whoever controls the server ----------------------


def planted_keyfile(password: str) -> bytes:
    kdf = crypto.KdfParams(memory_kib=1024, iterations=1)
    return keys.create_keyfile(password.encode(), keys.RepoKeys.generate(), kdf).to_json().encode()


def test_keys_planted_under_the_admins_password_are_refused(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret.txt").write_text("only alice may read this\n")
    alice.backup(src)
    genuine = row(server, "alice")["keyfile"]
    # The admin resets alice's password and plants a key file that opens with that password.
    server.admin("user", "passwd", "alice", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    planted = planted_keyfile(ADMIN_PASSWORD)
    set_columns(server, "alice", keyfile=planted)
    newpw = tmp_path / "newpw"
    newpw.write_text("alice's next password\n")
    oldpw = tmp_path / "oldpw"
    oldpw.write_text(PASSWORD + "\n")
    res = alice.run(
        "passwd",
        "--new-password-file",
        str(newpw),
        "--old-password-file",
        str(oldpw),
        check=False,
        env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD},
    )
    one_line_error(res, "open with the password the admin set", "planted")
    after = row(server, "alice")
    assert after["keyfile"] == planted and after["must_change_password"] == 1  # nothing sent
    # With the genuine key file back, the same command re-wraps alice's own keys.
    set_columns(server, "alice", keyfile=genuine)
    alice.run(
        "passwd",
        "--new-password-file",
        str(newpw),
        "--old-password-file",
        str(oldpw),
        env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD},
    )
    alice.run(
        "restore",
        "latest",
        "--target",
        str(tmp_path / "out"),
        env={"STRONGROOM_PASSWORD": "alice's next password"},
    )
    assert (tmp_path / "out" / "src" / "secret.txt").read_text() == "only alice may read this\n"


def test_swapped_or_removed_keys_are_refused_loudly(server: Server, tmp_path: Path) -> None:
    alice = server.add_user("alice", tmp_path)
    other = server.add_user("alice2", tmp_path)  # the same password on another account
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x\n")
    alice.backup(src)
    other.run("snapshots")
    # The server hands alice the other account's login and keys: the password opens them,
    # but they are not the keys this computer pinned for alice.
    stolen = row(server, "alice2")
    columns = ("salt", "kdf_memory_kib", "kdf_iterations", "kdf_lanes", "auth_hash", "keyfile")
    genuine = {c: row(server, "alice")[c] for c in columns}
    set_columns(server, "alice", **{c: stolen[c] for c in columns})
    res = alice.run("backup", str(src), check=False)
    one_line_error(res, "DIFFERENT KEYS", "--accept-new-keys")
    assert len(list_snapshots_of(server, "alice")) == 1  # nothing was committed
    # Keys removed, with a forced password change: this computer knew keys, so it refuses to
    # make new ones (which would lock alice out of her backups).
    set_columns(server, "alice", **genuine)
    server.admin("user", "passwd", "alice", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    set_columns(server, "alice", keyfile=None)
    newpw = tmp_path / "newpw"
    newpw.write_text(PASSWORD + "\n")
    res = alice.run(
        "passwd",
        "--new-password-file",
        str(newpw),
        check=False,
        env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD},
    )
    one_line_error(res, "holds no keys for this account", "--accept-new-keys")
    # The admin confirms they recreated the account: --accept-new-keys forgets the pins.
    res = alice.run(
        "login",
        "--server",
        server.address,
        "--user",
        "alice",
        "--accept-new-keys",
        check=False,
        env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD},
    )
    assert "Traceback" not in res.stderr
    pins = tmp_path / "client-alice" / "config" / "client.json"
    old_check = json.loads(pins.read_text())["accounts"].get(f"{server.address}|alice")
    assert old_check is None  # forgotten
    alice.run(
        "passwd", "--new-password-file", str(newpw), env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD}
    )
    assert row(server, "alice")["keyfile"] is not None
    assert json.loads(pins.read_text())["accounts"][f"{server.address}|alice"]["keys"]


def list_snapshots_of(server: Server, user: str) -> list[str]:
    with connect(server, user) as raw:
        return list_snapshots(raw)


# ---- finding 4: a stolen password's session ends with the reset -----------------------------


def test_a_password_reset_ends_the_thiefs_session_at_once(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    src = tmp_path / "src"  # not tmp_path itself: the server's log there keeps changing
    src.mkdir()
    (src / "f.txt").write_text("x")
    snap = alice.backup(src)["snapshot"]
    with connect(server, "alice") as thief:
        assert list_snapshots(thief) == [snap]
        server.admin("user", "passwd", "alice", "--password-stdin", input=ADMIN_PASSWORD + "\n")
        # The server was told through its control socket: the session ends without a request.
        answers = thief.until_closed()
        assert [msg.code for _r, msg in answers] == [m.ErrorCode.SESSION_ENDED], answers
    with Raw(server.port) as raw:
        raw.hello()
        assert is_error(raw.login("alice", PASSWORD), m.ErrorCode.AUTH_FAILED)
    assert_no_tracebacks(server)


def test_without_the_control_socket_the_next_request_ends_the_session(
    server: Server, alice: NetCli
) -> None:
    """Even when the admin cannot reach the server, the account's generation ends the stolen
    session at its next request, so it cannot replace the keys under the forced change."""
    with connect(server, "alice") as thief:
        (server.data_dir / "control.sock").unlink()  # the admin tool cannot reach the server
        server.admin("user", "passwd", "alice", "--password-stdin", input=ADMIN_PASSWORD + "\n")
        junk = keys.create_keyfile(
            b"thief's password", keys.RepoKeys.generate(), crypto.KdfParams(1024, 1)
        )
        thief.send(m.SetKeyFile(junk.to_json().encode()))
        answers = thief.until_closed()
        assert [msg.code for _r, msg in answers] == [m.ErrorCode.SESSION_ENDED], answers
    assert row(server, "alice")["keyfile"] != junk.to_json().encode()
    assert row(server, "alice")["must_change_password"] == 1


def test_set_keyfile_under_must_change_needs_the_admin_password_session(
    server: Server, alice: NetCli
) -> None:
    """A session that logged in with the user's own password cannot set the key file while
    the must-change flag is set (the flag set without a generation change: as a crash
    between two admin writes, or a future code path, could leave it)."""
    with connect(server, "alice") as own:
        set_columns(server, "alice", must_change_password=1)
        junk = keys.create_keyfile(
            b"x", keys.RepoKeys.generate(), crypto.KdfParams(1024, 1)
        ).to_json()
        refused = own.call(m.SetKeyFile(junk.encode()))
        assert is_error(refused, m.ErrorCode.FORBIDDEN), refused
    assert row(server, "alice")["keyfile"] != junk.encode()


def test_a_password_change_ends_the_users_other_sessions(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    with connect(server, "alice") as other:
        newpw = tmp_path / "newpw"
        newpw.write_text("another password\n")
        alice.run("passwd", "--new-password-file", str(newpw))
        answers = other.until_closed()
        assert [msg.code for _r, msg in answers] == [m.ErrorCode.SESSION_ENDED], answers


# ---- finding 5: names, throttling, connection slots ----------------------------------------


def auth_params(server: Server, name: str) -> m.Message:
    with connect(server) as raw:
        return raw.call(m.AuthParamsRequest(name))


def test_every_spelling_of_a_name_gets_one_answer(server: Server, alice: NetCli) -> None:
    # An existing and an unknown name: every spelling gets the same answer, so comparing the
    # answers for "bob" and "BOB" no longer tells whether bob exists.
    for name in ("alice", "nobody-here"):
        spellings = {name, name.upper(), name.title(), name[:3].upper() + name[3:]}
        answers = {auth_params(server, s) for s in spellings}
        assert len(answers) == 1, (name, answers)
    # A non-ASCII look-alike (KELVIN SIGN for K) is another name, as SQLite compares them: it
    # gets its own fake salt, different from the ASCII name's answer whether that exists or not.
    assert auth_params(server, "\u212alice") != auth_params(server, "klice")
    assert auth_params(server, "\u212aate") != auth_params(server, "kate")


def _login_at(server: Server, user: str, key: bytes, source: str = HOST) -> m.Message:
    raw = Raw(server.port, timeout=60, source=source)
    try:
        raw.hello()
        return raw.call(m.Login(user, key))
    finally:
        raw.close()


def _wrong_key(server: Server, user: str) -> bytes:
    with connect(server) as raw:
        return raw.auth_key(user, "a wrong guess")


@pytest.fixture
def fast_throttle(tmp_path: Path) -> Server:
    server = Server(
        tmp_path / "server-data",
        env={
            "STRONGROOM_LOGIN_MAX_DELAY": "0.4",
            "STRONGROOM_LOGIN_LOCKOUT_AFTER": "6",
            "STRONGROOM_LOGIN_LOCKOUT": "30",
        },
    ).start()
    yield server
    server.kill()


def test_guesses_in_parallel_are_serialised_and_then_locked_out(
    fast_throttle: Server, tmp_path: Path
) -> None:
    server = fast_throttle
    server.add_user("alice", tmp_path)
    server.add_user("bob", tmp_path, password="bob's password")
    wrong = _wrong_key(server, "alice")
    names = ["alice", "ALICE", "aLIce", "Alice", "alicE", "ALIce", "alICE", "aliCE"]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda n: _login_at(server, n, wrong), names))
    took = time.monotonic() - started
    codes = sorted(a.code for a in answers if isinstance(a, m.Error))
    # Every spelling counts for alice: 6 failures, then the account is locked and the other
    # attempts are refused without a password check.
    assert codes == [m.ErrorCode.AUTH_FAILED] * 6 + [m.ErrorCode.RATE_LIMITED] * 2, answers
    # One at a time: the 4th, 5th and 6th answers waited 0.4 s each after the earlier ones
    # (all at once, as before, they would have come back together at once).
    assert took >= 1.1, took
    # Locked: even the right password waits for the lockout to pass (a clear message).
    right = Raw(server.port)
    try:
        right.hello()
        locked = right.call(m.Login("alice", right.auth_key("alice", PASSWORD)))
    finally:
        right.close()
    assert is_error(locked, m.ErrorCode.RATE_LIMITED) and "try again" in locked.message
    # This address is locked too (it failed as often); another address logs into another
    # account as usual.
    other = Raw(server.port, source="127.0.0.2")
    try:
        other.hello()
        ok = other.call(m.Login("bob", other.auth_key("bob", "bob's password")))
    finally:
        other.close()
    assert isinstance(ok, m.LoginOk)
    assert "locked out" in server.log.read_text()
    assert_no_tracebacks(server)


def test_own_account_success_does_not_reset_the_address(
    fast_throttle: Server, tmp_path: Path
) -> None:
    server = fast_throttle
    server.add_user("alice", tmp_path)
    server.add_user("mallory", tmp_path, password="mallory's password")
    wrong = _wrong_key(server, "alice")
    with connect(server) as raw:
        mine = raw.auth_key("mallory", "mallory's password")
    codes = []
    for i in range(6):
        codes.append(_login_at(server, "alice", wrong))
        ok = _login_at(server, "mallory", mine)
        if i < 5:  # succeeds between the guesses (the 6th failure has locked the address)
            assert isinstance(ok, m.LoginOk), ok
    # The 6 failures from this address locked it, although mallory's logins succeeded
    # between them (before, each success wiped the address's count).
    locked = _login_at(server, "mallory", mine)
    assert is_error(locked, m.ErrorCode.RATE_LIMITED), locked


def test_unauthenticated_connections_are_bounded_per_address(tmp_path: Path) -> None:
    server = Server(
        tmp_path / "server-data", env={"STRONGROOM_MAX_UNAUTHENTICATED_PER_ADDRESS": "3"}
    ).start()
    hogs: list[socket.socket] = []
    try:
        server.add_user("alice", tmp_path)
        # Three bare TCP connections that never even start TLS hold this address's slots.
        for _ in range(3):
            hogs.append(socket.create_connection((HOST, server.port), timeout=IO_TIMEOUT))
        time.sleep(0.3)
        refused = Raw(server.port)
        try:
            answers = refused.until_closed()
        finally:
            refused.close()
        assert [msg.code for _r, msg in answers] == [m.ErrorCode.BUSY], answers
        assert "have not logged in" in answers[0][1].message  # type: ignore[attr-defined]
        # Another address is served as usual.
        other = Raw(server.port, source="127.0.0.2")
        try:
            assert isinstance(other.hello(), m.Welcome)
            assert isinstance(other.login("alice"), m.LoginOk)
        finally:
            other.close()
        for hog in hogs:
            hog.close()
        hogs.clear()
        deadline = time.monotonic() + 10
        while True:  # the slots come back once the hogs are gone
            with Raw(server.port) as raw:
                raw.send(m.Hello(m.PROTOCOL_VERSION, "test"))
                got = raw.recv()
                if got is not None and isinstance(got[1], m.Welcome):
                    break
            assert time.monotonic() < deadline, "the slots did not come back"
            time.sleep(0.1)
        assert_no_tracebacks(server)
    finally:
        for hog in hogs:
            hog.close()
        server.kill()


def test_connections_are_bounded_per_account(tmp_path: Path) -> None:
    server = Server(
        tmp_path / "server-data", env={"STRONGROOM_MAX_CONNECTIONS_PER_USER": "2"}
    ).start()
    try:
        server.add_user("alice", tmp_path)
        bob = server.add_user("bob", tmp_path, password="bob's password")
        with connect(server, "alice"), connect(server, "alice"):
            with Raw(server.port) as third:
                third.hello()
                third.send(m.Login("alice", third.auth_key("alice", PASSWORD)))
                answers = third.until_closed()
            assert [msg.code for _r, msg in answers] == [m.ErrorCode.BUSY], answers
            bob.run("snapshots")  # other accounts are served
        with connect(server, "alice"):  # a slot is free again
            pass
        assert_no_tracebacks(server)
    finally:
        server.kill()


# ---- the throttle on its own -----------------------------------------------------------------


def test_throttle_rules() -> None:
    async def scenario() -> None:
        t = FailureThrottle(base_delay=0.01, max_delay=0.02, lockout_after=4, lockout_base=0.2)
        for _ in range(3):
            async with t.attempt("alice", "10.0.0.1") as a:
                a.failed()
        async with t.attempt("alice", "10.0.0.2") as a:  # another address: the name counts
            a.failed()
        with pytest.raises(LoginRefused) as first:  # 4 failures: locked
            async with t.attempt("alice", "10.0.0.3"):
                pass
        assert 0.1 < first.value.retry_after <= 0.2
        await asyncio.sleep(0.25)
        async with t.attempt("alice", "10.0.0.3") as a:  # the lockout passed
            a.succeeded()
        # The success cleared the name, not the address that failed 3 times.
        assert t.failures("u:alice") == 0 and t.failures("a:10.0.0.1") == 3
        # Escalation: a key's second lockout lasts twice as long as its first.
        for _ in range(8):
            with contextlib.suppress(LoginRefused):
                async with t.attempt("mallory", "10.0.0.9") as a:
                    a.failed()
            await asyncio.sleep(0.21 if t.failures("u:mallory") == 4 else 0)
        with pytest.raises(LoginRefused) as second:
            async with t.attempt("mallory", "10.0.0.8"):
                pass
        assert second.value.retry_after > 0.3

    asyncio.run(scenario())
    asyncio.run(_escalation_outlives_the_quiet_period())
    asyncio.run(_the_owner_at_a_known_address_is_not_locked_out())
    asyncio.run(_a_flood_of_names_does_not_evict_a_lockout())
    assert address_group("2001:db8::1") == address_group("2001:db8:0:ff::1") == "2001:db8::/56"
    assert address_group("::ffff:10.1.2.3") == "10.1.2.3"
    assert address_group("10.1.2.3") != address_group("10.1.2.4")


# ---- the same attacks from a server the attacker runs (tampering TLS proxy) ----------------


def test_proxy_weak_kdf_gets_no_login(server: Server, alice: NetCli) -> None:
    def weaken(msg: m.Message, request: Request | None) -> list[m.Message | bytes]:
        if isinstance(msg, m.AuthParams):
            return [dataclasses.replace(msg, memory_kib=8, iterations=1, lanes=1)]
        return [msg]

    with serve_proxy(server, Rewrite(on_response=weaken)) as proxy:
        victim = ProxiedCli(alice, proxy)
        res = victim.run("snapshots", check=False, env=SECURE)
        one_line_error(res, "weak password hashing", "Nothing derived from your password")
        assert proxy.connections, "the client never connected"
        sent = proxy.sent_types()
        assert "AuthParamsRequest" in sent and "Login" not in sent, sent

    def inflate(msg: m.Message, request: Request | None) -> list[m.Message | bytes]:
        if isinstance(msg, m.AuthParams):  # 4 GiB: out of reach of the user's small machines
            return [dataclasses.replace(msg, memory_kib=4 * 1024 * 1024)]
        return [msg]

    with serve_proxy(server, Rewrite(on_response=inflate)) as proxy:
        res = ProxiedCli(alice, proxy).run("snapshots", check=False)
        one_line_error(res, "more expensive password hashing")
        assert "Login" not in proxy.sent_types()


def test_proxy_planted_and_swapped_keys(server: Server, alice: NetCli, tmp_path: Path) -> None:
    other = server.add_user("alice2", tmp_path)  # same password, other keys
    other.run("snapshots")
    alice.run("snapshots")  # this computer pins alice's keys (through the real server)
    foreign = bytes(row(server, "alice2")["keyfile"])  # type: ignore[arg-type]
    seen: dict[str, bytes] = {}

    def plant(msg: m.Message, request: Request | None) -> list[m.Message | bytes]:
        if isinstance(msg, m.AuthParams):
            seen["salt"] = msg.salt
        if isinstance(msg, m.LoginOk) and "mode" in seen:
            if seen["mode"] == b"swap":
                return [dataclasses.replace(msg, keyfile=foreign)]
            # Keys the attacker knows, wrapped under the admin-set password and the salt the
            # login used: exactly what the client would unwrap at the forced change.
            kdf = crypto.KdfParams(memory_kib=1024, iterations=1)
            pk = crypto.split_master(
                crypto.derive_master(ADMIN_PASSWORD.encode(), seen["salt"], kdf)
            )
            planted = keys.wrap(keys.RepoKeys.generate(), seen["salt"], kdf, pk)
            return [dataclasses.replace(msg, keyfile=planted.to_json().encode())]
        return [msg]

    with serve_proxy(server, Rewrite(on_response=plant)) as proxy:
        victim = ProxiedCli(alice, proxy)
        victim.run("snapshots")  # pins alice's keys for the proxy's address as well
        seen["mode"] = b"swap"
        one_line_error(victim.run("snapshots", check=False), "DIFFERENT KEYS")
        seen["mode"] = b"plant"
        server.admin("user", "passwd", "alice", "--password-stdin", input=ADMIN_PASSWORD + "\n")
        newpw = tmp_path / "newpw"
        newpw.write_text("alice's own\n")
        proxy.clear()
        res = victim.run(
            "passwd",
            "--new-password-file",
            str(newpw),
            check=False,
            env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD},
        )
        one_line_error(res, "open with the password the admin set")
        assert "Login" in proxy.sent_types() and "SetKeyFile" not in proxy.sent_types()
    assert row(server, "alice")["must_change_password"] == 1


async def _fail(t: FailureThrottle, user: str, address: str) -> None:
    async with t.attempt(user, address) as a:
        a.failed()


async def _escalation_outlives_the_quiet_period() -> None:
    # Counts are forgotten after 0.05 s of quiet, but not those of a key that was locked:
    # its next lockout is twice as long, not the first one again.
    t = FailureThrottle(
        base_delay=0.0, forget_after=0.05, lockout_after=2, lockout_base=0.1, lockout_max=10
    )
    for _ in range(2):
        await _fail(t, "alice", "10.0.0.1")
    await asyncio.sleep(0.2)  # the 0.1 s lockout ended, and 0.05 s of quiet passed
    for _ in range(2):
        await _fail(t, "alice", "10.0.0.1")
    with pytest.raises(LoginRefused) as err:
        async with t.attempt("alice", "10.0.0.2"):
            pass
    assert err.value.retry_after > 0.15


async def _the_owner_at_a_known_address_is_not_locked_out() -> None:
    t = FailureThrottle(base_delay=0.0, lockout_after=4, lockout_base=30)
    async with t.attempt("alice", "10.0.0.1") as a:  # the owner logs in from home
        a.succeeded()
    for i in range(4):  # a stranger guesses at the name from elsewhere: alice is locked
        await _fail(t, "alice", f"10.9.9.{i}")
    with pytest.raises(LoginRefused):
        async with t.attempt("alice", "10.0.0.2"):
            pass
    async with t.attempt("alice", "10.0.0.1") as a:  # ...but not for her at home
        a.succeeded()


async def _a_flood_of_names_does_not_evict_a_lockout() -> None:
    t = FailureThrottle(base_delay=0.0, lockout_after=2, lockout_base=30, max_entries=4)
    for _ in range(2):
        await _fail(t, "alice", "10.0.0.1")
    for i in range(20):  # fresh names from fresh addresses fill the table
        await _fail(t, f"user{i}", f"10.1.0.{i}")
    with pytest.raises(LoginRefused):
        async with t.attempt("alice", "10.0.0.7"):
            pass
