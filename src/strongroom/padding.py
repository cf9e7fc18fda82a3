"""Padmé padding (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and
Communication with PURBs", PETS 2019).

A length L is rounded up to a multiple of 2**(E - S), where E = floor(log2 L) and
S = floor(log2 E) + 1: the padded length keeps only the S + 1 most significant bits of L's
magnitude, so it reveals O(log log L) bits about L instead of log L, and adds at most
(2**(E-S) - 1) / (2**E + 1) < 11.7 % (the worst case is L = 129, padded to 144).

strongroom pads every stored blob and every snapshot record so that what the server stores
(nonce + ciphertext + tag) has a Padmé length; docs/FORMAT.md gives the layouts.
"""

from __future__ import annotations

MAX_OVERHEAD = 0.12  # a bound on (padme(L) - L) / L for every L >= 1 (the true maximum is 15/129)


def padme(length: int) -> int:
    """The smallest Padmé length >= length (lengths below 2 are returned unchanged)."""
    if length < 0:
        raise ValueError("a length cannot be negative")
    if length < 2:
        return length
    e = length.bit_length() - 1  # floor(log2 L)
    s = e.bit_length()  # floor(log2 E) + 1
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


def is_padme(length: int) -> bool:
    """Whether length is one of the lengths padme() produces."""
    return length >= 0 and padme(length) == length
