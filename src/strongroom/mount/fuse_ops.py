"""Serving a SnapshotView through libfuse 3 with mfusepy.

mfusepy is ctypes bindings for libfuse's high-level API: it installs from PyPI as pure Python
and needs only the libfuse3 runtime at run time (Debian's fuse3 / libfuse3-3; pyfuse3 would
need a compiler, libfuse3-dev and pkg-config to build). It prefers libfuse 2 when both are
installed, so libfuse 3 is named explicitly unless FUSE_LIBRARY_PATH says otherwise.

libfuse runs the file system on its own threads and handles SIGINT, SIGTERM and SIGHUP: they
end the loop, and libfuse unmounts (lazily, so a shell still inside the mount does not keep
it). With fusermount3 installed the mount is made with auto_unmount, so even a killed
process leaves no dead mount behind.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import errno
import importlib
import logging
import os
import shutil
import struct
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..errors import StrongroomError, UsageError
from .view import SnapshotView

# FS_IOC_GETFLAGS as declared (_IOR('f', 1, long)) on 64- and 32-bit Linux.
_GETFLAGS = frozenset({0x80086601, 0x80046601})
_INSTALL = "install libfuse 3 (Debian/Ubuntu: apt-get install fuse3)"


def load_binding() -> ModuleType:
    """mfusepy on libfuse 3, or a one-line error saying what is missing."""
    if sys.platform.startswith("linux") and not os.environ.get("FUSE_LIBRARY_PATH"):
        # Elsewhere (macFUSE, WinFsp) mfusepy finds the library itself; only Linux is tested.
        lib = ctypes.util.find_library("fuse3")
        if lib is None:
            raise StrongroomError(f"FUSE is not available: libfuse 3 is not installed; {_INSTALL}")
        os.environ["FUSE_LIBRARY_PATH"] = lib
    try:
        return importlib.import_module("mfusepy")  # it loads libfuse when imported
    except (OSError, AttributeError, ImportError) as exc:
        raise StrongroomError(f"FUSE is not available ({exc}); {_INSTALL}") from None


def check_mountpoint(path: str) -> str:
    """The absolute mount point, after the checks that give a clearer error than libfuse."""
    full = os.path.abspath(path)
    try:
        st = os.stat(full)
    except FileNotFoundError:
        raise UsageError(f"mount point {path} does not exist (create an empty folder)") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise StrongroomError(
                f"a dead FUSE mount is still at {path}: unmount it with 'fusermount3 -u {path}'"
            ) from None
        raise StrongroomError(f"cannot use mount point {path}: {exc.strerror}") from None
    if not os.path.isdir(full):
        raise UsageError(f"mount point {path} is not a folder")
    if os.path.ismount(full):
        raise StrongroomError(f"something is already mounted at {path}; unmount it first")
    if sys.platform.startswith("linux") and not os.path.exists("/dev/fuse"):
        raise StrongroomError(
            "FUSE is not available: /dev/fuse is missing (load the fuse kernel module; in a "
            "container, pass the device /dev/fuse)"
        )
    if hasattr(os, "geteuid") and os.geteuid() != 0 and st.st_uid != os.geteuid():
        raise StrongroomError(f"mount point {path} is not yours (FUSE mounts need your own folder)")
    return full


class Warner:
    """One line on stderr per problem, the same one at most every 10 seconds."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        from ..cli.errors import display

        now = time.monotonic()
        with self._lock:
            if now - self._last.get(message, -1e9) < 10:
                return
            self._last[message] = now
        print(f"strongroom mount: {display(message)}", file=sys.stderr, flush=True)


class FuseOps:
    """mfusepy's operations (duck-typed: its Operations base class only adds stubs)."""

    use_ns = True  # times in ns

    def __init__(
        self,
        view: SnapshotView,
        fuse: ModuleType,
        warn: Callable[[str], None],
        on_ready: Callable[[], None],
    ) -> None:
        self.view = view
        self._fuse = fuse
        self.warn = warn
        self.on_ready = on_ready

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as exc:
            raise self._fuse.FuseOSError(exc.errno or errno.EIO) from None
        except StrongroomError as exc:
            self.warn(str(exc))
        except Exception as exc:
            self.warn(f"internal error: {type(exc).__name__}: {exc}")
        raise self._fuse.FuseOSError(errno.EIO)

    def init_with_config(self, conn: Any, config: Any) -> None:
        self.on_ready()

    def destroy(self, path: str) -> None:
        pass

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        a = self._call(self.view.getattr, path)
        return {
            "st_ino": a.ino,
            "st_mode": a.st_mode,
            "st_nlink": a.nlink,
            "st_uid": a.uid,
            "st_gid": a.gid,
            "st_size": a.size,
            "st_blocks": a.blocks,
            "st_rdev": a.rdev,
            "st_mtime": a.mtime_ns,
            "st_atime": a.mtime_ns,
            "st_ctime": a.ctime_ns,
        }

    def readlink(self, path: str) -> str:
        target: str = self._call(self.view.readlink, path)
        return target

    def opendir(self, path: str) -> int:
        return 0

    def readdir(self, path: str, fh: int) -> list[Any]:
        entries = self._call(self.view.listdir, path)
        return [".", "..", *((n, {"st_mode": m, "st_ino": i}, 0) for n, m, i in entries)]

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def open(self, path: str, flags: int) -> int:
        if flags & getattr(os, "O_ACCMODE", 3) != os.O_RDONLY:
            raise self._fuse.FuseOSError(errno.EROFS)
        fh: int = self._call(self.view.open, path)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        data: bytes = self._call(self.view.read, fh, offset, size)
        return data

    def release(self, path: str, fh: int) -> int:
        self.view.release(fh)
        return 0

    def listxattr(self, path: str) -> list[str]:
        return list(self._call(self.view.xattrs, path))

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self._call(self.view.xattrs, path).get(name)
        if value is None:
            raise self._fuse.FuseOSError(self._fuse.ENOATTR)
        return bytes(value)

    def ioctl(self, path: str, cmd: int, arg: Any, fh: int, flags: int, data: Any) -> int:
        """FS_IOC_GETFLAGS (lsattr): the stored Linux file flags, as the 32-bit int the kernel
        reads (the ioctl is declared with a long, but every file system answers an int)."""
        if cmd not in _GETFLAGS or not data:
            raise self._fuse.FuseOSError(errno.ENOTTY)
        stored: int = self._call(self.view.flags, path)
        ctypes.memmove(data, struct.pack("=I", stored & 0xFFFFFFFF), 4)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


def serve(
    view: SnapshotView,
    mountpoint: str,
    *,
    allow_other: bool = False,
    warn: Callable[[str], None],
    on_ready: Callable[[], None],
) -> None:
    """Mount and serve until unmounted or signalled; returns after libfuse has unmounted."""
    fuse = load_binding()
    quiet = logging.getLogger("mfusepy")
    if not os.environ.get("STRONGROOM_DEBUG"):  # our errors are reported through `warn`
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    options: dict[str, Any] = {
        "foreground": True,
        "ro": True,
        "fsname": "strongroom",
        "subtype": "strongroom",
        "use_ino": True,  # our inode numbers: hard links share one
        # The kernel keeps what it read across opens while a file's mtime and size stay (a
        # snapshot's files never change; a path whose snapshot was forgotten and whose name
        # went to another one in the same second is read again).
        "auto_cache": True,
    }
    if allow_other:
        # Others see only what the stored modes and owners allow them.
        options.update(allow_other=True, default_permissions=True)
    if (fuse.fuse_version_major, fuse.fuse_version_minor) >= (3, 12):
        # Without it libfuse 3.12-3.14 warns about its own default on every start.
        options["max_idle_threads"] = 16
    if shutil.which("fusermount3"):
        options["auto_unmount"] = True
    mounted = threading.Event()

    def ready() -> None:
        mounted.set()
        on_ready()

    ops = FuseOps(view, fuse, warn, ready)
    try:
        fuse.FUSE(ops, mountpoint, **options)
    except RuntimeError as exc:
        # libfuse also ends with an error code after a signal: only a mount that never
        # started is a failure.
        if not mounted.is_set():
            raise StrongroomError(
                f"could not mount at {mountpoint} (libfuse failed with code {exc}; see above)"
            ) from None
    finally:
        with contextlib.suppress(Exception):
            view.blobs.close()
