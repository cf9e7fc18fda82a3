"""The restore page's test helpers: an HTTP client for its API (tests/test_restore_api.py) and
accounts whose keys are wrapped at the real Argon2id cost (64 MiB, 3 passes): the page has no
test switch for its floor, as it should not (tests/test_restore_browser.py)."""

from __future__ import annotations

import base64
import json
import ssl
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import PASSWORD
from netfixtures import ADMIN_PASSWORD, NetCli, Server
from strongroom import crypto

REAL_KDF = {"STRONGROOM_INSECURE_TEST_KDF": "0"}


RECORD = struct.Struct(">32sBI")


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    def __init__(self, port: int) -> None:
        self.base = f"https://127.0.0.1:{port}"
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE  # the server's self-signed certificate
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls))

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        session: str | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        h = {"Content-Type": content_type, **(headers or {})}
        if session:
            h["Authorization"] = f"Bearer {session}"
        req = urllib.request.Request(self.base + path, data=body, headers=h, method=method)
        try:
            with self.opener.open(req, timeout=30) as resp:
                return Answer(resp.status, resp.read(), dict(resp.headers))
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, exc.read(), dict(exc.headers))

    def post(self, path: str, doc: dict[str, Any], **kw: Any) -> Answer:
        return self.call("POST", path, json.dumps(doc).encode(), **kw)

    def auth_key(self, user: str, password: str) -> bytes:
        p = self.post("/api/user/auth-params", {"user": user}).json()
        params = crypto.KdfParams(p["memory_kib"], p["iterations"], p["lanes"])
        master = crypto.derive_master(password.encode(), base64.b64decode(p["salt"]), params)
        return crypto.split_master(master).auth_key

    def login(self, user: str, password: str = PASSWORD) -> Answer:
        key = self.auth_key(user, password)
        return self.post(
            "/api/user/login", {"user": user, "auth_key": base64.b64encode(key).decode()}
        )


def blob_records(body: bytes) -> list[tuple[bytes, int, bytes]]:
    out = []
    at = 0
    while at < len(body):
        blob_id, status, length = RECORD.unpack_from(body, at)
        at += RECORD.size
        out.append((blob_id, status, body[at : at + length]))
        at += length
    return out


def real_kdf_user(server: Server, name: str, password: str, tmp: Path) -> NetCli:
    """An account whose owner chose `password` with the client, at the real cost."""
    server.admin("user", "add", name, "--password-stdin", input=ADMIN_PASSWORD + "\n")
    client = NetCli(tmp / f"client-{name}", server, name, password)
    client.env.update(REAL_KDF)
    newpw = tmp / f"client-{name}-newpw"
    newpw.write_text(password + "\n")
    client.run(
        "passwd", "--new-password-file", str(newpw), env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD}
    )
    return client
