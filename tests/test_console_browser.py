"""The console in a real browser: Debian's chromium driven by Playwright, against a real
strongroom-server with real client backups (issue 10). A failing test leaves a screenshot in
tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from browserfixtures import ARTIFACTS, launch
from consolefixtures import CONSOLE_ADMIN, CONSOLE_PASSWORD, console_server
from netfixtures import Server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    p = context.new_page()
    p.set_default_timeout(20_000)
    errors: list[str] = []
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    p.on(
        "response",
        lambda r: (
            errors.append(f"HTTP {r.status} {r.request.method} {r.url}")
            if r.status >= 400
            else None
        ),
    )
    try:
        yield p
        # No page broke the CSP or threw (the charts and the refresh are static scripts), and
        # no request was refused, except those a test expects (the cross-site form).
        if getattr(p, "refusals_expected", False):
            errors[:] = [e for e in errors if "403" not in e]
        assert not errors, errors
    except BaseException:
        raise
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            p.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        context.close()


def log_in(page: Page, server: Server, password: str = CONSOLE_PASSWORD) -> None:
    page.goto(f"https://127.0.0.1:{server.web_port}/")
    expect(page).to_have_url(f"https://127.0.0.1:{server.web_port}/login")
    page.get_by_label("Name").fill(CONSOLE_ADMIN)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def _reload_until(page: Page, server: Server, locate: Any, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        page.goto(f"https://127.0.0.1:{server.web_port}/")
        if locate().inner_text().strip() == text:
            return
        assert time.monotonic() < deadline, f"never showed {text!r}"
        time.sleep(0.5)


def row_of(page: Page, user: str) -> Any:
    return page.locator("table.users tbody tr", has=page.get_by_role("link", name=user, exact=True))


def test_the_console_in_a_browser(page: Page, tmp_path: Path) -> None:
    server = console_server(tmp_path, env={"STRONGROOM_EXPECTED_INTERVAL": "6"})
    try:
        alice = server.add_user("alice", tmp_path, directory="/home/alice")
        # A wrong login is refused, the right one lands on the dashboard.
        log_in(page, server, password="wrong")
        expect(page.get_by_text("wrong name or password")).to_be_visible()
        log_in(page, server)
        expect(page.get_by_role("heading", name="Users")).to_be_visible()
        expect(row_of(page, "alice").locator(".badge")).to_have_text("new")
        # A real client backup appears.
        src = tmp_path / "src"
        src.mkdir()
        (src / "report.txt").write_text("quarterly numbers\n" * 500)
        snap = alice.backup(src)["snapshot"]
        page.reload()
        expect(row_of(page, "alice").locator(".badge")).to_have_text("ok")
        page.get_by_role("link", name="alice", exact=True).click()
        expect(page.get_by_text(snap[:8])).to_be_visible()
        assert "report.txt" not in page.content()
        page.wait_for_function("document.querySelector('#usage-chart').width > 0")
        # Change the quota.
        page.get_by_label("Quota").fill("3G")
        page.get_by_role("button", name="Save settings").click()
        expect(page.get_by_text("settings of alice saved")).to_be_visible()
        assert "3.0 GiB" in page.content()
        # Reset the password.
        page.get_by_text("Reset password").first.click()
        page.get_by_label("New password").fill("temporary pw 1")
        page.get_by_label("Repeat it").fill("temporary pw 1")
        page.get_by_role("button", name="Reset password").click()
        expect(page.get_by_text("password of alice reset")).to_be_visible()
        expect(page.get_by_text("must change password")).to_be_visible()
        # alice takes the account back, then stops backing up: flagged stale after 6 s...
        newpw = tmp_path / "newpw"
        newpw.write_text("alice's new password\n")
        oldpw = tmp_path / "oldpw"
        oldpw.write_text(alice.env["STRONGROOM_PASSWORD"] + "\n")
        alice.run(
            "passwd",
            "--new-password-file",
            str(newpw),
            "--old-password-file",
            str(oldpw),
            env={"STRONGROOM_PASSWORD": "temporary pw 1"},
        )
        alice.env["STRONGROOM_PASSWORD"] = "alice's new password"
        _reload_until(page, server, lambda: row_of(page, "alice").locator(".badge"), "stale")
        # ...and the flag clears after a backup.
        alice.backup(src)
        page.reload()
        expect(row_of(page, "alice").locator(".badge")).to_have_text("ok")
    finally:
        server.kill()


def test_a_form_posted_from_another_site_is_refused(page: Page, tmp_path: Path) -> None:
    server = console_server(tmp_path)
    evil = _evil_site(server.web_port)
    try:
        server.add_user("alice", tmp_path)
        log_in(page, server)
        expect(page.get_by_role("heading", name="Users")).to_be_visible()
        # A page on another origin posts a form to the console in the admin's browser: the
        # session cookie is SameSite=Strict and the form has no CSRF token: refused.
        page.goto(evil.url)
        page.wait_for_load_state()
        assert "log in first" in page.content()
        page.refusals_expected = True  # type: ignore[attr-defined]
        users = server.admin("user", "list", "--json").json()
        assert users[0]["quota"] is None
    finally:
        evil.close()
        server.kill()


class _Evil:
    def __init__(self, html: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def _evil_site(port: int) -> _Evil:
    return _Evil(
        f"""<!doctype html><html><body>
        <form id="f" method="post" action="https://127.0.0.1:{port}/users/alice/settings">
          <input name="quota" value="1"><input name="csrf" value="guess">
        </form>
        <script>document.getElementById("f").submit();</script>
        </body></html>"""
    )


def test_every_page_renders_without_errors(page: Page, tmp_path: Path) -> None:
    server = console_server(tmp_path)
    try:
        alice = server.add_user("alice", tmp_path, extra=("--quota", "10M"))
        bob = server.add_user("bob", tmp_path, password="bob's password")
        src = tmp_path / "src"
        src.mkdir()
        (src / "a.bin").write_bytes(b"\x01" * 5_000_000)
        alice.backup(src)
        bob.backup(src)
        log_in(page, server)
        for path in ("/", "/users/alice", "/users/bob"):
            response = page.goto(f"https://127.0.0.1:{server.web_port}{path}")
            assert response is not None and response.ok, path
        # Narrow screens (a phone) keep the page usable.
        page.set_viewport_size({"width": 390, "height": 800})
        page.goto(f"https://127.0.0.1:{server.web_port}/")
        expect(page.get_by_role("heading", name="Users")).to_be_visible()
    finally:
        server.kill()
