"""Packing many small files into ~1 MiB bundle blobs.

Compressing and encrypting each small file alone costs a call per file and compresses badly;
a bundle is compressed once and gives zstd context. Each file is still recognised by its own
keyed content hash, so identical small files are stored once (see cache.LocalCache).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .tree import ContentRef

BUNDLE_TARGET = 1024 * 1024
SMALL_FILE_LIMIT = 128 * 1024  # files below this go into bundles


@dataclass
class Bundle:
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    blob_id: bytes | None = None  # set once the bundle is sealed and queued for storage


@dataclass(frozen=True, slots=True)
class Slice:
    """A small file's place in a bundle; resolvable once the bundle is sealed."""

    bundle: Bundle
    offset: int
    length: int

    def ready(self) -> bool:
        return self.bundle.blob_id is not None

    def ref(self) -> ContentRef:
        assert self.bundle.blob_id is not None
        return ContentRef(self.bundle.blob_id, self.offset, self.length)


class Bundler:
    """Thread-safe: workers add files; whoever fills a bundle seals it, outside the lock."""

    def __init__(self, seal: Callable[[bytes], bytes]) -> None:
        self._seal_fn = seal  # stores the plaintext, returns its blob ID
        self._lock = threading.Lock()
        self._current = Bundle()

    def add(self, data: bytes) -> Slice:
        full: Bundle | None = None
        with self._lock:
            bundle = self._current
            piece = Slice(bundle, bundle.size, len(data))
            bundle.parts.append(data)
            bundle.size += len(data)
            if bundle.size >= BUNDLE_TARGET:
                full = bundle
                self._current = Bundle()
        if full is not None:
            self._seal(full)
        return piece

    def flush(self) -> None:
        with self._lock:
            bundle = self._current
            self._current = Bundle()
        if bundle.parts:
            self._seal(bundle)

    def _seal(self, bundle: Bundle) -> None:
        plaintext = b"".join(bundle.parts)
        bundle.parts = []
        bundle.blob_id = self._seal_fn(plaintext)
