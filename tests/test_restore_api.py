"""The restore page's HTTP API (issue 13) against a real strongroom-server with a real client
backup: login parameters, login with the auth key derived here as the page derives it, the
snapshot rows and blob stream (decoded with the Python code), and every refusal: wrong key,
no or stale session, other sites, malformed requests, must-change-password accounts, account
changes, lockouts. The page itself is tested in chromium by tests/test_restore_browser.py."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import PASSWORD
from consolefixtures import console_server
from netfixtures import NetCli, Server
from restorefixtures import Http, blob_records
from strongroom import crypto
from strongroom.blobs import BlobCodec
from strongroom.keys import KeyFile, unwrap
from strongroom.snapshot import open_snapshot
from strongroom.store import SnapshotRow
from strongroom.tree import decode_tree

pytestmark = pytest.mark.timeout(180)


@dataclass
class World:
    server: Server
    http: Http
    alice: NetCli
    src: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("restore-api")
    server = console_server(tmp)
    try:
        alice = server.add_user("alice", tmp)
        src = tmp / "src"
        (src / "sub").mkdir(parents=True)
        (src / "hello.txt").write_text("hello from alice\n" * 100)
        (src / "sub" / "data.bin").write_bytes(bytes(range(256)) * 5000)
        alice.backup(src)
        yield World(server, Http(server.web_port), alice, src)
    finally:
        server.kill()


def test_login_snapshots_and_blobs_decode_with_the_client_code(world: World) -> None:
    http = world.http
    answer = http.login("alice")
    assert answer.status == 200, answer.body
    doc = answer.json()
    assert "set-cookie" not in {k.lower() for k in answer.headers}
    session = doc["session"]
    keyfile = KeyFile.from_json(doc["keyfile"])
    p = http.post("/api/user/auth-params", {"user": "alice"}).json()
    master = crypto.derive_master(PASSWORD.encode(), base64.b64decode(p["salt"]), keyfile.kdf)
    keys = unwrap(keyfile, crypto.split_master(master).kek)

    rows = http.call("GET", "/api/user/snapshots", session=session).json()["snapshots"]
    assert len(rows) == 1
    r = rows[0]
    snap = open_snapshot(
        keys.aead(),
        SnapshotRow(r["id"], r["time_ns"], base64.b64decode(r["record"]), "", False, 0),
    )
    codec = BlobCodec(keys.aead(), keys.hasher())
    root = bytes.fromhex(snap.tree)
    body = http.call(
        "POST", "/api/user/blobs", root, session=session, content_type="application/octet-stream"
    )
    assert body.status == 200 and body.headers["Cache-Control"] == "no-store"
    records = blob_records(body.body)
    assert [(rec[0], rec[1]) for rec in records] == [(root, 0), (bytes(32), 0xFF)]
    assert struct.unpack(">Q", records[-1][2]) == (1,)
    (top,) = decode_tree(codec.decode(root, records[0][2]))
    assert top.name == "src" and top.subtree is not None
    names = [
        n.name for n in decode_tree(codec.decode(top.subtree, _blob(world, session, top.subtree)))
    ]
    assert names == ["hello.txt", "sub"]
    # Nothing of alice's content or names in what the server logged.
    log = world.server.log.read_text()
    assert "hello.txt" not in log and "login ok for user 'alice' (restore page)" in log

    # A blob that is not stored: refused before anything is streamed.
    missing = http.call(
        "POST",
        "/api/user/blobs",
        b"\x01" * 32,
        session=session,
        content_type="application/octet-stream",
    )
    assert missing.status == 404 and missing.json()["code"] == "not_found"
    # Logout ends the session.
    assert http.post("/api/user/logout", {}, session=session).status == 200
    gone = http.call("GET", "/api/user/snapshots", session=session)
    assert gone.status == 401 and gone.json()["code"] == "no_session"


def _blob(world: World, session: str, blob_id: bytes) -> bytes:
    body = world.http.call(
        "POST",
        "/api/user/blobs",
        blob_id,
        session=session,
        content_type="application/octet-stream",
    )
    records = blob_records(body.body)
    assert records[0][0] == blob_id and records[0][1] == 0
    return records[0][2]


def test_refusals(world: World) -> None:
    http = world.http
    wrong = http.login("alice", "not the password")
    assert wrong.status == 401 and wrong.json() == {
        "error": "wrong user name or password",
        "code": "auth_failed",
    }
    nobody = http.login("nobody-here", "whatever")
    assert nobody.status == 401 and nobody.json()["code"] == "auth_failed"
    # Unknown names get login parameters too (the same shape, a stable fake salt).
    fake1 = http.post("/api/user/auth-params", {"user": "nobody-here"}).json()
    fake2 = http.post("/api/user/auth-params", {"user": "nobody-here"}).json()
    assert fake1 == fake2 and len(base64.b64decode(fake1["salt"])) >= 16

    session = http.login("alice").json()["session"]
    # No bearer, a made-up one, a console cookie instead: no session.
    for headers in ({}, {"Authorization": "Bearer made-up"}, {"Cookie": f"s={session}"}):
        answer = http.call("GET", "/api/user/snapshots", headers=headers)
        assert answer.status == 401, headers
    # Another site's page: refused before anything is looked at.
    evil = http.call(
        "GET", "/api/user/snapshots", session=session, headers={"Origin": "https://evil.example"}
    )
    assert evil.status == 403 and evil.json()["code"] == "forbidden"
    cross = http.call(
        "GET", "/api/user/snapshots", session=session, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status == 403
    # Malformed requests: one line each, the server goes on.
    for body, ctype, code in (
        (b"{nope", "application/json", 400),
        (b"user=alice", "application/x-www-form-urlencoded", 400),
        (b"[1]", "application/json", 400),
        (b"x" * 20000, "application/json", 413),
    ):
        answer = http.call("POST", "/api/user/login", body, content_type=ctype)
        assert answer.status == code and "error" in answer.json(), body[:20]
    for ids in (b"", b"\x00" * 31, b"\x00" * 32 * 257):
        answer = http.call(
            "POST",
            "/api/user/blobs",
            ids,
            session=session,
            content_type="application/octet-stream",
        )
        assert answer.status == 400, len(ids)
    bad_key = http.post("/api/user/login", {"user": "alice", "auth_key": "***"})
    assert bad_key.status == 400
    # The page and its files carry a strict CSP; other names are not served.
    page = http.call("GET", "/restore/")
    assert page.status == 200
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    for path in ("/restore/../app.py", "/restore/.hidden.js", "/restore/x.py", "/restore/nope.js"):
        assert http.call("GET", path).status == 404, path
    assert world.server.alive()


def test_an_admin_password_reset_ends_the_web_session(world: World, tmp_path: Path) -> None:
    server, http = world.server, world.http
    server.add_user("carol", tmp_path, password="carol's password")
    session = http.login("carol", "carol's password").json()["session"]
    assert http.call("GET", "/api/user/snapshots", session=session).status == 200
    server.admin("user", "passwd", "carol", "--password-stdin", input="reset by admin\n")
    ended = http.call("GET", "/api/user/snapshots", session=session)
    assert ended.status == 401 and ended.json()["code"] in ("session_ended", "no_session")
    # The reset account must choose its own password with the client first.
    refused = http.login("carol", "reset by admin")
    assert refused.status == 403
    assert refused.json()["code"] == "password_change_required"
    assert "strongroom passwd" in refused.json()["error"]


def test_guessing_is_locked_out_as_on_the_protocol(tmp_path: Path) -> None:
    server = console_server(
        tmp_path,
        env={
            "STRONGROOM_LOGIN_FREE_ATTEMPTS": "1",
            "STRONGROOM_LOGIN_MAX_DELAY": "0.2",
            "STRONGROOM_LOGIN_LOCKOUT_AFTER": "3",
        },
    )
    try:
        alice = server.add_user("alice", tmp_path)
        http = Http(server.web_port)
        codes = [http.login("alice", f"guess {i}").status for i in range(4)]
        assert codes == [401, 401, 401, 429], codes
        locked = http.login("alice", "guess 5").json()
        assert locked["code"] == "rate_limited" and "try again in" in locked["error"]
        # The same lock holds on the backup protocol: one throttle for both doors.
        result = alice.run("snapshots", check=False)
        assert result.returncode != 0 and "too many failed logins" in result.stderr
    finally:
        server.kill()
