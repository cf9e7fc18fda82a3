"""Human-readable numbers for summaries and tables."""

from __future__ import annotations

import stat
from datetime import datetime

from .. import tree


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def local_time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


_TYPE_CHAR = {
    tree.FILE: "-",
    tree.DIR: "d",
    tree.SYMLINK: "l",
    tree.FIFO: "p",
    tree.SOCKET: "s",
    tree.CHARDEV: "c",
    tree.BLOCKDEV: "b",
}


def mode_string(node: tree.Node) -> str:
    return _TYPE_CHAR.get(node.type, "?") + stat.filemode(node.mode)[1:]
