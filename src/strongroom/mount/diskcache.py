"""A bounded on-disk cache of stored blobs for the mount, under the client's cache folder.

It holds blobs exactly as the server stores them (nonce || AES-256-GCM ciphertext, named by
blob ID), never plaintext: whoever reads the folder learns what the server already knows
(IDs and padded sizes) plus which blobs this user looked at. Every blob taken from it is
decrypted and checked against its ID like one from the server, so a damaged or planted file
is detected, dropped and fetched again. Folders are 0700, files 0600.

Writes go to a temporary file that is renamed into place: a process killed mid-write leaves
only a temporary file, which the next start removes. Nothing is fsync'd: losing the cache
only costs a download. The size bound is kept by this process (least recently used files go
first); two mounts of one account share the folder and may each overshoot it briefly.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..cache import _folder_name, _private_dir, cache_root

_TMP_PREFIX = "tmp-"


class DiskCache:
    def __init__(self, repo_id: str, max_bytes: int, root: Path | None = None) -> None:
        base = root or cache_root()
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = base / _folder_name(repo_id) / "mount-blobs"
        _private_dir(self.path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[bytes, int] = OrderedDict()  # least recently used first
        self.total = 0
        self._load()

    def _file(self, blob_id: bytes) -> Path:
        hexid = blob_id.hex()
        return self.path / hexid[:2] / hexid

    def _load(self) -> None:
        """Index what earlier runs left (oldest first), remove their temporary files."""
        found: list[tuple[int, bytes, int]] = []
        with os.scandir(self.path) as top:
            for sub in top:
                if sub.name.startswith(_TMP_PREFIX):
                    _remove_stale_tmp(Path(sub.path))
                    continue
                if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(sub.path) as files:
                    for f in files:
                        if len(f.name) != 64 or not f.is_file(follow_symlinks=False):
                            continue
                        try:
                            st = f.stat(follow_symlinks=False)
                            found.append((st.st_mtime_ns, bytes.fromhex(f.name), st.st_size))
                        except (OSError, ValueError):
                            continue
        for _mtime, blob_id, size in sorted(found):
            self._sizes[blob_id] = size
            self.total += size
        self._evict()

    def get(self, blob_id: bytes) -> bytes | None:
        with self._lock:
            if blob_id not in self._sizes:
                return None
            self._sizes.move_to_end(blob_id)
        path = self._file(blob_id)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            os.utime(path)  # least recently used order survives a restart
        except OSError:  # being written by another thread, or removed: fetch it instead
            return None
        return data

    def put(self, blob_id: bytes, stored: bytes) -> None:
        if len(stored) > self.max_bytes:
            return
        with self._lock:
            # Room is made before the file is written, so the folder never holds more than
            # the bound, even when the process is killed between the two.
            self.total += len(stored) - self._sizes.pop(blob_id, 0)
            self._evict()
            self._sizes[blob_id] = len(stored)
        path = self._file(blob_id)
        tmp = self.path / f"{_TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(stored)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, path)
        except OSError:  # a full or read-only disk only costs speed
            self.discard(blob_id)
            return
        with self._lock:
            # Another thread may have evicted this blob while its file was being written (its
            # unlink then found nothing): the file must not stay behind uncounted.
            if blob_id not in self._sizes:
                with contextlib.suppress(OSError):
                    path.unlink()

    def discard(self, blob_id: bytes) -> None:
        """Forget a blob whose file is gone or damaged."""
        with self._lock:
            self.total -= self._sizes.pop(blob_id, 0)
        with contextlib.suppress(OSError):
            self._file(blob_id).unlink()

    def _evict(self) -> None:
        # Called with the lock held (or from __init__).
        while self.total > self.max_bytes and self._sizes:
            blob_id, size = self._sizes.popitem(last=False)
            self.total -= size
            with contextlib.suppress(OSError):
                self._file(blob_id).unlink()


def _remove_stale_tmp(path: Path) -> None:
    """A temporary file of a process that is gone (killed mid-write)."""
    try:
        pid = int(path.name[len(_TMP_PREFIX) :].split("-", 1)[0])
    except ValueError:
        pid = 0
    if os.name == "nt":  # os.kill(pid, 0) would end the process there: go by age instead
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime < 3600:
                return
    elif pid > 0 and pid != os.getpid():
        try:
            os.kill(pid, 0)
            return  # still running: its file may be about to be renamed
        except ProcessLookupError:
            pass
        except PermissionError:
            return
    with contextlib.suppress(OSError):
        path.unlink()
