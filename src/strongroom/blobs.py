"""Stored form of a blob: nonce || AES-256-GCM(flag || payload), AAD = blob ID.

flag 0 = payload stored as is, flag 1 = payload is a zstd frame. Incompressible data is stored
raw so restore does not pay for a useless decompression.
"""

from __future__ import annotations

import threading
from enum import IntEnum

import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import crypto
from .errors import IntegrityError

ZSTD_LEVEL = 1  # measured best time/size trade-off on source trees (docs/BENCHMARKS.md)
MAX_BLOB_SIZE = 16 * 1024 * 1024  # hard cap on a decoded blob, guards against decompression bombs

_RAW = 0
_ZSTD = 1


class BlobType(IntEnum):
    DATA = 0  # a chunk of a file, or a bundle of small files
    TREE = 1  # one directory listing


class BlobCodec:
    """Compresses, encrypts, decrypts and verifies blobs. One instance per thread."""

    def __init__(self, aead: AESGCM, hasher: crypto.BlobHasher, level: int = ZSTD_LEVEL) -> None:
        self._aead = aead
        self.hash = hasher
        self._cctx = zstandard.ZstdCompressor(level=level)
        self._dctx = zstandard.ZstdDecompressor()

    def encode(self, blob_id: bytes, plaintext: bytes | memoryview) -> bytes:
        compressed = self._cctx.compress(plaintext)
        if len(compressed) < len(plaintext):
            body = b"\x01" + compressed
        else:
            body = b"\x00" + bytes(plaintext)
        return crypto.seal(self._aead, body, blob_id)

    def decode(self, blob_id: bytes, stored: bytes | memoryview) -> bytes:
        """Decrypt, decompress and check that the plaintext really has this ID."""
        body = crypto.unseal(self._aead, stored, blob_id, f"blob {blob_id.hex()[:16]}")
        if not body:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} is empty")
        flag = body[0]
        if flag == _RAW:
            plain = body[1:]
        elif flag == _ZSTD:
            frame = body[1:]
            try:
                # decompress() allocates whatever the frame header declares, ignoring
                # max_output_size, so a declared size must be checked before decompressing.
                declared = zstandard.frame_content_size(frame)
                if declared > MAX_BLOB_SIZE:
                    raise IntegrityError(f"blob {blob_id.hex()[:16]} declares an oversized content")
                plain = self._dctx.decompress(frame, max_output_size=MAX_BLOB_SIZE)
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"blob {blob_id.hex()[:16]} does not decompress") from exc
            if len(plain) > MAX_BLOB_SIZE:
                raise IntegrityError(f"blob {blob_id.hex()[:16]} is larger than allowed")
        else:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} has unknown encoding {flag}")
        if not crypto.constant_time_equal(self.hash(plain), blob_id):
            raise IntegrityError(f"blob {blob_id.hex()[:16]} does not match its ID")
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
