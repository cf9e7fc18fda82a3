"""Turning lstat results into tree nodes, portably (Windows has no uid, gid or rdev)."""

from __future__ import annotations

import os
import stat

from . import tree


def node_type(st: os.stat_result) -> str | None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return tree.FILE
    if stat.S_ISDIR(mode):
        return tree.DIR
    if stat.S_ISLNK(mode):
        return tree.SYMLINK
    if stat.S_ISFIFO(mode):
        return tree.FIFO
    if stat.S_ISSOCK(mode):
        return tree.SOCKET
    if stat.S_ISCHR(mode):
        return tree.CHARDEV
    if stat.S_ISBLK(mode):
        return tree.BLOCKDEV
    return None


def node_from_stat(name: str, kind: str, st: os.stat_result) -> tree.Node:
    node = tree.Node(
        name=name,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        uid=getattr(st, "st_uid", 0),
        gid=getattr(st, "st_gid", 0),
    )
    if kind == tree.FILE:
        node.size = st.st_size
        if st.st_nlink > 1:
            node.hardlink = f"{st.st_dev}:{st.st_ino}"
    elif kind in (tree.CHARDEV, tree.BLOCKDEV):
        node.device = getattr(st, "st_rdev", 0)
    return node


def stat_key(kind: str, st: os.stat_result) -> tuple[int, ...]:
    """What must be equal for an entry to count as unchanged since the last backup."""
    return (
        st.st_mode,
        st.st_size if kind == tree.FILE else 0,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        getattr(st, "st_uid", 0),
        getattr(st, "st_gid", 0),
    )


def same_file(node: tree.Node, kind: str, st: os.stat_result) -> bool:
    """True if a node of the previous snapshot describes this file exactly as it is now."""
    return (
        node.type == kind
        and (kind != tree.FILE or node.size == st.st_size)
        and node.mtime_ns == st.st_mtime_ns
        and node.ctime_ns == st.st_ctime_ns
        and node.inode == st.st_ino
        and node.mode == stat.S_IMODE(st.st_mode)
    )
