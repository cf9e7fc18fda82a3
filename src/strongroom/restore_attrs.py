"""Restore's side of extended attributes and file flags.

The restorer calls these on descriptors it opened itself (files, folders) or, for links and
special files that cannot be opened, on the name inside a folder descriptor through
/proc/self/fd/N/NAME without following the last component. What cannot be restored (trusted.*
or security.capability as an ordinary user, a flag the target's filesystem lacks) is a
warning, summed up per attribute and reason, so that a whole tree of them is one line.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass

from .fsattrs import XATTRS, flag_string, set_flags, unsupported
from .tree import Node

PROC_FD = os.path.isdir("/proc/self/fd")


@dataclass(slots=True)
class _Failure:
    count: int
    example: str


class AttrWriter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], _Failure] = {}

    def xattrs(self, where: int | str, node: Node, shown: str, *, follow: bool = True) -> None:
        """Set a node's extended attributes on a descriptor or path (`follow` False: a link)."""
        if not node.xattrs:
            return
        if not XATTRS:
            self._failed("extended attributes", "not supported on this system", shown)
            return
        for name, value in node.xattr_values():
            try:
                os.setxattr(where, name, value, follow_symlinks=follow)
            except OSError as exc:
                self._failed(f"extended attribute {name}", _reason(exc), shown)

    def xattrs_at(self, dir_fd: int | None, name: str, node: Node, shown: str) -> None:
        """A link's or special file's attributes, by its name in a folder descriptor."""
        if not node.xattrs:
            return
        if dir_fd is None:  # restoring by path: `name` is the full path
            self.xattrs(name, node, shown, follow=False)
        elif PROC_FD:
            self.xattrs(f"/proc/self/fd/{dir_fd}/{name}", node, shown, follow=False)
        else:
            self._failed("extended attributes", "no /proc to reach links safely", shown)

    def flags(self, fd: int, node: Node, shown: str) -> None:
        try:
            set_flags(fd, node.flags)
        except OSError as exc:
            self._failed(f"file flags '{flag_string(node.flags)}'", _reason(exc), shown)

    def flags_failed(self, node: Node, exc: OSError, shown: str) -> None:
        self._failed(f"file flags '{flag_string(node.flags)}'", _reason(exc), shown)

    def warnings(self) -> list[str]:
        out = []
        for (what, reason), f in sorted(self._failures.items()):
            if f.count == 1:
                out.append(f"{f.example}: {what} not restored ({reason})")
            else:
                out.append(f"{what} not restored on {f.count} entries ({reason}), e.g. {f.example}")
        return out

    def _failed(self, what: str, reason: str, shown: str) -> None:
        with self._lock:
            f = self._failures.get((what, reason))
            if f is None:
                self._failures[(what, reason)] = _Failure(1, shown)
            else:
                f.count += 1


def _reason(exc: OSError) -> str:
    if unsupported(exc):
        return "the target's filesystem does not support it"
    if exc.errno in (errno.EPERM, errno.EACCES):
        return f"{exc.strerror}: needs more privileges"
    return exc.strerror or str(exc)
