"""Sparse files: where the holes are on backup, and where data goes on restore.

On backup a large file whose allocated blocks are fewer than its size is asked for its data
regions with SEEK_DATA/SEEK_HOLE; only the data is read and chunked (as one stream), and the
holes are stored in the file's tree entry as `[[offset, length], ...]`. Holes shorter than
`MIN_HOLE` are read as the zeros they are, so a file with many tiny holes does not bloat its
tree. On restore the file is created at its full size (all hole) and each piece of data is
written at its place, so the holes stay holes: a 10 GiB file with 1 MiB of data takes ~1 MiB.
"""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Iterator

MIN_HOLE = 64 * 1024
_SEEK_DATA = getattr(os, "SEEK_DATA", None)
_SEEK_HOLE = getattr(os, "SEEK_HOLE", None)
_PREADV = getattr(os, "preadv", None)

Extent = tuple[int, int]  # (offset, length)


def maybe_sparse(st: os.stat_result) -> bool:
    """Fewer blocks than bytes: worth asking for holes (compressed filesystems say so too)."""
    blocks = getattr(st, "st_blocks", None)
    return _SEEK_DATA is not None and blocks is not None and blocks * 512 + MIN_HOLE <= st.st_size


def holes(fd: int, size: int) -> list[Extent]:
    """The holes of at least MIN_HOLE bytes in the first `size` bytes of an open file; [] if
    the filesystem cannot tell."""
    if _SEEK_DATA is None or _SEEK_HOLE is None:
        return []
    out: list[Extent] = []
    pos = 0
    try:
        while pos < size:
            try:
                data = os.lseek(fd, pos, _SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data after pos
                    raise
                data = size
            data = min(data, size)
            if data - pos >= MIN_HOLE:
                out.append((pos, data - pos))
            if data >= size:
                break
            pos = os.lseek(fd, data, _SEEK_HOLE)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return []
        raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return out


def data_extents(hole_list: list[Extent], size: int) -> list[Extent]:
    """The complement of `hole_list` in [0, size)."""
    out: list[Extent] = []
    pos = 0
    for start, length in hole_list:
        if start > pos:
            out.append((pos, start - pos))
        pos = start + length
    if pos < size:
        out.append((pos, size - pos))
    return out


def valid(hole_list: list[Extent], size: int) -> bool:
    """Sorted, not touching, not empty, inside the file."""
    end = -1
    for start, length in hole_list:
        if start <= end or length <= 0 or start + length > size:
            return False
        end = start + length
    return True


class DataReader:
    """Reads the data regions of a file one after the other, as one stream (`readinto`)."""

    def __init__(self, fd: int, extents: list[Extent]) -> None:
        self._fd = fd
        self._extents = extents
        self._i = 0
        self._pos = extents[0][0] if extents else 0

    def readinto(self, buf: memoryview) -> int:
        while self._i < len(self._extents):
            start, length = self._extents[self._i]
            left = start + length - self._pos
            if left <= 0:
                self._i += 1
                if self._i < len(self._extents):
                    self._pos = self._extents[self._i][0]
                continue
            view = memoryview(buf)[:left]
            if _PREADV is not None:
                n = int(_PREADV(self._fd, [view], self._pos))
            else:  # macOS: no preadv
                data = os.pread(self._fd, len(view), self._pos)
                n = len(data)
                view[:n] = data
            if n == 0:  # the file shrank: the caller sees a short read and re-reads it later
                self._i = len(self._extents)
                return 0
            self._pos += n
            return n
        return 0


class HoleMap:
    """Maps positions in a file's data stream (its content pieces, back to back) to positions
    in the file, around its holes."""

    def __init__(self, hole_list: list[Extent]) -> None:
        self._starts: list[int] = []  # data-stream position where each data run begins
        self._offsets: list[int] = []  # ... and where it lies in the file
        skipped = 0
        pos = 0
        for start, length in hole_list:
            if start > pos:
                self._starts.append(pos - skipped)
                self._offsets.append(pos)
            skipped += length
            pos = start + length
        self._starts.append(pos - skipped)  # the run after the last hole (maybe empty)
        self._offsets.append(pos)
        self._lengths = [b - a for a, b in zip(self._starts, self._starts[1:], strict=False)]

    def place(self, stream_pos: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(file offset, start within the piece, length) for a piece of the data stream."""
        i = bisect.bisect_right(self._starts, stream_pos) - 1
        done = 0
        while done < length:
            run_start = self._starts[i]
            into = stream_pos + done - run_start
            room = self._lengths[i] - into if i < len(self._lengths) else length - done
            n = min(room, length - done)
            if n > 0:
                yield self._offsets[i] + into, done, n
                done += n
            i += 1
