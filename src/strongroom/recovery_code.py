"""How a 256-bit recovery key is written down: 13 groups of 5 base32 characters.

    7K3QZ-M0A9C-...-4TQ8W   (65 characters; dashes, spaces and case do not matter)

Crockford's base32 alphabet (no I, L, O or U; when read back O is taken as 0 and I or L as 1).
The 256 bits and 4 check bits (SHA-256 of the key) make 52 characters, in 13 groups of 4; each
group ends with a check character computed by the Damm algorithm over GF(32), started from the
group's position. So any one wrong character and any two neighbours swapped are caught in the
group where they are (the message names it), a group typed in the wrong place is caught, and
the 4 key-wide bits catch most of whatever remains. A typo is found here, before anything is
tried; a key that passes these checks but is not the account's is refused by AES-GCM.

Why not words: the one well-kept BIP-39 library on PyPI (`mnemonic`) carries an 8-bit
checksum, which lets 1 in 256 single-word substitutions through.
"""

from __future__ import annotations

import hashlib

from .errors import UsageError

KEY_BYTES = 32
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
GROUPS = 13
DATA_PER_GROUP = 4
GROUP_SIZE = DATA_PER_GROUP + 1
LENGTH = GROUPS * GROUP_SIZE
_CHECK_BITS = 4
_VALUES = {ch: i for i, ch in enumerate(ALPHABET)}
_VALUES.update({"O": 0, "I": 1, "L": 1})
_SEPARATORS = frozenset(" -\t\r\n")
_HASH_LABEL = b"strongroom recovery key check"


class RecoveryKeyTypo(UsageError):
    """The text is not a well-formed recovery key (nothing was tried with it)."""


def _gf32_double(x: int) -> int:
    """x * 2 in GF(2^5) modulo the primitive polynomial x^5 + x^2 + 1."""
    x <<= 1
    return x ^ 0b100101 if x & 0b100000 else x


def _damm(start: int, symbols: list[int]) -> int:
    # The quasigroup a*b = 2a + b of GF(32) is totally anti-symmetric (Damm, 2004): every
    # single substitution and adjacent transposition changes the result.
    interim = start
    for s in symbols:
        interim = _gf32_double(interim) ^ s
    return interim


def _check_bits(secret: bytes) -> int:
    return hashlib.sha256(_HASH_LABEL + secret).digest()[0] >> (8 - _CHECK_BITS)


def encode(secret: bytes) -> str:
    if len(secret) != KEY_BYTES:
        raise ValueError("a recovery key is 32 bytes")
    number = (int.from_bytes(secret, "big") << _CHECK_BITS) | _check_bits(secret)
    count = GROUPS * DATA_PER_GROUP
    data = [(number >> (5 * (count - 1 - i))) & 31 for i in range(count)]
    groups = []
    for g in range(GROUPS):
        part = data[g * DATA_PER_GROUP : (g + 1) * DATA_PER_GROUP]
        part.append(_gf32_double(_damm(g, part)))
        groups.append("".join(ALPHABET[v] for v in part))
    return "-".join(groups)


def decode(text: str) -> bytes:
    """The 32-byte secret, or RecoveryKeyTypo saying where the typing went wrong."""
    chars = [ch for ch in text.upper() if ch not in _SEPARATORS]
    if len(chars) != LENGTH:
        raise RecoveryKeyTypo(
            f"a recovery key has {LENGTH} characters ({GROUPS} groups of {GROUP_SIZE}); "
            f"this one has {len(chars)}"
        )
    values = []
    for i, ch in enumerate(chars):
        if ch not in _VALUES:
            raise RecoveryKeyTypo(
                f"group {i // GROUP_SIZE + 1} of the recovery key has a character that is not "
                f"in its alphabet (digits and letters except I, L, O, U)"
            )
        values.append(_VALUES[ch])
    data: list[int] = []
    for g in range(GROUPS):
        group = values[g * GROUP_SIZE : (g + 1) * GROUP_SIZE]
        if _damm(g, group) != 0:
            raise RecoveryKeyTypo(
                f"group {g + 1} of the recovery key has a typo (or groups are out of order)"
            )
        data.extend(group[:DATA_PER_GROUP])
    number = 0
    for v in data:
        number = (number << 5) | v
    secret = (number >> _CHECK_BITS).to_bytes(KEY_BYTES, "big")
    if number & ((1 << _CHECK_BITS) - 1) != _check_bits(secret):
        raise RecoveryKeyTypo(
            "the recovery key has a typo (its checksum does not match): compare it group by "
            "group with your copy"
        )
    return secret
