"""Turning lstat results into tree nodes, portably (Windows has no uid, gid or rdev)."""

from __future__ import annotations

import os
import stat

from . import tree

KINDS = {
    stat.S_IFREG: tree.FILE,
    stat.S_IFDIR: tree.DIR,
    stat.S_IFLNK: tree.SYMLINK,
    stat.S_IFIFO: tree.FIFO,
    stat.S_IFSOCK: tree.SOCKET,
    stat.S_IFCHR: tree.CHARDEV,
    stat.S_IFBLK: tree.BLOCKDEV,
}


def node_type(st: os.stat_result) -> str | None:
    return KINDS.get(stat.S_IFMT(st.st_mode))


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
