"""Cryptographic primitives: KDF, key splitting, AEAD sealing and keyed blob IDs.

Everything secret goes through here so that the choices (Argon2id, HKDF-SHA256, AES-256-GCM,
keyed BLAKE3) are made in one place and documented in docs/SECURITY.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import IntegrityError

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
ID_SIZE = 32


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters, stored beside the salt so they can be raised later."""

    memory_kib: int = 65536
    iterations: int = 3
    lanes: int = 4

    def validate(self) -> None:
        # Bounds stop a hostile key file from making the client allocate absurd memory.
        if not (8 <= self.memory_kib <= 4 * 1024 * 1024):
            raise IntegrityError("key file has an invalid Argon2 memory cost")
        if not (1 <= self.iterations <= 64) or not (1 <= self.lanes <= 64):
            raise IntegrityError("key file has invalid Argon2 parameters")
        if self.memory_kib < 8 * self.lanes:
            raise IntegrityError("key file has an invalid Argon2 memory cost")


# Tests only: the suite runs hundreds of logins, so it sets this to derive at 1 MiB / 1 pass.
# Only the client's own environment can lower its floor; nothing a server sends can.
INSECURE_TEST_KDF_ENV = "STRONGROOM_INSECURE_TEST_KDF"


def kdf_floor() -> KdfParams:
    """The weakest Argon2id cost a client derives with for a server, and the cost it wraps its
    own key files with: the design's 64 MiB, 3 passes (docs/SECURITY.md)."""
    if os.environ.get(INSECURE_TEST_KDF_ENV) == "1":
        return KdfParams(memory_kib=1024, iterations=1)
    return KdfParams()


def weaker_than(params: KdfParams, floor: KdfParams) -> bool:
    """True if `params` costs less memory or fewer passes than `floor` (lanes are parallelism
    for the defender's CPU, not cost for a guesser)."""
    return params.memory_kib < floor.memory_kib or params.iterations < floor.iterations


SALT_MIN = 8  # Argon2's own minimum
SALT_MAX = 64


def check_salt(salt: bytes) -> None:
    if not (SALT_MIN <= len(salt) <= SALT_MAX):
        raise IntegrityError("key file has an invalid salt")


def derive_master(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    params.validate()
    check_salt(salt)
    kdf = Argon2id(
        salt=salt,
        length=KEY_SIZE,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    return kdf.derive(password)


def hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(master)


@dataclass(frozen=True)
class PasswordKeys:
    """The two keys split from the password: one is shown to the server, one never leaves."""

    auth_key: bytes
    kek: bytes


def split_master(master: bytes) -> PasswordKeys:
    return PasswordKeys(
        auth_key=hkdf(master, b"strongroom v1 auth key"),
        kek=hkdf(master, b"strongroom v1 key-encryption key"),
    )


def random_key() -> bytes:
    return os.urandom(KEY_SIZE)


def seal(key: bytes | AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || AES-256-GCM(plaintext) with associated data; a fresh random nonce each time."""
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    nonce = os.urandom(NONCE_SIZE)
    return nonce + aead.encrypt(nonce, plaintext, aad)


def unseal(key: bytes | AESGCM, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    if len(sealed) < NONCE_SIZE + TAG_SIZE:
        raise IntegrityError(f"{what} is truncated")
    view = memoryview(sealed)
    try:
        return aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], aad)
    except InvalidTag:
        raise IntegrityError(f"{what} failed authentication (damaged or tampered)") from None


class BlobHasher:
    """Keyed BLAKE3: blob IDs the server cannot compute, so it cannot test for known files."""

    def __init__(self, id_key: bytes) -> None:
        if len(id_key) != KEY_SIZE:
            raise ValueError("ID key must be 32 bytes")
        self._key = id_key

    def __call__(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._key).digest()


def content_checksum(data: bytes | memoryview) -> bytes:
    """Unkeyed checksum of stored (encrypted) bytes, so the server can scrub without keys."""
    return blake3.blake3(data).digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    import hmac  # with hashlib and OpenSSL's ~13 ms: only when a comparison is made

    return hmac.compare_digest(a, b)
