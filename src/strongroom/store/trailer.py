"""The index a pack carries at its end, so the blob index can be rebuilt from the packs alone.

    pack    = blob bytes ‖ entries ‖ footer
    entry   = id_len u8 ‖ blob_id ‖ type u8 ‖ offset u64 ‖ length u32 ‖ checksum (32 bytes)
    footer  = "SRPKIDX1" ‖ entry count u32 ‖ entries' length u32 ‖ BLAKE3(entries)[:16]

Little-endian throughout. Every field is what the index holds already: blob IDs are keyed
hashes, types and sizes are visible anyway, checksums are of encrypted bytes; the server reads
it without any key. A pack written before trailers existed has none (its last bytes are blob
bytes; the magic and the entries' hash make a false match hopeless) and stays readable.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

import blake3

MAGIC = b"SRPKIDX1"
_FOOTER = struct.Struct("<8sII16s")
FOOTER_SIZE = _FOOTER.size
_FIXED = struct.Struct("<BQI32s")  # type, offset, length, checksum
MAX_ENTRIES = 1 << 22  # more blobs than any pack holds: a larger count is damage


class TrailerEntry(NamedTuple):
    blob_id: bytes
    type: int
    offset: int
    length: int
    checksum: bytes


def encode(entries: Sequence[TrailerEntry]) -> bytes:
    out = bytearray()
    for e in entries:
        if not 0 < len(e.blob_id) < 256 or len(e.checksum) != 32:
            raise ValueError("a trailer entry needs a 1..255-byte ID and a 32-byte checksum")
        out += (
            bytes([len(e.blob_id)])
            + e.blob_id
            + _FIXED.pack(e.type, e.offset, e.length, e.checksum)
        )
    body = bytes(out)
    return body + _FOOTER.pack(MAGIC, len(entries), len(body), blake3.blake3(body).digest()[:16])


def footer_length(footer: bytes) -> int | None:
    """The entries' length the footer (the pack's last FOOTER_SIZE bytes) announces; None if
    the pack has no trailer."""
    if len(footer) < FOOTER_SIZE:
        return None
    magic, count, length, _digest = _FOOTER.unpack(footer[-FOOTER_SIZE:])
    if magic != MAGIC or count > MAX_ENTRIES:
        return None
    return int(length)


def decode(tail: bytes, pack_size: int) -> list[TrailerEntry] | None:
    """The entries from a pack's tail (at least entries + footer); None without a trailer.
    Raises ValueError for a trailer that is there but damaged or inconsistent."""
    length = footer_length(tail)
    if length is None:
        return None
    _magic, count, _length, digest = _FOOTER.unpack(tail[-FOOTER_SIZE:])
    if length + FOOTER_SIZE > min(len(tail), pack_size):
        raise ValueError("the pack's trailer is cut off")
    body = tail[len(tail) - FOOTER_SIZE - length : len(tail) - FOOTER_SIZE]
    if blake3.blake3(body).digest()[:16] != digest:
        raise ValueError("the pack's trailer does not match its checksum")
    data_end = pack_size - FOOTER_SIZE - length
    entries: list[TrailerEntry] = []
    pos = 0
    while pos < len(body):
        id_len = body[pos]
        end = pos + 1 + id_len + _FIXED.size
        if id_len == 0 or end > len(body):
            raise ValueError("the pack's trailer is malformed")
        blob_id = body[pos + 1 : pos + 1 + id_len]
        blob_type, offset, size, checksum = _FIXED.unpack(body[pos + 1 + id_len : end])
        if offset + size > data_end:
            raise ValueError("the pack's trailer names bytes outside the pack")
        entries.append(TrailerEntry(blob_id, blob_type, offset, size, checksum))
        pos = end
    if len(entries) != count:
        raise ValueError("the pack's trailer has the wrong number of entries")
    return entries
