"""The server's TLS identity: a self-signed certificate made on first start, its SHA-256
fingerprint (which clients pin, as SSH does), and the server's ssl context."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import StrongroomError, UsageError

# The fingerprint helpers live in a light module the client imports without X.509 machinery.
from ..fingerprint import fingerprint_of_der
from .datadir import DataDir, make_dir, write_new_file

COMMON_NAME = "strongroom-server"
VALIDITY = datetime.timedelta(days=3650)


def ensure_certificate(datadir: DataDir, hostnames: list[str] | None = None) -> None:
    """Make a key and a self-signed certificate in datadir/tls unless they exist.

    Each file is created whole or not at all, and only if absent, so two processes starting at
    once agree on one pair: the key is made first, and the certificate from whichever key won.
    """
    if datadir.key_path.exists() and datadir.cert_path.exists():
        return
    make_dir(datadir.tls_dir)
    if not datadir.key_path.exists():
        if datadir.cert_path.exists():
            raise StrongroomError(
                f"{datadir.cert_path} exists without its key {datadir.key_path}: "
                "move the certificate away to make a new pair"
            )
        new_key = ec.generate_private_key(ec.SECP256R1())
        pem = new_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_new_file(datadir.key_path, pem, 0o600)
    key = _load_key(datadir.key_path)
    if not datadir.cert_path.exists():
        cert = _self_signed(key, hostnames or [])
        write_new_file(datadir.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def new_identity(hostnames: list[str]) -> tuple[bytes, bytes]:
    """A new self-signed certificate and its key, as PEM (scale-out keeps them in the
    database: server/identity.py)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _self_signed(key, hostnames).public_bytes(serialization.Encoding.PEM), pem


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise StrongroomError(f"cannot read the TLS key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise StrongroomError(f"the TLS key {path} is not a valid PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StrongroomError(
            f"the TLS key {path} is not an EC key; move it away to make a new one"
        )
    return key


def _self_signed(key: ec.EllipticCurvePrivateKey, hostnames: list[str]) -> x509.Certificate:
    names: list[x509.GeneralName] = []
    for host in ["localhost", "127.0.0.1", "::1", socket.gethostname(), *hostnames]:
        name = _general_name(host)
        if name is not None and name not in names:
            names.append(name)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # tolerate clients' clock skew
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _general_name(host: str) -> x509.GeneralName | None:
    """A SAN entry for a host name or IP address; None for what cannot be one."""
    host = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or not host.isascii() or len(host) > 253:
        return None
    try:
        return x509.DNSName(host)
    except ValueError:
        return None


def certificate_fingerprint(cert_path: Path) -> str:
    """The fingerprint of the first certificate in a PEM file."""
    try:
        data = cert_path.read_bytes()
    except OSError as exc:
        raise StrongroomError(f"cannot read the certificate {cert_path}: {exc.strerror}") from None
    return pem_fingerprint(data, str(cert_path))


def pem_fingerprint(data: bytes, where: str = "the certificate") -> str:
    """The fingerprint of the first certificate in PEM bytes."""
    try:
        cert = x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError):
        raise StrongroomError(f"{where} holds no valid PEM certificate") from None
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def server_ssl_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 is negotiated whenever possible
    try:
        # A password callback, so that an encrypted key fails here instead of prompting.
        ctx.load_cert_chain(cert_path, key_path, password=lambda: b"")
    except OSError as exc:
        if isinstance(exc, ssl.SSLError):
            raise UsageError(
                f"TLS certificate {cert_path} or key {key_path} is invalid or encrypted, "
                "or they do not belong together"
            ) from None
        where = exc.filename or f"{cert_path} / {key_path}"
        raise UsageError(f"cannot read TLS file {where}: {exc.strerror or exc}") from None
    return ctx
