"""Console admins: Argon2id password hashes, sessions in cookies, CSRF tokens.

Console admins are not backup users: they manage the server, never see a key. A session is a
random token in a `__Host-` cookie (Secure, HttpOnly, SameSite=Strict, Path=/) that maps to the
admin and a CSRF token kept server-side; every form carries the CSRF token and every state
change checks it (and the request's Origin). Sessions live in the server's memory: a restart
logs everyone out, which is fine for a console.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from hashlib import sha256

from ... import crypto
from ..opsdb import ConsoleAdmin, OpsDB

COOKIE = "__Host-strongroom-console"
SESSION_IDLE_S = 3600.0
SESSION_MAX_S = 12 * 3600.0
MAX_SESSIONS = 1000


def hash_password(password: bytes, kdf: crypto.KdfParams) -> tuple[bytes, bytes]:
    """A fresh salt and the stored hash of an admin's password (Argon2id, then an HKDF step so
    the stored value is never the raw KDF output)."""
    salt = os.urandom(16)
    return salt, _stored(password, salt, kdf)


def _stored(password: bytes, salt: bytes, kdf: crypto.KdfParams) -> bytes:
    return crypto.hkdf(crypto.derive_master(password, salt, kdf), b"strongroom console admin")


_DUMMY = crypto.KdfParams()


def verify_password(admin: ConsoleAdmin | None, password: bytes, fake_salt: bytes) -> bool:
    """The same work whether or not the admin exists; compares in constant time."""
    if admin is None:
        _stored(password, fake_salt, crypto.kdf_floor())
        return False
    return crypto.constant_time_equal(_stored(password, admin.salt, admin.kdf), admin.hash)


def fake_salt(secret: bytes, name: str) -> bytes:
    return hmac.new(secret, b"console fake salt\0" + name.encode(), sha256).digest()[:16]


@dataclass
class ConsoleSession:
    admin: str
    csrf: str
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    flashes: list[tuple[str, str]] = field(default_factory=list)  # shown once, next page


class Sessions:
    def __init__(self) -> None:
        self._by_token: dict[str, ConsoleSession] = {}

    def open(self, admin: str) -> str:
        self._expire()
        if len(self._by_token) >= MAX_SESSIONS:  # drop the least recently seen
            oldest = min(self._by_token, key=lambda t: self._by_token[t].seen)
            del self._by_token[oldest]
        token = secrets.token_urlsafe(32)
        self._by_token[token] = ConsoleSession(admin, secrets.token_urlsafe(32))
        return token

    def get(self, token: str | None) -> ConsoleSession | None:
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > SESSION_IDLE_S or now - session.created > SESSION_MAX_S:
            del self._by_token[token]
            return None
        session.seen = now
        return session

    def close(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def close_admin(self, admin: str) -> None:
        """An admin deleted or given a new password: their sessions end."""
        for token in [t for t, s in self._by_token.items() if s.admin.lower() == admin.lower()]:
            del self._by_token[token]

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [
            t
            for t, s in self._by_token.items()
            if now - s.seen > SESSION_IDLE_S or now - s.created > SESSION_MAX_S
        ]:
            del self._by_token[token]


def check_csrf(session: ConsoleSession, sent: str | None) -> bool:
    return sent is not None and crypto.constant_time_equal(sent.encode(), session.csrf.encode())


def add_admin(ops: OpsDB, name: str, password: bytes) -> None:
    kdf = crypto.kdf_floor()
    salt, stored = hash_password(password, kdf)
    ops.add_admin(name, salt, kdf, stored)


def set_admin_password(ops: OpsDB, name: str, password: bytes) -> bool:
    kdf = crypto.kdf_floor()
    salt, stored = hash_password(password, kdf)
    return ops.set_admin_password(name, salt, kdf, stored)
