"""Where pack objects live: a local folder (embedded mode) or an S3 bucket (scale-out).

Both keep the same promise to the pack store: `put` returns only once the object is durable
and it is never visible half-written (local: `NAME.tmp`, fsync, rename, folder fsync; S3: a
PUT or a completed multipart upload). Objects are immutable and named by the BLAKE3 hash of
their bytes (64 hex digits, checked here too, so no name can reach outside the store).
"""

from __future__ import annotations

import contextlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Literal

from ..durable import fsync_dir
from ..errors import IntegrityError, RepositoryError

LOCAL_PACK_TARGET = 8 * 1024 * 1024
S3_PACK_TARGET = 32 * 1024 * 1024  # fewer, larger requests: S3 charges and waits per request
_NAME = re.compile(r"[0-9a-f]{64}")

Part = bytes | memoryview


class PackMissing(IntegrityError):
    """A pack the index named is gone (a concurrent GC may have moved its blobs)."""


class ObjectStoreError(RepositoryError):
    """The object store failed or cannot be reached (one line, never a credential)."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a pack name: {name[:80]!r}")
    return name


class ObjectStore(ABC):
    kind: ClassVar[Literal["local", "s3"]]
    target_pack_size: int

    @abstractmethod
    def put(self, name: str, parts: Sequence[Part]) -> None:
        """Store an object durably and atomically (the parts, concatenated)."""

    @abstractmethod
    def read_ranges(self, name: str, ranges: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        """The bytes at each (offset, length), in order; PackMissing if there is no such
        object. A range past the end comes back short (the caller checks lengths)."""

    @abstractmethod
    def read_all(self, name: str) -> bytes: ...

    @abstractmethod
    def tail(self, name: str, length: int) -> tuple[int, bytes]:
        """(object size, its last `length` bytes or all of it if shorter)."""

    @abstractmethod
    def size(self, name: str) -> int | None:
        """The object's size, None if it does not exist."""

    @abstractmethod
    def sizes(self, names: Iterable[str]) -> dict[str, int]:
        """The sizes of those of these objects that exist."""

    @abstractmethod
    def names(self) -> Iterator[str]:
        """Every complete object (in no particular order)."""

    @abstractmethod
    def delete(self, names: Iterable[str]) -> None:
        """Remove objects (absent ones are no error)."""

    @abstractmethod
    def partials(self) -> list[str]:
        """Unfinished writes (local `.tmp` files, S3 multipart uploads) by object name."""

    @abstractmethod
    def remove_partials(self, names: Iterable[str]) -> None:
        """Abandon the unfinished writes of these objects."""

    def describe(self) -> str:
        return self.kind


class LocalObjects(ObjectStore):
    """`ROOT/xx/NAME` files, as embedded repositories have always had them (`ROOT` = packs/)."""

    kind: ClassVar[Literal["local", "s3"]] = "local"

    def __init__(self, root: Path, target_pack_size: int = LOCAL_PACK_TARGET) -> None:
        self.root = root
        self.target_pack_size = target_pack_size

    def path(self, name: str) -> Path:
        return self.root / name[:2] / check_name(name)

    def put(self, name: str, parts: Sequence[Part]) -> None:
        folder = self.root / check_name(name)[:2]
        if _mkdir(folder):
            # A new subfolder is only durable once its parent is fsync'd; without this a power
            # loss could drop the folder, and with it a pack the index already points to.
            fsync_dir(folder.parent)
        final = folder / name
        tmp = folder / (name + ".tmp")
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600
            )
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            # Do not leave a partial pack behind (on a full disk it holds space we need).
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(folder)

    def _open(self, name: str) -> int:
        try:
            return os.open(self.path(name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise PackMissing(f"pack {name[:16]} is missing") from None

    def read_ranges(self, name: str, ranges: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        fd = self._open(name)
        try:
            for offset, length in ranges:
                yield _pread(fd, length, offset)
        finally:
            os.close(fd)

    def read_all(self, name: str) -> bytes:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            raise PackMissing(f"pack {name[:16]} is missing") from None

    def tail(self, name: str, length: int) -> tuple[int, bytes]:
        fd = self._open(name)
        try:
            size = os.fstat(fd).st_size
            start = max(0, size - length)
            return size, _pread(fd, size - start, start)
        finally:
            os.close(fd)

    def size(self, name: str) -> int | None:
        try:
            return os.stat(self.path(name)).st_size
        except FileNotFoundError:
            return None

    def sizes(self, names: Iterable[str]) -> dict[str, int]:
        out = {}
        for name in names:
            size = self.size(name)
            if size is not None:
                out[name] = size
        return out

    def _entries(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for sub in self.root.iterdir():
            if sub.is_dir():
                yield from sub.iterdir()

    def names(self) -> Iterator[str]:
        for entry in self._entries():
            if _NAME.fullmatch(entry.name):
                yield entry.name

    def delete(self, names: Iterable[str]) -> None:
        folders = set()
        for name in names:
            path = self.path(name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                folders.add(path.parent)
        for folder in folders:
            fsync_dir(folder)

    def partials(self) -> list[str]:
        tmp = [e.name[: -len(".tmp")] for e in self._entries() if e.name.endswith(".tmp")]
        return [name for name in tmp if _NAME.fullmatch(name)]

    def remove_partials(self, names: Iterable[str]) -> None:
        for name in names:
            with contextlib.suppress(OSError):
                (self.root / name[:2] / (check_name(name) + ".tmp")).unlink()

    def remove_strays(self, known: set[str]) -> None:
        """Remove every file but `known` packs and their writes in progress (the embedded
        writer, alone under its lock): also files whose names are not pack names at all."""
        for entry in self._entries():
            if entry.name not in known and entry.name.removesuffix(".tmp") not in known:
                with contextlib.suppress(OSError):
                    entry.unlink()


def _mkdir(path: Path) -> bool:
    """Create a folder; True if this call created it (its parent then needs an fsync)."""
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise
        return False
    return True


def _pread(fd: int, length: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, length, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows
    return os.read(fd, length)  # pragma: no cover
