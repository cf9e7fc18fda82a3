"""Extended attributes and Linux file flags: read on backup, written back on restore.

Extended attributes: every name `listxattr` shows the caller is stored (user.*; as root also
trusted.* and security.*, so file capabilities and SELinux labels; POSIX ACLs are the
system.posix_acl_access and system.posix_acl_default attributes). The kernel already hides what
the caller may not read; an attribute that is listed but cannot be read is a warning, never a
failed backup. In a tree entry they are `[[name, base64 value], ...]`, sorted by the name's
bytes (docs/FORMAT.md).

File flags (chattr/lsattr: immutable, append-only, nodump, noatime, ...) are read with the
FS_IOC_GETFLAGS ioctl on an open descriptor, so only regular files and folders have them (opening
a device or FIFO has effects, a symlink cannot be opened). Only the flags a user may set are kept;
those the filesystem manages itself (extents, inline data, encryption, ...) are not.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import struct
import sys
from typing import Any

XATTRS = hasattr(os, "listxattr")
FLAGS = sys.platform.startswith("linux")

# _IOR('f', 1, long) and _IOW('f', 2, long); the kernel reads and writes an int through them.
_LONG = struct.calcsize("l")
FS_IOC_GETFLAGS = 0x80006601 | (_LONG << 16)
FS_IOC_SETFLAGS = 0x40006602 | (_LONG << 16)
_FLAGS_BUF = struct.Struct(f"@I{_LONG - 4}x" if _LONG > 4 else "@I")

# The flags chattr can set, with lsattr's letters (linux/fs.h).
FLAG_LETTERS: dict[int, str] = {
    0x00000001: "s",  # secure deletion
    0x00000002: "u",  # undeletable
    0x00000004: "c",  # compressed
    0x00000008: "S",  # synchronous updates
    0x00000010: "i",  # immutable
    0x00000020: "a",  # append only
    0x00000040: "d",  # no dump
    0x00000080: "A",  # no atime updates
    0x00000400: "m",  # no compression
    0x00004000: "j",  # data journalling
    0x00008000: "t",  # no tail merging
    0x00010000: "D",  # synchronous folder updates
    0x00020000: "T",  # top of folder hierarchy
    0x00800000: "C",  # no copy on write
    0x02000000: "x",  # DAX
    0x20000000: "P",  # project ID inheritance
}
SETTABLE = sum(FLAG_LETTERS)
# Set last on restore (nothing can be written, linked or changed in such a file afterwards).
LOCKING = 0x10 | 0x20

# "This filesystem has no flags / no xattrs": nothing to store, nothing to warn about.
_UNSUPPORTED = frozenset(
    {errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
)
_VANISHED = frozenset({errno.ENODATA, errno.ENOENT})

XATTR_NAME_MAX = 255  # linux/limits.h
XATTR_SIZE_MAX = 65536
Pairs = list[list[str]]  # [[name, base64 value], ...] as a tree entry stores them


def flag_string(flags: int) -> str:
    """lsattr's letters for the flags ("ia" for immutable and append-only)."""
    return "".join(letter for bit, letter in FLAG_LETTERS.items() if flags & bit)


def unsupported(exc: OSError) -> bool:
    return exc.errno in _UNSUPPORTED


def read_xattrs(where: int | str, warnings: list[str], shown: str) -> Pairs | None:
    """The extended attributes of an open descriptor or of a path (never following a link),
    or None if there are none. Each one that cannot be read adds a warning naming `shown`."""
    if not XATTRS:
        return None
    follow = isinstance(where, int)  # descriptors take no follow_symlinks=False
    try:
        names = os.listxattr(where, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED and exc.errno not in _VANISHED:
            warnings.append(f"{shown}: cannot list extended attributes ({exc.strerror})")
        return None
    if not names:
        return None
    out: list[tuple[bytes, str, bytes]] = []
    for name in names:
        try:
            value = os.getxattr(where, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in _VANISHED:
                warnings.append(
                    f"{shown}: cannot read extended attribute {name} ({exc.strerror}); not stored"
                )
            continue
        out.append((os.fsencode(name), name, value))
    if not out:
        return None
    out.sort()
    return [[name, base64.b64encode(value).decode("ascii")] for _k, name, value in out]


def read_flags(fd: int, warnings: list[str], shown: str) -> int:
    """The settable file flags of an open descriptor (0 where the filesystem has none)."""
    if not FLAGS:
        return 0
    try:
        return get_flags(fd) & SETTABLE
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            warnings.append(f"{shown}: cannot read file flags ({exc.strerror})")
        return 0


def read_attrs_fd(fd: int, shown: str) -> tuple[Pairs | None, int, list[str] | None]:
    """A regular file's extended attributes, flags and the warnings reading them gave."""
    warnings: list[str] = []
    xattrs = read_xattrs(fd, warnings, shown)
    flags = read_flags(fd, warnings, shown)
    return xattrs, flags, warnings or None


def read_dir_flags(path: str, warnings: list[str]) -> int:
    """A folder's flags: opened without following a link (unreadable folders are warned about
    by the scanner already)."""
    if not FLAGS:
        return 0
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError:
        return 0
    try:
        return read_flags(fd, warnings, path)
    finally:
        os.close(fd)


def get_flags(fd: int) -> int:
    """All the flags of an open file or folder (OSError where the filesystem has none)."""
    import fcntl

    raw = fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(_FLAGS_BUF.size))
    return int(_FLAGS_BUF.unpack(raw)[0])


def _put_flags(fd: int, flags: int) -> None:
    import fcntl

    fcntl.ioctl(fd, FS_IOC_SETFLAGS, _FLAGS_BUF.pack(flags))


def set_flags(fd: int, flags: int) -> None:
    """Give an open file or folder these settable flags, keeping the filesystem's own."""
    current = get_flags(fd)
    wanted = (current & ~SETTABLE) | (flags & SETTABLE)
    if wanted != current:
        _put_flags(fd, wanted)


def clear_locking(fd: int) -> bool:
    """Clear the immutable and append-only flags of an open file or folder; True if it had any."""
    current = get_flags(fd)
    if not current & LOCKING:
        return False
    _put_flags(fd, current & ~LOCKING)
    return True


def decode_pairs(raw: Any) -> list[tuple[str, bytes]] | None:
    """A tree entry's "xattrs" as (name, value) pairs; None if malformed."""
    if not isinstance(raw, list):
        return None
    out: list[tuple[str, bytes]] = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2):
            return None
        name, value = pair
        if not isinstance(name, str) or not isinstance(value, str) or not _plausible(name):
            return None
        try:
            raw_value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw_value) > XATTR_SIZE_MAX:
            return None
        out.append((name, raw_value))
    return out


def _plausible(name: str) -> bool:
    """A name the kernel could have listed: 1 to 255 bytes, no NUL."""
    try:
        raw = os.fsencode(name)
    except UnicodeError:
        return False
    return 0 < len(raw) <= XATTR_NAME_MAX and b"\0" not in raw


def encode_pairs(pairs: list[tuple[str, bytes]]) -> Pairs:
    ordered = sorted(pairs, key=lambda p: os.fsencode(p[0]))
    return [[name, base64.b64encode(value).decode("ascii")] for name, value in ordered]


# POSIX ACLs as the kernel stores them in system.posix_acl_*: a version, then (tag, perm, id).
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_ACL_NAMED = frozenset({0x02, 0x08})


def acl_text(value: bytes) -> str | None:
    """getfacl's short form ("user::rw-,user:1000:r--,group::r--,mask::r--,other::---"), or
    None if the value is not a POSIX ACL."""
    body = len(value) - _ACL_HEADER.size
    if body < 0 or body % _ACL_ENTRY.size or _ACL_HEADER.unpack_from(value)[0] != 2:
        return None
    parts = []
    for tag, perm, ident in _ACL_ENTRY.iter_unpack(value[_ACL_HEADER.size :]):
        kind = _ACL_TAGS.get(tag)
        if kind is None:
            return None
        who = str(ident) if tag in _ACL_NAMED else ""
        rwx = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        parts.append(f"{kind}:{who}:{rwx}")
    return ",".join(parts)
