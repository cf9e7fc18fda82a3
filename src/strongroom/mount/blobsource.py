"""Blobs for the mount, fetched on demand: memory, then the disk cache, then the repository.

Decrypted blobs are kept in a small in-memory LRU (bounded in bytes); a blob asked for by two
readers at once is fetched once (the second waits for the first). `prefetch` fetches the next
blobs of a file being read sequentially on background threads, in one request, so reading a
large file through the mount does not wait one round trip per blob.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterable

from ..blobs import CodecPool
from ..errors import IntegrityError
from .access import RepoAccess
from .diskcache import DiskCache

Future = concurrent.futures.Future[bytes]

MEMORY_BYTES = 96 * 1024 * 1024
PREFETCH_THREADS = 3


class BlobSource:
    def __init__(
        self,
        access: RepoAccess,
        codecs: CodecPool,
        disk: DiskCache | None = None,
        memory_bytes: int = MEMORY_BYTES,
    ) -> None:
        self.access = access
        self.codecs = codecs
        self.disk = disk
        self.memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._memory: OrderedDict[bytes, bytes] = OrderedDict()
        self._memory_total = 0
        self._inflight: dict[bytes, concurrent.futures.Future[bytes]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            PREFETCH_THREADS, thread_name_prefix="prefetch"
        )
        self.fetched = 0  # blobs read from the repository (not from a cache)

    def get(self, blob_id: bytes, *, remember: bool = True) -> bytes:
        """A blob's verified plaintext (IntegrityError if damaged or missing)."""
        with self._lock:
            plain = self._memory.get(blob_id)
            if plain is not None:
                self._memory.move_to_end(blob_id)
                return plain
            fut = self._inflight.get(blob_id)
            mine = fut is None
            if fut is None:
                fut = self._inflight[blob_id] = concurrent.futures.Future()
        if mine:
            self._fetch({blob_id: fut}, remember)
        return fut.result()

    def prefetch(self, blob_ids: Iterable[bytes]) -> None:
        """Start fetching these blobs in the background (those not already here or coming)."""
        mine: dict[bytes, Future] = {}
        with self._lock:
            for bid in blob_ids:
                if bid not in self._memory and bid not in self._inflight:
                    mine[bid] = self._inflight[bid] = concurrent.futures.Future()
        if mine:
            try:
                self._pool.submit(self._fetch, mine, True)
            except RuntimeError:  # shut down: nobody will read them
                self._fail(mine, IntegrityError("the mount is closing"))

    def _fetch(self, claimed: dict[bytes, Future], remember: bool) -> None:
        """Resolve these futures (each the one in flight for its blob), never raising."""
        codec = self.codecs.get()
        left: list[bytes] = []
        for bid, fut in claimed.items():
            stored = self.disk.get(bid) if self.disk is not None else None
            if stored is None:
                left.append(bid)
                continue
            try:
                self._resolve(bid, fut, codec.decode(bid, stored), remember)
            except IntegrityError:  # a damaged or planted cache file: fetch it again
                assert self.disk is not None
                self.disk.discard(bid)
                left.append(bid)
        if not left:
            return
        try:
            for bid, stored in self.access.read_stored(left):
                owned = claimed.get(bid)
                if owned is None:
                    continue
                try:
                    plain = codec.decode(bid, stored)
                except IntegrityError as exc:
                    self._fail({bid: owned}, exc)
                    continue
                self.fetched += 1
                if self.disk is not None:
                    self.disk.put(bid, stored)
                self._resolve(bid, owned, plain, remember)
        except BaseException as exc:
            self._fail(claimed, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._fail(claimed, IntegrityError("the repository did not send a requested blob"))

    def _resolve(self, blob_id: bytes, fut: Future, plain: bytes, remember: bool) -> None:
        with self._lock:
            if self._inflight.get(blob_id) is fut:
                del self._inflight[blob_id]
            if remember and len(plain) <= self.memory_bytes // 4:
                old = self._memory.pop(blob_id, None)
                self._memory_total += len(plain) - (len(old) if old is not None else 0)
                self._memory[blob_id] = plain
                while self._memory_total > self.memory_bytes:
                    _bid, dropped = self._memory.popitem(last=False)
                    self._memory_total -= len(dropped)
        if not fut.done():
            fut.set_result(plain)

    def _fail(self, claimed: dict[bytes, Future], exc: BaseException) -> None:
        """Fail those of these futures that are not resolved yet."""
        with self._lock:
            for bid, fut in claimed.items():
                if self._inflight.get(bid) is fut:
                    del self._inflight[bid]
        for fut in claimed.values():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if not fut.done():
                    fut.set_exception(exc)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
