"""Repository keys: created by the client, wrapped with a password-derived key.

The key file is safe to hand to the server: it holds the Argon2id salt and parameters and the
data/ID keys sealed under the key-encryption key (KEK), which only the password can produce,
and optionally a second sealing under a recovery key (recovery.py). Changing the password
re-wraps the same keys and keeps the recovery wrapping, so existing data stays readable.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import crypto
from .errors import IntegrityError, WrongPasswordError

# Version 2 adds the optional recovery wrapping. A key file without one is still written as
# version 1, which clients from before recovery keys can read.
KEYFILE_VERSION = 2
_VERSIONS = (1, 2)
_RECOVERY_MAX = 4096  # a sealed RepoKeys is ~150 bytes
_WRAP_AAD = b"strongroom v1 wrapped keys"


@dataclass(frozen=True)
class RepoKeys:
    """The secrets that protect a repository's content."""

    data_key: bytes  # AES-256-GCM key for blobs and snapshot records
    id_key: bytes  # BLAKE3 key for blob IDs
    chunker_seed: int  # randomises chunk boundaries per repository

    def aead(self) -> AESGCM:
        return AESGCM(self.data_key)

    def hasher(self) -> crypto.BlobHasher:
        return crypto.BlobHasher(self.id_key)

    @staticmethod
    def generate() -> RepoKeys:
        return RepoKeys(
            data_key=crypto.random_key(),
            id_key=crypto.random_key(),
            chunker_seed=secrets.randbits(63),
        )

    def check_value(self) -> str:
        """A keyed hash of these keys (hex), pinned by the client at first use: a later login
        that unlocks other keys (planted by whoever controls the server) is refused."""
        return crypto.hkdf(self.data_key + self.id_key, b"strongroom v1 key check")[:16].hex()

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "data_key": _b64(self.data_key),
                "id_key": _b64(self.id_key),
                "chunker_seed": self.chunker_seed,
            },
            sort_keys=True,
        ).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> RepoKeys:
        try:
            obj = json.loads(raw)
            keys = RepoKeys(
                data_key=_unb64(obj["data_key"]),
                id_key=_unb64(obj["id_key"]),
                chunker_seed=_json_int(obj["chunker_seed"]),
            )
        except _MALFORMED as exc:
            raise IntegrityError("key material is malformed") from exc
        if len(keys.data_key) != crypto.KEY_SIZE or len(keys.id_key) != crypto.KEY_SIZE:
            raise IntegrityError("key material has wrong key sizes")
        return keys


@dataclass(frozen=True)
class KeyFile:
    """What is stored (repository or server) to let a password unlock the RepoKeys."""

    salt: bytes
    kdf: crypto.KdfParams
    wrapped: bytes  # seal(KEK, RepoKeys.to_bytes())
    auth_hash: bytes  # hash of the auth key, for a server to check logins without the KEK
    recovery: bytes | None = None  # seal(recovery KEK, RepoKeys.to_bytes()), see recovery.py

    def to_json(self) -> str:
        obj: dict[str, Any] = {
            "version": 1,
            "kdf": "argon2id",
            "salt": _b64(self.salt),
            "memory_kib": self.kdf.memory_kib,
            "iterations": self.kdf.iterations,
            "lanes": self.kdf.lanes,
            "wrapped": _b64(self.wrapped),
            "auth_hash": _b64(self.auth_hash),
        }
        if self.recovery is not None:
            obj["version"] = KEYFILE_VERSION
            obj["recovery"] = {"kdf": "hkdf-sha256", "wrapped": _b64(self.recovery)}
        return json.dumps(obj, sort_keys=True)

    def with_recovery(self, recovery: bytes | None) -> KeyFile:
        """The same password wrapping with another recovery wrapping (or none)."""
        return dataclasses.replace(self, recovery=recovery)

    def same_login(self, other: KeyFile) -> bool:
        """Do both hold the same password wrapping (salt, cost, sealed keys, verifier)? Then
        a replacement changes at most the recovery wrapping: the password opens the same keys."""
        return (
            self.salt == other.salt
            and self.kdf == other.kdf
            and crypto.constant_time_equal(self.wrapped, other.wrapped)
            and crypto.constant_time_equal(self.auth_hash, other.auth_hash)
        )

    @staticmethod
    def from_json(text: str | bytes) -> KeyFile:
        # The key file comes from the server: every field is checked before the KDF runs.
        try:
            obj: Any = json.loads(text)
            if not isinstance(obj, dict):
                raise IntegrityError("key file is malformed")
            version = obj.get("version")
            if type(version) is not int or version not in _VERSIONS or obj.get("kdf") != "argon2id":
                raise IntegrityError(
                    "key file has an unsupported version (a newer strongroom may have written it)"
                )
            keyfile = KeyFile(
                salt=_unb64(obj["salt"]),
                kdf=crypto.KdfParams(
                    memory_kib=_json_int(obj["memory_kib"]),
                    iterations=_json_int(obj["iterations"]),
                    lanes=_json_int(obj["lanes"]),
                ),
                wrapped=_unb64(obj["wrapped"]),
                auth_hash=_unb64(obj["auth_hash"]),
                recovery=_recovery(obj.get("recovery")) if version == 2 else None,
            )
        except _MALFORMED as exc:
            raise IntegrityError("key file is malformed") from exc
        crypto.check_salt(keyfile.salt)
        keyfile.kdf.validate()
        return keyfile


def auth_hash(auth_key: bytes) -> bytes:
    """What a server stores to recognise the auth key (never the key itself)."""
    return crypto.hkdf(auth_key, b"strongroom v1 auth verifier")


def create_keyfile(
    password: bytes,
    keys: RepoKeys,
    kdf: crypto.KdfParams | None = None,
    *,
    recovery: bytes | None = None,
) -> KeyFile:
    """A key file for `password` (fresh salt), carrying the recovery wrapping given."""
    params = kdf or crypto.KdfParams()
    salt = os.urandom(16)
    pk = crypto.split_master(crypto.derive_master(password, salt, params))
    return wrap(keys, salt, params, pk).with_recovery(recovery)


def wrap(keys: RepoKeys, salt: bytes, params: crypto.KdfParams, pk: crypto.PasswordKeys) -> KeyFile:
    wrapped = crypto.seal(pk.kek, keys.to_bytes(), _WRAP_AAD)
    return KeyFile(salt=salt, kdf=params, wrapped=wrapped, auth_hash=auth_hash(pk.auth_key))


def unlock(keyfile: KeyFile, password: bytes) -> RepoKeys:
    pk = crypto.split_master(crypto.derive_master(password, keyfile.salt, keyfile.kdf))
    return unwrap(keyfile, pk.kek)


def unwrap(keyfile: KeyFile, kek: bytes) -> RepoKeys:
    """Open the wrapped keys with a KEK already derived (e.g. during a server login)."""
    try:
        raw = crypto.unseal(kek, keyfile.wrapped, _WRAP_AAD, "key file")
    except IntegrityError:
        raise WrongPasswordError("wrong password for this repository") from None
    return RepoKeys.from_bytes(raw)


# RecursionError: deeply nested JSON; OverflowError: int() of an infinite float.
_MALFORMED = (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError)


def _recovery(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("kdf") != "hkdf-sha256":
        raise IntegrityError("key file has an unsupported recovery wrapping")
    wrapped = _unb64(value["wrapped"])
    if not (crypto.NONCE_SIZE + crypto.TAG_SIZE < len(wrapped) <= _RECOVERY_MAX):
        raise IntegrityError("key file has a malformed recovery wrapping")
    return wrapped


def _json_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected a base64 string")
    return base64.b64decode(text.encode("ascii"), validate=True)
