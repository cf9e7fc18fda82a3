"""A real strongroom-server with its web console on, and an HTTP client for the console.

The client keeps cookies like a browser (the console's `__Host-` cookies are Secure: HTTPS
only), reads the CSRF token from each page it loads and sends it back with forms, with the
console's own Origin. Every request has a timeout.
"""

from __future__ import annotations

import http.cookiejar
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netfixtures import Server, free_port

CONSOLE_ADMIN = "root"
CONSOLE_PASSWORD = "console password 123"
TIMEOUT = 30


@dataclass
class Page:
    status: int
    url: str
    text: str

    @property
    def csrf(self) -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', self.text)
        assert m, f"no CSRF token on {self.url}"
        return m.group(1)

    def flashes(self) -> list[str]:
        return [
            re.sub(r"\s+", " ", f).strip()
            for f in re.findall(r'class="flash [a-z]+"[^>]*>(.*?)</div>', self.text, re.S)
        ]


class Console:
    def __init__(self, port: int) -> None:
        self.base = f"https://127.0.0.1:{port}"
        self.jar = http.cookiejar.CookieJar()
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE  # the server's self-signed certificate
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=tls),
            urllib.request.HTTPCookieProcessor(self.jar),
        )
        self.last: Page | None = None

    def get(self, path: str, headers: dict[str, str] | None = None) -> Page:
        return self._open(urllib.request.Request(self.base + path, headers=headers or {}))

    def post(
        self,
        path: str,
        fields: dict[str, str],
        *,
        csrf: str | None = None,
        origin: str | None = None,
    ) -> Page:
        data = dict(fields)
        token = csrf if csrf is not None else (self.last.csrf if self.last else "")
        data.setdefault("csrf", token)
        req = urllib.request.Request(
            self.base + path,
            data=urllib.parse.urlencode(data).encode(),
            headers={"Origin": origin or self.base},
            method="POST",
        )
        return self._open(req)

    def login(self, name: str = CONSOLE_ADMIN, password: str = CONSOLE_PASSWORD) -> Page:
        form = self.get("/login")
        return self.post("/login", {"name": name, "password": password}, csrf=form.csrf)

    def _open(self, req: urllib.request.Request) -> Page:
        try:
            with self.opener.open(req, timeout=TIMEOUT) as resp:
                page = Page(resp.status, resp.url, resp.read().decode())
        except urllib.error.HTTPError as exc:
            page = Page(exc.code, req.full_url, exc.read().decode(errors="replace"))
        if "csrf" in page.text:
            self.last = page
        return page


def console_server(tmp: Path, env: dict[str, str] | None = None) -> Server:
    for attempt in range(3):  # the free port may be taken between the probe and the bind
        server = Server(
            tmp / "server-data", env={"STRONGROOM_WEB_PORT": str(free_port()), **(env or {})}
        )
        try:
            server.start()
            break
        except AssertionError:
            if attempt == 2:
                raise
    assert server.web_port, "the web console did not start"
    server.admin(
        "console-admin", "add", CONSOLE_ADMIN, "--password-stdin", input=CONSOLE_PASSWORD + "\n"
    )
    return server


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Server]:
    server = console_server(tmp_path)
    try:
        yield server
    finally:
        server.kill()
