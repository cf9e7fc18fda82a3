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


def hostname() -> str:
    """This machine's name (socket, ~9 ms to import, only on platforms without uname)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


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


def entry_from_stat(name: str, kind: str, st: os.stat_result) -> tree.Entry:
    """`node_from_stat(name, kind, st).encode()` without the Node (the backup's hot path).

    Files get an empty "content" and dirs a None "subtree", in their canonical places, for the
    caller to fill in; symlinks likewise a None "target".
    """
    e: tree.Entry = {}
    if kind == tree.FILE:
        e["content"] = []
    e["ctime_ns"] = st.st_ctime_ns
    if kind in (tree.CHARDEV, tree.BLOCKDEV):
        device = getattr(st, "st_rdev", 0)
        if device:
            e["device"] = device
    e["gid"] = getattr(st, "st_gid", 0)
    if kind == tree.FILE and st.st_nlink > 1:
        e["hardlink"] = f"{st.st_dev}:{st.st_ino}"
    e["inode"] = st.st_ino
    e["mode"] = stat.S_IMODE(st.st_mode)
    e["mtime_ns"] = st.st_mtime_ns
    e["name"] = name
    if kind == tree.FILE:
        e["size"] = st.st_size
    elif kind == tree.DIR:
        e["subtree"] = None
    elif kind == tree.SYMLINK:
        e["target"] = None
    e["type"] = kind
    e["uid"] = getattr(st, "st_uid", 0)
    return e


def same_entry(old: tree.Entry, kind: str, st: os.stat_result) -> bool:
    """`same_file` for an encoded entry of the previous snapshot."""
    return (
        old.get("type") == kind
        and (kind != tree.FILE or old.get("size") == st.st_size)
        and old.get("mtime_ns") == st.st_mtime_ns
        and old.get("ctime_ns") == st.st_ctime_ns
        and old.get("inode") == st.st_ino
        and old.get("mode") == stat.S_IMODE(st.st_mode)
    )


def same_but_ctime(old: tree.Entry, st: os.stat_result) -> bool:
    """Unchanged except for ctime: a file stored with ctime 0 (racy, or changed while read)."""
    return (
        old.get("size") == st.st_size
        and old.get("mtime_ns") == st.st_mtime_ns
        and old.get("inode") == st.st_ino
        and old.get("mode") == stat.S_IMODE(st.st_mode)
    )
