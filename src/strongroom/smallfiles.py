"""Reading small files into bundles: the per-file hot loop of a first backup.

It runs in worker processes (each with its own GIL) so that the Python work per file —
open, read, hash, bundle — uses every core; with one worker it runs in a thread instead. It is
self-contained and picklable in and out: paths in, encrypted bundles and references out.
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .blobs import BlobCodec
from .bundler import SMALL_FILE_LIMIT, OpenBundle
from .crypto import BlobHasher
from .fsattrs import Pairs, read_attrs_fd

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOATIME = getattr(os, "O_NOATIME", 0)
# O_NOFOLLOW: never read through a link swapped in after lstat. O_NONBLOCK: a FIFO swapped in
# must not hang the backup (no effect on regular files).
READ_FLAGS = os.O_RDONLY | _O_BINARY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)

Ref = tuple[bytes, int, int]  # blob ID, offset, length


@dataclass
class FileOutcome:
    refs: list[Ref] | None = None  # None: skipped (see error)
    size: int = 0
    changed: bool = False  # size or mtime changed while reading
    error: str | None = None
    xattrs: Pairs | None = None  # extended attributes, as a tree entry stores them
    flags: int = 0  # file flags (chattr)
    warnings: list[str] | None = None  # attributes that could not be read


@dataclass
class BatchOutcome:
    files: list[FileOutcome]
    blobs: list[tuple[bytes, bytes]] = field(default_factory=list)  # sealed bundles: ID, stored
    pieces: list[tuple[bytes, Ref]] = field(default_factory=list)  # new content ID -> place


class SmallFileReader:
    def __init__(
        self,
        data_key: bytes,
        id_key: bytes,
        known_small: Mapping[bytes, Ref] | None = None,
        live: Container[bytes] | None = None,
    ) -> None:
        self.hasher = BlobHasher(id_key)
        self.codec = BlobCodec(AESGCM(data_key), self.hasher)
        # Content IDs stored by earlier batches of this reader.
        self.seen: dict[bytes, Ref] = {}
        # ... and by earlier backups (the cache's map, shared, never copied); with `live`, an
        # entry counts only if its bundle is still in the repository.
        self._earlier: Mapping[bytes, Ref] = known_small or {}
        self._live = live

    def read_batch(self, items: list[tuple[str, int, int]]) -> BatchOutcome:
        """items: (path, size, mtime_ns) from lstat; every file is smaller than the limit."""
        out = BatchOutcome(files=[FileOutcome() for _ in items])
        bundle = OpenBundle()
        for i, (path, size, mtime_ns) in enumerate(items):
            outcome = out.files[i]
            data = self._read(path, size, mtime_ns, outcome)
            if data is None:
                continue
            outcome.size = len(data)
            if not data:
                outcome.refs = []
                continue
            cid = self.hasher(data)
            known = self.seen.get(cid) or self._stored_before(cid)
            if known is not None:
                outcome.refs = [known]
                continue
            bundle.add(i, cid, data)
            if bundle.full():
                self._seal(bundle, out)
                bundle = OpenBundle()
        self._seal(bundle, out)
        return out

    def _stored_before(self, cid: bytes) -> Ref | None:
        ref = self._earlier.get(cid)
        if ref is None or (self._live is not None and ref[0] not in self._live):
            return None
        return ref

    def _read(self, path: str, size: int, mtime_ns: int, outcome: FileOutcome) -> bytes | None:
        try:
            fd = os.open(path, READ_FLAGS | _O_NOATIME)
        except PermissionError:
            try:  # O_NOATIME needs ownership of the file
                fd = os.open(path, READ_FLAGS)
            except OSError as exc:
                outcome.error = f"{path}: cannot read ({exc.strerror}); skipped"
                return None
        except OSError as exc:
            outcome.error = f"{path}: cannot read ({exc.strerror}); skipped"
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                outcome.error = f"{path}: is no longer a regular file; skipped"
                return None
            # Read what lstat promised, plus one byte to notice growth; never more than the
            # small-file limit, so a file that keeps growing cannot stall the backup.
            data = os.read(fd, min(size + 1, SMALL_FILE_LIMIT))
            if len(data) < size:
                parts = [data]
                while sum(map(len, parts)) < size:
                    block = os.read(fd, size - sum(map(len, parts)))
                    if not block:
                        break
                    parts.append(block)
                data = b"".join(parts)
            after = os.fstat(fd)
            outcome.xattrs, outcome.flags, outcome.warnings = read_attrs_fd(fd, path)
        except OSError as exc:
            outcome.error = f"{path}: read error ({exc.strerror}); skipped"
            return None
        finally:
            os.close(fd)
        if len(data) > size:
            data = data[:size]  # store the size lstat saw; the growth is read next time
            outcome.changed = True
        if len(data) != size or after.st_size != size or after.st_mtime_ns != mtime_ns:
            outcome.changed = True
        return data

    def _seal(self, bundle: OpenBundle, out: BatchOutcome) -> None:
        if not bundle.parts:
            return
        plaintext = b"".join(bundle.parts)
        blob_id = self.hasher(plaintext)
        out.blobs.append((blob_id, self.codec.encode(blob_id, plaintext)))
        for index, offset, length in bundle.waiting:
            out.files[index].refs = [(blob_id, offset, length)]
        for cid, (offset, length) in bundle.pieces.items():
            ref = (blob_id, offset, length)
            self.seen[cid] = ref
            out.pieces.append((cid, ref))


# ---- process pool entry points (module level so they pickle) ---------------------------------

_reader: SmallFileReader | None = None


def init_process(
    parent: int, data_key: bytes, id_key: bytes, known_small: dict[bytes, Ref]
) -> None:
    global _reader
    _die_with_parent(parent)
    _reader = SmallFileReader(data_key, id_key, known_small)


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive a backup that was killed (kill -9 gives the pool no chance to
    stop it, and it would keep the terminal's pipes open). `parent` is the backup's PID, passed
    in: the parent may already be gone when this runs."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:  # portable fallback: notice being re-parented
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def read_batch_in_process(items: list[tuple[str, int, int]]) -> BatchOutcome:
    assert _reader is not None, "init_process was not called"
    return _reader.read_batch(items)
