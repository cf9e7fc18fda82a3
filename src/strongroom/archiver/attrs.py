"""Extended attributes and file flags of the entries the file readers do not open.

Files being read get theirs from the reader's descriptor (`smallfiles`, `file_saver`). Folders,
links and special files, and files whose content is kept from the parent snapshot while their
attributes cannot be (an older version made it), get theirs here, by path, on the walk's thread.
An unchanged entry keeps the parent's attributes: setting an xattr, an ACL or a flag changes
the ctime, which change detection compares.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .. import tree
from ..fsattrs import Pairs, read_attrs_fd, read_dir_flags, read_xattrs

_FILE_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_BINARY", 0)
)
_O_NOATIME = getattr(os, "O_NOATIME", 0)


def fill(
    entry: tree.Entry,
    full: str,
    kind: str,
    st: os.stat_result,
    prev: tree.Entry | None,
    trust: bool,
    warn: Callable[[str], None],
) -> bool:
    """Give an entry the parent's attributes if they still hold (`trust`: the parent recorded
    them), else read them now. False if some could not be read: the entry's ctime is then 0,
    so that they are read again next time."""
    if trust and same_attrs(prev, kind, st):
        assert prev is not None
        tree.copy_keys(entry, prev, tree.ATTR_KEYS)
        return True
    warnings: list[str] = []
    set_attrs(entry, *read_by_path(full, kind, warnings))
    for message in warnings:
        warn(message)
    if warnings:
        entry["ctime_ns"] = 0
    return not warnings


def read_by_path(full: str, kind: str, warnings: list[str]) -> tuple[Pairs | None, int]:
    """An entry's extended attributes and flags, never following a link."""
    if kind == tree.FILE:
        fd = _open_file(full)
        if fd is not None:
            try:
                xattrs, flags, found = read_attrs_fd(fd, full)
            finally:
                os.close(fd)
            warnings.extend(found or ())
            return xattrs, flags
    xattrs = read_xattrs(full, warnings, full)
    flags = read_dir_flags(full, warnings) if kind == tree.DIR else 0
    return xattrs, flags


def set_attrs(entry: tree.Entry, xattrs: Pairs | None, flags: int) -> None:
    if flags:
        tree.put(entry, "flags", flags)
    if xattrs:
        tree.put(entry, "xattrs", xattrs)


def same_attrs(prev: tree.Entry | None, kind: str, st: os.stat_result) -> bool:
    """True if the parent snapshot's entry still describes this entry's attributes."""
    return (
        prev is not None
        and prev.get("type") == kind
        and prev.get("ctime_ns") == st.st_ctime_ns
        and prev.get("inode") == st.st_ino
    )


def _open_file(full: str) -> int | None:
    try:
        return os.open(full, _FILE_FLAGS | _O_NOATIME)
    except PermissionError:
        pass
    except OSError:
        return None
    try:  # O_NOATIME needs ownership of the file
        return os.open(full, _FILE_FLAGS)
    except OSError:
        return None
