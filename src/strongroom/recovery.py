"""Recovery keys: a second wrapping of the data keys, for a lost password.

A recovery key is 256 random bits made by the client and shown to the user once
(recovery_code.py writes it down). Its wrapping key is HKDF-SHA256 of it: 256 random bits
need no password hashing. The wrapping lives in the key file beside the password's, so the
server stores it without being able to open it; nothing else derived from the key leaves the
client.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import crypto, recovery_code
from .errors import IntegrityError, StrongroomError
from .keys import RepoKeys

_KEK_INFO = b"strongroom v2 recovery key-encryption key"
WRAP_AAD = b"strongroom v2 recovery wrapped keys"


class WrongRecoveryKey(StrongroomError):
    pass


@dataclass(frozen=True)
class RecoveryKey:
    secret: bytes = field(repr=False)

    @staticmethod
    def generate() -> RecoveryKey:
        return RecoveryKey(os.urandom(recovery_code.KEY_BYTES))

    @staticmethod
    def from_text(text: str) -> RecoveryKey:
        return RecoveryKey(recovery_code.decode(text))

    def text(self) -> str:
        return recovery_code.encode(self.secret)

    def _kek(self) -> bytes:
        return crypto.hkdf(self.secret, _KEK_INFO)

    def wrap(self, keys: RepoKeys) -> bytes:
        return crypto.seal(self._kek(), keys.to_bytes(), WRAP_AAD)

    def unwrap(self, wrapped: bytes) -> RepoKeys:
        """The data keys, or WrongRecoveryKey: the same answer for every wrong key."""
        try:
            raw = crypto.unseal(self._kek(), wrapped, WRAP_AAD, "recovery wrapping")
        except IntegrityError:
            raise WrongRecoveryKey(
                "this recovery key does not open this account's keys (it is another account's, "
                "or one replaced by 'recovery-key rotate'); nothing was changed"
            ) from None
        return RepoKeys.from_bytes(raw)
