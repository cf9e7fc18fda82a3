"""Names from a snapshot are untrusted input: only plain single components may reach the disk."""

from __future__ import annotations

import ntpath
import os

_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{i}" for dev in ("COM", "LPT") for i in [*"123456789", "¹", "²", "³"]]
)


def is_safe_name(name: str, *, windows: bool | None = None) -> bool:
    """True if `name` is one path component that cannot climb out of, or jump past, its folder."""
    win = os.name == "nt" if windows is None else windows
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        return False
    if win:
        if "\\" in name or ":" in name or ntpath.isabs(name):
            return False
        if name.rstrip(" .") != name:  # Windows silently strips these: "..." would become ".."
            return False
        # Device names are reserved with any extension, and "CON .txt" is still CON.
        if name.split(".")[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
            return False
    if os.name != "nt":
        try:  # a lone surrogate that surrogateescape cannot turn back into bytes
            os.fsencode(name)
        except UnicodeError:
            return False
    return True


def split_include(path: str) -> tuple[str, ...]:
    """Turn a user's --include (snapshot-relative, either slash) into components."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return tuple(parts)
