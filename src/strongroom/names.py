"""User names as the server compares them: case-insensitive for ASCII letters only."""

from __future__ import annotations

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_name(name: str) -> str:
    """The one form of a user name used for lookups, fake salts, throttling and client pins.

    ASCII letters only, exactly as SQLite's NOCASE compares: folding other characters (the
    Kelvin sign to 'k') would make an unknown name's fake salt that of a real user's name."""
    return name.translate(_ASCII_LOWER)
