"""Stored form of a blob: nonce || AES-256-GCM(body), AAD = blob ID.

The body starts with a flag. Blobs written today are padded so that the stored length is a
Padmé length (padding.py): flag 2 = payload stored as is, flag 3 = payload is a zstd frame,
both as ``flag(1) || pad_len(u32 LE) || payload || pad_len zero bytes``. Older versions wrote
``flag || payload`` with flag 0 (raw) or 1 (zstd), with no padding; those still decode.
Incompressible data is stored raw so restore does not pay for a useless decompression.
"""

from __future__ import annotations

import os
import struct
import threading
from enum import IntEnum

import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import crypto
from .errors import IntegrityError
from .padding import padme

ZSTD_LEVEL = 1  # measured best time/size trade-off on source trees (docs/BENCHMARKS.md)
MAX_BLOB_SIZE = 16 * 1024 * 1024  # hard cap on a decoded blob, guards against decompression bombs

_RAW = 0  # unpadded, read only
_ZSTD = 1  # unpadded, read only
_RAW_PADDED = 2
_ZSTD_PADDED = 3
_PADDED_HEADER = struct.Struct("<BI")  # flag, number of zero bytes after the payload
_HEADER_SIZE = _PADDED_HEADER.size
_PAD_LEN = struct.Struct("<I")  # the header's second field, read at offset 1
# Everything stored besides the payload and the padding.
OVERHEAD = crypto.NONCE_SIZE + _HEADER_SIZE + crypto.TAG_SIZE
# Zero bytes to pad from without allocating (a blob under 32 MiB needs less than 512 KiB).
_ZEROS_SIZE = 1 << 19
_ZEROS = memoryview(bytes(_ZEROS_SIZE))


class BlobType(IntEnum):
    DATA = 0  # a chunk of a file, or a bundle of small files
    TREE = 1  # one directory listing


def stored_size(payload_len: int) -> int:
    """The stored length of a blob whose (raw or compressed) payload has this length."""
    return padme(OVERHEAD + payload_len)


def _zeros(n: int) -> memoryview | bytes:
    return _ZEROS[:n] if n <= _ZEROS_SIZE else bytes(n)


class BlobCodec:
    """Compresses, pads, encrypts, decrypts and verifies blobs. One instance per thread."""

    def __init__(self, aead: AESGCM, hasher: crypto.BlobHasher, level: int = ZSTD_LEVEL) -> None:
        self._aead = aead
        self.hash = hasher
        self._cctx = zstandard.ZstdCompressor(level=level)
        self._dctx = zstandard.ZstdDecompressor()

    def encode(self, blob_id: bytes, plaintext: bytes | memoryview) -> bytes:
        compressed = self._cctx.compress(plaintext)
        # Compressed only if that makes the *stored* blob smaller: when both pad to the same
        # length, raw costs nothing more and restore skips the decompression.
        payload: bytes | memoryview = plaintext
        flag, total = _RAW_PADDED, padme(OVERHEAD + len(plaintext))
        if len(compressed) < len(plaintext):
            zstd_total = padme(OVERHEAD + len(compressed))
            if zstd_total < total:
                flag, payload, total = _ZSTD_PADDED, compressed, zstd_total
        pad = total - OVERHEAD - len(payload)
        # One allocation for the body, one for the ciphertext, one to put the nonce in front.
        body = b"".join((_PADDED_HEADER.pack(flag, pad), payload, _zeros(pad)))
        nonce = os.urandom(crypto.NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, body, blob_id)

    def decode(self, blob_id: bytes, stored: bytes | memoryview) -> bytes:
        """Decrypt, decompress and check that the plaintext really has this ID."""
        return self.plaintext(blob_id, self.open_body(blob_id, stored))

    def open_body(self, blob_id: bytes, stored: bytes | memoryview) -> bytes:
        """The decrypted body (flag, padding header, payload, padding), authenticated."""
        return crypto.unseal(self._aead, stored, blob_id, f"blob {blob_id.hex()[:16]}")

    def plaintext(self, blob_id: bytes, body: bytes) -> bytes:
        """The plaintext of a decrypted body, checked: padding, size and the ID it hashes to.
        (`strongroom copy` seals the same body again for another repository.)"""
        what = f"blob {blob_id.hex()[:16]}"
        if not body:
            raise IntegrityError(f"{what} is empty")
        flag = body[0]
        if _RAW_PADDED <= flag <= _ZSTD_PADDED:
            if len(body) < _HEADER_SIZE:
                raise IntegrityError(f"{what} has a truncated padding header")
            pad = _PAD_LEN.unpack_from(body, 1)[0]
            end = len(body) - pad
            if end < _HEADER_SIZE:
                raise IntegrityError(f"{what} declares more padding than it holds")
            if pad and not body.endswith(_ZEROS[:pad] if pad <= _ZEROS_SIZE else bytes(pad)):
                raise IntegrityError(f"{what} has malformed padding")
            if flag == _RAW_PADDED:
                plain = body[_HEADER_SIZE:end]
            else:
                plain = self._decompress(memoryview(body)[_HEADER_SIZE:end], what)
        elif flag == _RAW:
            plain = body[1:]
        elif flag == _ZSTD:
            plain = self._decompress(memoryview(body)[1:], what)
        else:
            raise IntegrityError(f"{what} has unknown encoding {flag}")
        if not crypto.constant_time_equal(self.hash(plain), blob_id):
            raise IntegrityError(f"{what} does not match its ID")
        return plain

    def _decompress(self, frame: memoryview, what: str) -> bytes:
        try:
            # decompress() allocates whatever the frame header declares, ignoring
            # max_output_size, so a declared size must be checked before decompressing.
            declared = zstandard.frame_content_size(frame)
            if declared > MAX_BLOB_SIZE:
                raise IntegrityError(f"{what} declares an oversized content")
            # One frame and nothing after it: a payload must end where its padding starts.
            plain = self._dctx.decompress(
                frame, max_output_size=MAX_BLOB_SIZE, allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{what} does not decompress") from exc
        if len(plain) > MAX_BLOB_SIZE:
            raise IntegrityError(f"{what} is larger than allowed")
        return plain


class CodecPool:
    """Hands each thread its own codec: zstd contexts are not thread-safe."""

    def __init__(self, aead: AESGCM, hasher: crypto.BlobHasher) -> None:
        self._aead = aead
        self._hasher = hasher
        self._local = threading.local()

    def get(self) -> BlobCodec:
        codec: BlobCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = BlobCodec(self._aead, self._hasher)
            self._local.codec = codec
        return codec
