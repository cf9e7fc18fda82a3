"""Login checks: what the server answers for a name, and whether an auth key is right.

The server never sees the password or the key-encryption key, only the auth key split from the
Argon2id output, and it stores only a verifier (an HKDF of it). For a name that does not exist
it answers with a salt derived from a server secret, so the answer looks the same as for a real
user and stays the same across attempts; the check then runs the same work and fails.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from hashlib import sha256

from ..crypto import KdfParams, constant_time_equal
from ..keys import auth_hash
from ..names import fold_name
from .config import default_kdf
from .userdb import User

_DUMMY_VERIFIER = bytes(32)


@dataclass(frozen=True)
class SaltAnswer:
    salt: bytes
    kdf: KdfParams


def fake_salt(secret: bytes, name: str) -> bytes:
    """Folded first: 'BOB' and 'bob' must get one answer whether or not bob exists."""
    folded = fold_name(name).encode("utf-8")
    return hmac.new(secret, b"strongroom fake salt\0" + folded, sha256).digest()[:16]


def salt_for(user: User | None, name: str, secret: bytes) -> SaltAnswer:
    if user is None:
        return SaltAnswer(fake_salt(secret, name), default_kdf())
    return SaltAnswer(user.salt, user.kdf)


def verify(user: User | None, auth_key: bytes) -> bool:
    """Same work whether or not the user exists; compares in constant time."""
    verifier = auth_hash(auth_key) if len(auth_key) == 32 else auth_hash(bytes(32))
    expected = user.auth_hash if user is not None else _DUMMY_VERIFIER
    ok = constant_time_equal(verifier, expected)
    return ok and user is not None and len(auth_key) == 32
