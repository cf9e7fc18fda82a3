"""The web console over real HTTPS against a real strongroom-server (issue 10): logins, CSRF,
every action with the admin tool's rules, and what the pages show (no file names, ever)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from consolefixtures import CONSOLE_ADMIN, Console, console_server, web  # noqa: F401
from netfixtures import ADMIN_PASSWORD, NetCli, Server

pytestmark = pytest.mark.timeout(180)


def users(server: Server) -> dict[str, dict[str, object]]:
    return {u["name"]: u for u in json.loads(server.admin("user", "list", "--json").stdout)}


def test_login_is_required_and_wrong_logins_are_refused(web: Server) -> None:  # noqa: F811
    c = Console(web.web_port)
    page = c.get("/")
    assert page.url.endswith("/login") and "Console log in" in page.text
    assert c.post("/users", {"name": "x"}, csrf="nothing").status == 403
    wrong = c.login(password="not it")
    assert "wrong name or password" in wrong.text
    unknown = c.login(name="nobody")
    assert "wrong name or password" in unknown.text
    ok = c.login()
    assert ok.status == 200 and "Dashboard" in ok.text and CONSOLE_ADMIN in ok.text
    log = web.log.read_text()
    assert "console: login failed for 'root'" in log and "logged in" in log
    assert "console password" not in log


def test_forms_need_the_sessions_csrf_token_and_origin(
    web: Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    web.add_user("alice", tmp_path)
    c = Console(web.web_port)
    c.login()
    change = {"quota": "2G", "directory": "/home/alice"}
    assert c.post("/users/alice/settings", change, csrf="forged").status == 403
    other = Console(web.web_port)
    other.login()
    # Another session's token, or a form posted from another site, is refused too.
    assert c.post("/users/alice/settings", change, csrf=other.last.csrf).status == 403  # type: ignore[union-attr]
    assert c.post("/users/alice/settings", change, origin="https://evil.example").status == 403
    assert users(web)["alice"]["quota"] is None
    page = c.post("/users/alice/settings", {**change, "policy": "keep"})
    assert page.status == 200 and "settings of alice saved" in page.text
    assert users(web)["alice"]["quota"] == 2 * 1024**3
    assert "refused a request without a valid CSRF token" in web.log.read_text()


def test_every_action_follows_the_admin_tools_rules(
    web: Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    c = Console(web.web_port)
    c.login()
    # Add a user: bad input is a message, not a failure page.
    bad = c.post("/users", {"name": "-bad", "password": "a", "password2": "a"})
    assert "invalid user name" in " ".join(bad.flashes())
    diff = c.post("/users", {"name": "bob", "password": "a", "password2": "b"})
    assert "the two passwords differ" in " ".join(diff.flashes())
    added = c.post(
        "/users",
        {
            "name": "bob",
            "password": ADMIN_PASSWORD,
            "password2": ADMIN_PASSWORD,
            "directory": "/home/bob",
            "quota": "1G",
            "append_only": "on",
            "protection_window": "14d",
        },
    )
    assert "user bob added" in " ".join(added.flashes()) and "/users/bob" in added.url
    row = users(web)["bob"]
    assert row["append_only"] is True and row["protection_window"] == "2w"
    assert row["quota"] == 1024**3 and row["must_change_password"] is True
    # The real client takes over the account, backs up, and the page shows the snapshot.
    client = NetCli(tmp_path / "client-bob", web, "bob")
    newpw = tmp_path / "newpw"
    newpw.write_text("bob's own password\n")
    client.run(
        "passwd", "--new-password-file", str(newpw), env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD}
    )
    client.env["STRONGROOM_PASSWORD"] = "bob's own password"
    src = tmp_path / "secret-project-name"
    src.mkdir()
    (src / "very-secret-file-name.txt").write_text("x" * 1000)
    snap = client.backup(src)["snapshot"]
    page = c.get("/users/bob")
    assert snap[:8] in page.text and "very-secret" not in page.text
    assert "secret-project-name" not in page.text
    # Protect it, then settings: expected interval and an address to notify.
    c.post("/users/bob/protect", {"snapshot": snap, "protected": "1"})
    assert "is protected" in " ".join(c.last.flashes())  # type: ignore[union-attr]
    c.post(
        "/users/bob/settings",
        {
            "directory": "/home/bob",
            "quota": "1G",
            "append_only": "on",
            "protection_window": "14d",
            "expected_interval": "12h",
            "notify_email": "bob@example.org",
            "policy": "own",
            "keep_daily": "7",
        },
    )
    assert "settings of bob saved" in " ".join(c.last.flashes())  # type: ignore[union-attr]
    assert usage_policy(web, "bob") == {"daily": 7}
    # GC and scrub run inside the server and are recorded on the dashboard.
    assert "garbage collection for bob" in " ".join(c.post("/users/bob/gc", {}).flashes())
    assert "scrub of bob: no problems" in " ".join(c.post("/users/bob/scrub", {}).flashes())
    dash = c.get("/")
    assert "Last scrub" in dash.text and "bob" in dash.text
    # A password reset ends bob's sessions and makes him choose a new one.
    c.post("/users/bob/password", {"password": "reset-pw", "password2": "reset-pw"})
    assert users(web)["bob"]["must_change_password"] is True
    # Delete: the name must be typed; with purge, the storage goes too.
    store = storage_of(web, "bob")
    wrong = c.post("/users/bob/delete", {"confirm": "bo", "purge": "on"})
    assert "type the user name" in " ".join(wrong.flashes())
    assert "bob" in users(web)
    gone = c.post("/users/bob/delete", {"confirm": "bob", "purge": "on"})
    assert "user bob deleted, with their stored backups" in " ".join(gone.flashes())
    assert "bob" not in users(web) and not store.exists()
    log = web.log.read_text()
    actions = (
        "added user 'bob'",
        "changed the settings of 'bob'",
        "ran gc for 'bob'",
        "ran scrub for 'bob'",
        "reset the password of 'bob'",
        "deleted user 'bob'",
    )
    for action in actions:
        assert f"console: admin 'root': {action}" in log, action
    assert ADMIN_PASSWORD not in log and "reset-pw" not in log


def usage_policy(server: Server, name: str) -> object:
    rows = json.loads(server.admin("usage", "--json").stdout)
    (row,) = [r for r in rows if r["name"] == name]
    return {k: v for k, v in (row["policy"] or {}).items() if v}


def storage_of(server: Server, name: str) -> Path:
    sid = users(server)[name]["storage_id"]
    return server.data_dir / "storage" / str(sid)


def test_pages_are_locked_down(web: Server) -> None:  # noqa: F811
    c = Console(web.web_port)
    login = c.get("/login")
    c.login()
    dash = c.get("/")
    for page in (login, dash):
        assert "<script>" not in page.text  # no inline script: the CSP forbids it
        assert ' style="' not in page.text  # no inline style either
    req = c.opener.open(c.base + "/", timeout=30)
    headers = req.headers
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    cookies = {ck.name: ck for ck in c.jar}
    session = cookies["__Host-strongroom-console"]
    assert session.secure and session.path == "/"
    assert session.has_nonstandard_attr("HttpOnly")
    assert c.get("/users/nobody").status == 404
    assert c.get("/static/../users.sqlite").status in (403, 404)


def test_console_logins_are_throttled(tmp_path: Path) -> None:
    server = console_server(
        tmp_path,
        env={"STRONGROOM_LOGIN_MAX_DELAY": "0.3", "STRONGROOM_LOGIN_LOCKOUT_AFTER": "5"},
    )
    try:
        c = Console(server.web_port)
        started = time.monotonic()
        for _ in range(5):
            assert "wrong name or password" in c.login(password="guess").text
        assert time.monotonic() - started >= 0.5  # the 4th and 5th answers waited
        locked = c.login()  # the right password, but the name is locked now
        assert "too many failed logins" in locked.text
        assert "locked out" in server.log.read_text()
    finally:
        server.kill()


def test_console_admins_are_managed_by_the_admin_tool(web: Server) -> None:  # noqa: F811
    c = Console(web.web_port)
    c.login()
    assert c.get("/").status == 200
    out = web.admin("console-admin", "list").stdout
    assert "root" in out and "1 console admin(s)" in out
    # A new password (or a deletion) ends the admin's open console sessions at once.
    web.admin("console-admin", "passwd", "root", "--password-stdin", input="another one 456\n")
    assert c.get("/").url.endswith("/login")
    assert "wrong name or password" in c.login().text
    c.login(password="another one 456")
    assert c.get("/").status == 200
    web.admin("console-admin", "delete", "root")
    assert c.get("/").url.endswith("/login")
    res = web.admin("console-admin", "delete", "root", check=False)
    assert res.returncode == 2 and "no console admin root" in res.stderr


def test_the_console_can_be_turned_off(tmp_path: Path) -> None:
    server = Server(tmp_path / "server-data", env={"STRONGROOM_WEB_PORT": "0"}).start()
    try:
        assert server.web_port == 0
        assert "console on" not in server.log.read_text()
    finally:
        server.kill()
