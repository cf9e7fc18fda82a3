"""Stage 3, the blob saver: store each new blob once, whoever made it.

Every blob (a chunk, a bundle of small files, a tree) passes here. Blobs the repository already
has, or that another thread of this backup is storing, are skipped; the rest are encoded
(zstd, Padmé padding, AES-GCM) if they are not already, and handed to the repository, whose
pack writer makes them durable. Safe to call from any thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future

from ..blobs import BlobType
from ..repository import Repository
from ..tree import ContentRef


class BlobSaver:
    def __init__(self, repo: Repository, known: set[bytes]) -> None:
        self.repo = repo
        self.known = known  # what the repository held when the backup began
        self._hasher = repo.keys.hasher()
        self._session: set[bytes] = set()
        self._lock = threading.Lock()
        self._pending: list[Future[None]] = []

    def claim(self, blob_id: bytes) -> bool:
        """True if the caller should store the blob (nobody has it or is storing it)."""
        if blob_id in self.known:
            return False
        with self._lock:
            if blob_id in self._session:
                return False
            self._session.add(blob_id)
        return True

    def save_encoded(self, blob_id: bytes, blob_type: BlobType, stored: bytes) -> None:
        """A blob encoded elsewhere (a worker process's bundle)."""
        if self.claim(blob_id):
            self.repo.add_blob(blob_id, blob_type, stored)

    def save(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        """Hash, and unless it is known encode and store, one plaintext blob; its ID."""
        blob_id = self._hasher(data)
        if self.claim(blob_id):
            self.repo.add_blob(blob_id, blob_type, self.repo.codecs.get().encode(blob_id, data))
        return blob_id

    def save_chunk(self, data: bytes | memoryview) -> ContentRef:
        return ContentRef(self.save(BlobType.DATA, data), 0, len(data))

    def save_later(self, blob_type: BlobType, data: bytes, pool: Executor) -> bytes:
        """`save`, with the compression and encryption on `pool` (they release the interpreter
        lock): the caller gets the ID at once. `wait` before the snapshot is committed."""
        blob_id = self._hasher(data)
        if self.claim(blob_id):
            self._pending.append(pool.submit(self._encode_and_add, blob_id, blob_type, data))
        return blob_id

    def _encode_and_add(self, blob_id: bytes, blob_type: BlobType, data: bytes) -> None:
        self.repo.add_blob(blob_id, blob_type, self.repo.codecs.get().encode(blob_id, data))

    def wait(self) -> None:
        """Every `save_later` done; the first failure is raised."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
