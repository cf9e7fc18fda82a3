"""A connection's pending manifest, staged on disk instead of in memory.

A commit may reference millions of blobs (4,000,000 IDs at most, 128 MB of IDs). Held as a
Python set that costs ~110 bytes an ID (430 MB measured); here each part goes to an anonymous
temporary file as it arrives, and the commit streams it back into the store's own temporary
table. Server memory per connection stays at one part; the file vanishes with the connection
(or the process) because it never has a name.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..protocol.codec import ID_SIZE

READ_IDS = 16384  # IDs read back per step while committing


class ManifestStaging:
    def __init__(self, folder: Path, limit: int) -> None:
        self._folder = folder
        self.limit = limit
        self.count = 0  # IDs staged, duplicates included
        self._file: IO[bytes] | None = None

    def add(self, ids: list[bytes]) -> None:
        """Append a part (IDs are 32 bytes each, as the codec enforced)."""
        if self.count + len(ids) > self.limit:
            raise OverflowError("manifest is too large")
        if self._file is None:
            # Closed by take()'s reader or close(): it outlives this call by design.
            self._file = tempfile.TemporaryFile(dir=self._folder, prefix="manifest-")  # noqa: SIM115
        self._file.write(b"".join(ids))
        self.count += len(ids)

    def take(self) -> Iterator[bytes]:
        """The staged IDs, read back in steps; staging starts empty again at once."""
        fh, self._file, self.count = self._file, None, 0
        if fh is None:
            return iter(())
        return _read_back(fh)

    def close(self) -> None:
        fh, self._file, self.count = self._file, None, 0
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()


def _read_back(fh: IO[bytes]) -> Iterator[bytes]:
    try:
        fh.seek(0)
        while True:
            block = fh.read(READ_IDS * ID_SIZE)
            if not block:
                return
            for i in range(0, len(block), ID_SIZE):
                yield block[i : i + ID_SIZE]
    finally:
        fh.close()
