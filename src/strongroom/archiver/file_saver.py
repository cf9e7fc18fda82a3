"""Stage 2, the file saver: read the files that changed and turn them into content references.

- Small files (under 128 KiB) are collected into batches (64 files or 4 MiB) and read, hashed,
  bundled, compressed and encrypted by `smallfiles.SmallFileReader`: in threads at first, then,
  once the backup proves big enough, in one worker process per core, since their per-file
  Python work would otherwise hold this process's interpreter lock.
- Large files are cut by FastCDC in worker threads of this process (chunking, zstd, AES-GCM
  and BLAKE3 release the lock); each chunk goes through the blob saver.
- Two names of one hard-linked file are read once.

`save()` returns at once with a future and an index; the tree saver collects the results. The
walk stays at most `MAX_OUTSTANDING` batches ahead of the readers, so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import io
import os
import stat
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

from ..blobs import BlobType
from ..bundler import SMALL_FILE_LIMIT
from ..cache import small_record
from ..chunker import Chunker
from ..fsattrs import Pairs, read_attrs_fd
from ..smallfiles import READ_FLAGS, BatchOutcome, Ref, SmallFileReader, init_process
from ..smallfiles import read_batch_in_process as _read_in_process
from ..sparse import DataReader, Extent, data_extents, holes, maybe_sparse
from ..tree import ContentRef
from .blob_saver import BlobSaver

if TYPE_CHECKING:  # multiprocessing is imported when the processes start (most backups: never)
    from concurrent.futures import ProcessPoolExecutor

_O_NOATIME = getattr(os, "O_NOATIME", 0)

BATCH_FILES = 64  # small files per worker task: fewer futures, less lock ping-pong
BATCH_BYTES = 4 * 1024 * 1024
MAX_OUTSTANDING = 16  # batches submitted but not yet read
PROCESS_AFTER = 16  # batches read in threads before worker processes are worth starting

ProgressFn = Callable[[int, int], None]  # (files done, bytes done) increments


class Saved(NamedTuple):
    refs: list[ContentRef]
    size: int  # the file's size, holes included
    changed: bool  # size or mtime changed while it was read: stored as read, re-read next time
    xattrs: Pairs | None = None
    flags: int = 0
    warnings: list[str] | None = None  # attributes that could not be read
    holes: list[Extent] | None = None  # a sparse file's holes (the refs hold only its data)


class FileSkipped(Exception):
    """A file that could not be read (its message is the warning)."""


FileResult = Saved | FileSkipped
BatchFuture = Future[list[FileResult]]


def processes_allowed() -> bool:
    return not os.environ.get("STRONGROOM_NO_PROCESSES")


class FileSaver:
    def __init__(
        self,
        blobs: BlobSaver,
        known_small: Callable[[], Mapping[bytes, Ref]],
        workers: int,
        progress: ProgressFn,
    ) -> None:
        self.blobs = blobs
        self.repo = blobs.repo
        self.workers = workers
        self.progress = progress
        self.bytes_read = 0
        self.new_small = bytearray()  # packed cache records (72 bytes a small file)
        self._known_small = known_small
        self._known_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="backup")
        self._procs: ProcessPoolExecutor | None = None
        self._batch: list[tuple[str, os.stat_result]] = []
        self._batch_bytes = 0
        self._batch_future: BatchFuture = Future()
        self._batches = 0
        self._outstanding: deque[BatchFuture] = deque()
        self._inodes: dict[tuple[int, int], tuple[BatchFuture, int]] = {}
        self._local = threading.local()

    def save(self, full: str, st: os.stat_result) -> tuple[BatchFuture, int]:
        """Start reading a regular file; its result will be item `index` of the future's list."""
        if st.st_nlink > 1:
            shared = self._inodes.get((st.st_dev, st.st_ino))
            if shared is not None:  # another name of a file we are already reading
                return shared
        if st.st_size >= SMALL_FILE_LIMIT:
            large: BatchFuture = Future()
            self.pool.submit(self._read_large, full, st, large)
            place = (large, 0)
        else:
            batch = self._batch
            batch.append((full, st))
            self._batch_bytes += st.st_size
            place = (self._batch_future, len(batch) - 1)
            if len(batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
                self.flush()
        if st.st_nlink > 1:
            self._inodes[(st.st_dev, st.st_ino)] = place
        return place

    def flush(self) -> None:
        """Hand the collected small files to a reader; the future was made when the batch began."""
        if not self._batch:
            return
        batch, future = self._batch, self._batch_future
        self._batch, self._batch_bytes = [], 0
        self._batch_future = Future()
        items = [(full, st.st_size, st.st_mtime_ns) for full, st in batch]
        self._batches += 1
        if self._batches == PROCESS_AFTER and self.workers > 1 and processes_allowed():
            self._start_processes()
        if self._procs is not None:
            with _workers_skip_main():
                done = self._procs.submit(_read_in_process, items)
            done.add_done_callback(lambda f: self._absorb(f, items, future))
        else:
            self.pool.submit(self._read_batch_here, items, future)
        # Keep the walk at most a few batches ahead of the readers, so the metadata waiting for
        # them (and thus memory) stays bounded however many files the tree has.
        self._outstanding.append(future)
        while len(self._outstanding) > MAX_OUTSTANDING:
            self._outstanding.popleft().exception()
        while self._outstanding and self._outstanding[0].done():
            self._outstanding.popleft()

    def close(self) -> None:
        if self._procs is not None:
            self._procs.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)

    # ---- small files ---------------------------------------------------------------------------

    def _start_processes(self) -> None:
        """Small backups never pay for starting the worker processes (nor for importing them)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        keys = self.repo.keys
        known = self.blobs.known
        with self._known_lock:  # the workers get only what is still in the repository
            small = {c: r for c, r in self._known_small().items() if r[0] in known}
        self._procs = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_process,
            initargs=(os.getpid(), keys.data_key, keys.id_key, small),
        )

    def _read_batch_here(self, items: list[tuple[str, int, int]], future: BatchFuture) -> None:
        """Before the processes start (or with one worker): the same reader, in a thread."""
        reader: SmallFileReader | None = getattr(self._local, "reader", None)
        if reader is None:
            with self._known_lock:
                known = self._known_small()
            keys = self.repo.keys
            reader = SmallFileReader(keys.data_key, keys.id_key, known, self.blobs.known)
            self._local.reader = reader
        done: Future[BatchOutcome] = Future()
        try:
            done.set_result(reader.read_batch(items))
        except BaseException as exc:
            done.set_exception(exc)
        self._absorb(done, items, future)

    def _absorb(
        self, done: Future[BatchOutcome], items: list[tuple[str, int, int]], future: BatchFuture
    ) -> None:
        """Store a batch's bundles and give its files their results (any thread)."""
        try:
            outcome = done.result()
            for blob_id, stored in outcome.blobs:
                self.blobs.save_encoded(blob_id, BlobType.DATA, stored)
            for cid, (blob_id, offset, length) in outcome.pieces:
                self.new_small += small_record(cid, blob_id, offset, length)
            results: list[FileResult] = []
            files = nbytes = 0
            for (full, _size, _mtime), res in zip(items, outcome.files, strict=True):
                if res.refs is None:
                    results.append(FileSkipped(res.error or f"{full}: skipped"))
                    continue
                files += 1
                nbytes += res.size
                refs = [ContentRef(*r) for r in res.refs]
                results.append(
                    Saved(refs, res.size, res.changed, res.xattrs, res.flags, res.warnings)
                )
            self.bytes_read += nbytes
            self.progress(files, nbytes)
        except BaseException as exc:
            future.set_exception(exc)
            return
        future.set_result(results)

    # ---- large files ---------------------------------------------------------------------------

    def _read_large(self, full: str, st: os.stat_result, future: BatchFuture) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result([self._read_large_file(full, st)])
        except FileSkipped as exc:
            future.set_result([exc])
        except BaseException as exc:
            future.set_exception(exc)

    def _read_large_file(self, full: str, st: os.stat_result) -> Saved:
        try:
            fd = os.open(full, READ_FLAGS | _O_NOATIME)
        except PermissionError as exc:
            if not _O_NOATIME:
                raise FileSkipped(f"{full}: cannot read ({exc.strerror}); skipped") from None
            try:  # O_NOATIME needs ownership of the file
                fd = os.open(full, READ_FLAGS)
            except OSError as exc2:
                raise FileSkipped(f"{full}: cannot read ({exc2.strerror}); skipped") from None
        except OSError as exc:
            raise FileSkipped(f"{full}: cannot read ({exc.strerror}); skipped") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FileSkipped(f"{full}: is no longer a regular file; skipped")
            gaps = holes(fd, st.st_size) if maybe_sparse(st) else []
            refs, size = self._read_chunked(fd, st.st_size, gaps)
            after = os.fstat(fd)
            xattrs, flags, warnings = read_attrs_fd(fd, full)
        except OSError as exc:
            raise FileSkipped(f"{full}: read error ({exc.strerror}); skipped") from None
        finally:
            os.close(fd)
        self.bytes_read += size
        size += sum(length for _start, length in gaps)
        changed = (
            size != st.st_size or after.st_size != st.st_size or after.st_mtime_ns != st.st_mtime_ns
        )
        self.progress(1, size)
        return Saved(refs, size, changed, xattrs, flags, warnings, gaps or None)

    def _read_chunked(
        self, fd: int, limit: int, gaps: list[Extent]
    ) -> tuple[list[ContentRef], int]:
        """The file's data as chunks (only the data regions of a sparse file), and its length."""
        chunker: Chunker | None = getattr(self._local, "chunker", None)
        if chunker is None:
            chunker = Chunker(self.repo.keys.chunker_seed)
            self._local.chunker = chunker
        refs: list[ContentRef] = []
        size = 0
        if gaps:
            for view in chunker.chunks(DataReader(fd, data_extents(gaps, limit))):
                refs.append(self.blobs.save_chunk(view))
                size += len(view)
            return refs, size
        with io.FileIO(os.dup(fd), "rb") as raw:
            # Read no further than the size lstat saw: a growing file cannot stall the backup.
            for view in chunker.chunks(_Limited(raw, limit)):
                refs.append(self.blobs.save_chunk(view))
                size += len(view)
        return refs, size


class _Limited:
    """A raw file that ends at `limit` bytes, for the chunker's readinto loop."""

    def __init__(self, raw: io.FileIO, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def readinto(self, buf: memoryview) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buf)[: self._left]
        n = self._raw.readinto(view) or 0
        self._left -= n
        return n


@contextlib.contextmanager
def _workers_skip_main() -> Iterator[None]:
    """Workers are started by `submit`. With the spawn method a new worker re-imports the
    program's main module (the CLI, ~16 MiB it does not need); a main module that names itself
    `__main__` is skipped, so pretend to be one while submitting."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = None
