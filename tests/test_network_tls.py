"""A CA-signed certificate instead of the self-signed one: --tls-cert/--tls-key on the server,
--ca-file on the client (no pinned fingerprint needed), and the failures a person can act on."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from netfixtures import NetCli, Server


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("backup.example"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def test_ca_signed_certificate(tmp_path: Path) -> None:
    ca, cert, key = _make_ca_and_server_cert(tmp_path)
    srv = Server(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key)).start()
    try:
        alice = srv.add_user("alice", tmp_path)
        src = tmp_path / "src"
        src.mkdir()
        (src / "f.txt").write_text("hello")
        # With a CA bundle the client needs no pinned fingerprint.
        via_ca = {"STRONGROOM_FINGERPRINT": "", "STRONGROOM_CA_FILE": str(ca)}
        assert alice.run("backup", str(src), "--json", env=via_ca).json()["added"] == 1
        # The fingerprint the server prints is the CA-signed certificate's, and pins work too.
        assert alice.run("snapshots", "--json").json()[0]["paths"] == [str(src)]
        # Another CA's bundle is refused with one line, before any login.
        (tmp_path / "other").mkdir()
        other_ca, _c, _k = _make_ca_and_server_cert(tmp_path / "other")
        res = alice.run(
            "snapshots",
            env={"STRONGROOM_FINGERPRINT": "", "STRONGROOM_CA_FILE": str(other_ca)},
            check=False,
        )
        assert res.returncode == 1
        assert "not trusted" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    finally:
        srv.kill()


def test_wrong_pin_is_refused_before_login(server: Server, alice: NetCli) -> None:
    wrong = "SHA256:" + "ab" * 32
    res = alice.run("snapshots", env={"STRONGROOM_FINGERPRINT": wrong}, check=False)
    assert res.returncode == 1
    assert "CHANGED" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # The server saw a TLS connection but never a login from it.
    log = server.log.read_text()
    assert log.count("login ok") == 1  # the passwd of add_user, nothing since
