"""Packing many small files into ~1 MiB bundle blobs.

Compressing and encrypting each small file alone costs a call per file and compresses badly;
a bundle is compressed once and gives zstd context. Each file is still recognised by its own
keyed content hash, so identical small files are stored once (see archiver and cache).

A bundle belongs to one worker's batch, so filling it needs no lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUNDLE_TARGET = 1024 * 1024
SMALL_FILE_LIMIT = 128 * 1024  # files below this go into bundles


@dataclass
class OpenBundle:
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    # (index of the file in its batch, offset, length) for every file waiting for the blob ID
    waiting: list[tuple[int, int, int]] = field(default_factory=list)
    pieces: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # content ID -> place

    def add(self, index: int, cid: bytes, data: bytes) -> None:
        place = self.pieces.get(cid)
        if place is None:  # identical files within one bundle are stored once too
            place = (self.size, len(data))
            self.pieces[cid] = place
            self.parts.append(data)
            self.size += len(data)
        self.waiting.append((index, place[0], place[1]))

    def full(self) -> bool:
        return self.size >= BUNDLE_TARGET
