"""Content-defined chunking with FastCDC (pyfastcdc: compiled, releases the GIL).

The gear table is seeded per repository (the seed is part of the encrypted keys), so chunk
boundaries, and hence chunk sizes the server sees, cannot be used to fingerprint known files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pyfastcdc import FastCDC

MIN_SIZE = 256 * 1024
AVG_SIZE = 1024 * 1024  # pyfastcdc's mean is AVG_SIZE + MIN_SIZE ~ 1.25 MiB
MAX_SIZE = 4 * 1024 * 1024


class Readinto(Protocol):
    def readinto(self, buf: memoryview) -> int: ...


class Chunker:
    def __init__(self, seed: int) -> None:
        # pyfastcdc wants a 64-bit seed; 0 would mean "the published default table".
        self._seed = (seed % (2**63 - 1)) + 1
        self._cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=self._seed)

    def chunks(self, stream: Readinto) -> Iterator[memoryview]:
        """Yield chunk views; each view is valid only until the next one is produced."""
        for chunk in self._cdc.cut_stream(stream):
            yield chunk.data

    def fork(self) -> Chunker:
        """A chunker for another thread (FastCDC objects must not be shared)."""
        return Chunker(self._seed - 1)
