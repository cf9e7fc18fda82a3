"""Alerts from a real server, to a real SMTP server (aiosmtpd, STARTTLS) and a real HTTP
receiver on loopback (issue 10): each arrives once, repeats on schedule, clears with a
"resolved" notice; a receiver that fails is tried again; nothing crashes the server."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from netfixtures import Server, free_port
from strongroom.protocol import messages as m
from test_server_hostile import assert_no_tracebacks, connect

pytestmark = pytest.mark.timeout(180)
T = TypeVar("T")


def certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Mailbox:
    """aiosmtpd's handler: keeps every message, and whether it came over TLS."""

    def __init__(self) -> None:
        self.messages: list[tuple[Message, list[str], bool]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(
                (message_from_bytes(envelope.content), list(envelope.rcpt_tos), bool(session.ssl))
            )
        return "250 OK"

    def subjects(self) -> list[str]:
        with self.lock:
            return [str(msg["Subject"]) for msg, _to, _tls in self.messages]


class Hooks:
    """A webhook receiver on loopback; its first `fail_first` requests get HTTP 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.failures_left = fail_first
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hooks.failures_left > 0:
                    hooks.failures_left -= 1
                    self.send_response(500)
                else:
                    hooks.payloads.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"

    def events(self) -> list[tuple[str, str, str | None]]:
        return [(p["event"], p["kind"], p["user"]) for p in list(self.payloads)]

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def wait_for(what: str, probe: Callable[[], T], ok: Callable[[T], bool], timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"{what}: still {value!r} after {timeout} s"
        time.sleep(0.1)


@pytest.fixture
def mail(tmp_path: Path) -> Iterator[tuple[Mailbox, int, Path]]:
    cert, key = certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    box = Mailbox()
    port = free_port()
    controller = Controller(
        box, hostname="127.0.0.1", port=port, tls_context=tls, require_starttls=True
    )
    controller.start()
    try:
        yield box, port, cert
    finally:
        controller.stop()


def test_stale_and_failed_backups_alert_once_repeat_and_clear(
    tmp_path: Path, mail: tuple[Mailbox, int, Path]
) -> None:
    box, smtp_port, cert = mail
    hooks = Hooks(fail_first=1)  # the first notice fails: it must be sent again, once
    server = Server(
        tmp_path / "server-data",
        env={
            "STRONGROOM_EXPECTED_INTERVAL": "5",
            "STRONGROOM_ALERT_CHECK_INTERVAL": "0.3",
            "STRONGROOM_ALERT_REPEAT": "4",
            "STRONGROOM_SMTP_HOST": "127.0.0.1",
            "STRONGROOM_SMTP_PORT": str(smtp_port),
            "STRONGROOM_SMTP_CA_FILE": str(cert),
            "STRONGROOM_SMTP_FROM": "strongroom@example.org",
            "STRONGROOM_ALERT_EMAIL": "admin@example.org",
            "STRONGROOM_ALERT_WEBHOOK": hooks.url,
            "STRONGROOM_NOTIFY_USERS": "1",
        },
    ).start()
    try:
        alice = server.add_user("alice", tmp_path)
        bob = server.add_user("bob", tmp_path, password="bob's password")
        server.admin("user", "set", "alice", "--notify-email", "alice@example.org")
        src = tmp_path / "src"
        src.mkdir()
        (src / "f.txt").write_text("x")
        alice.backup(src)
        bob.backup(src)
        # bob's next backup fails before reaching the server; the client reports it.
        with connect(server, "bob", "bob's password") as raw:
            assert raw.call(m.ReportFailure("the folder /data is missing")) == m.Ok()
        wait_for(
            "a failed-backup alert",
            hooks.events,
            lambda e: ("firing", "failed", "bob") in e,
        )
        # Nobody backs up: both go stale after 5 s; each alert arrives once...
        wait_for(
            "stale alerts",
            hooks.events,
            lambda e: {("firing", "stale", "alice"), ("firing", "stale", "bob")} <= set(e),
        )
        assert hooks.events().count(("firing", "stale", "alice")) == 1
        assert "will retry" in server.log.read_text()  # the first webhook POST failed
        # ...is repeated while in force...
        wait_for("a repeat", hooks.events, lambda e: ("repeat", "stale", "alice") in e)
        # ...and clears with a notice once a backup succeeds.
        alice.backup(src)
        bob.backup(src)
        wait_for(
            "resolved notices",
            hooks.events,
            lambda e: {("resolved", "stale", "alice"), ("resolved", "failed", "bob")} <= set(e),
        )
        assert hooks.events().count(("firing", "failed", "bob")) == 1
        # The same notices by mail, over STARTTLS, to the admin.
        subjects = wait_for(
            "mails", box.subjects, lambda s: any(x.startswith("[strongroom] resolved") for x in s)
        )
        assert any("alice: no successful backup within" in s for s in subjects)
        assert any("bob: the last backup failed" in s for s in subjects)
        for msg, to, over_tls in box.messages:
            assert over_tls and "admin@example.org" in to
            assert msg["From"] == "strongroom@example.org"
        # alice is told about her own alerts too (notify_users), bob (no address) is not.
        alice_mail = [msg["Subject"] for msg, to, _tls in box.messages if "alice@example.org" in to]
        assert alice_mail and all("alice" in str(subject) for subject in alice_mail)
        payload = next(p for p in hooks.payloads if p["kind"] == "stale")
        assert set(payload) == {"event", "kind", "user", "detail", "since", "time", "server"}
        assert_no_tracebacks(server)
    finally:
        server.kill()
        hooks.close()


def test_a_user_is_told_too_and_an_unreachable_mail_server_is_retried(tmp_path: Path) -> None:
    hooks = Hooks()
    dead_port = free_port()  # nothing listens there
    server = Server(
        tmp_path / "server-data",
        env={
            "STRONGROOM_EXPECTED_INTERVAL": "3",
            "STRONGROOM_ALERT_CHECK_INTERVAL": "0.3",
            "STRONGROOM_SMTP_HOST": "127.0.0.1",
            "STRONGROOM_SMTP_PORT": str(dead_port),
            "STRONGROOM_ALERT_EMAIL": "admin@example.org",
            "STRONGROOM_ALERT_WEBHOOK": hooks.url,
        },
    ).start()
    try:
        alice = server.add_user("alice", tmp_path)
        src = tmp_path / "src"
        src.mkdir()
        (src / "f.txt").write_text("x")
        alice.backup(src)
        # The mail cannot go out: logged, tried again at every check, the server goes on.
        wait_for(
            "retries",
            lambda: server.log.read_text().count("alert mail not sent"),
            lambda n: n >= 3,
        )
        assert server.alive()
        assert hooks.events().count(("firing", "stale", "alice")) >= 1
        alice.run("snapshots")  # still serving
        assert_no_tracebacks(server)
    finally:
        server.kill()
        hooks.close()


def test_conditions_on_accounts() -> None:
    """The rules alone: overdue (or never), failed, quota at 90 %; nothing for a new account."""
    from strongroom.crypto import KdfParams
    from strongroom.server.alerts import conditions
    from strongroom.server.overview import AccountStatus
    from strongroom.server.userdb import User

    now = time.time_ns()

    def status(**kw: Any) -> AccountStatus:
        fields: dict[str, Any] = {
            "id": kw.pop("id"),
            "name": "u",
            "storage_id": "0" * 32,
            "directory": "",
            "salt": b"s" * 16,
            "kdf": KdfParams(),
            "auth_hash": b"",
            "keyfile": None,
            "must_change_password": False,
            "quota": kw.pop("quota", None),
            "append_only": False,
            "created_ns": now,
            "last_backup_ns": kw.get("last_success_ns"),
            "last_backup_result": kw.pop("result", "ok"),
            "last_success_ns": kw.pop("last_success_ns", None),
        }
        used = kw.pop("used", 0)
        overdue = kw.pop("overdue", False)
        return AccountStatus(User(**fields), used, used, 1, 3600, overdue, "ok")

    found = conditions(
        [
            status(id=1, last_success_ns=now),
            status(id=2, last_success_ns=now - 10**13, overdue=True),
            status(id=3, overdue=True),
            status(id=4, last_success_ns=now, result="failed (quota)"),
            status(id=5, last_success_ns=now, quota=1000, used=950),
            status(id=6, last_success_ns=now, quota=1000, used=899),
        ]
    )
    assert set(found) == {(2, "stale"), (3, "stale"), (4, "failed"), (5, "quota")}
    assert "last: never" in found[(3, "stale")]
    assert "95 % of the quota" in found[(5, "quota")]
