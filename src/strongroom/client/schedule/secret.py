"""The password of unattended runs: a private (0600) file or the OS keyring.

Never in client.json, argv, a unit file or the environment of a unit: the scheduled command
reads it itself. The keyring is optional (`pip install 'strongroom[keyring]'`).
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
from pathlib import Path
from types import ModuleType

from ...errors import StrongroomError, UsageError
from .settings import write_private

KEYRING_SERVICE = "strongroom"


def check_private_file(path: Path) -> None:
    """Refuse a password file others could read (or swap): it must be a regular file of ours
    with no group or world permissions. Windows has no such bits: there the file lives in the
    user's own profile folder, which only they can read by default."""
    try:
        st = path.stat()
    except OSError as exc:
        raise UsageError(f"password file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"password file {path} is not a regular file")
    if sys.platform == "win32":
        return
    if st.st_mode & 0o077:
        raise UsageError(
            f"password file {path} can be read by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run 'chmod 600 {path}'"
        )
    if st.st_uid != os.geteuid():
        raise UsageError(f"password file {path} belongs to another user")


def read_password_file(path: Path) -> bytes:
    check_private_file(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}") from None
    password = raw.rstrip(b"\r\n")  # as every --password-file is read (cli/secrets_input.py)
    if not password:
        raise UsageError(f"password file {path} is empty")
    return password


def write_password_file(path: Path, password: bytes) -> None:
    write_private(path, password + b"\n")


def _keyring() -> ModuleType:
    try:
        return importlib.import_module("keyring")
    except ImportError:
        raise UsageError(
            "the OS keyring needs the keyring library: pip install 'strongroom[keyring]' "
            "(or use a password file)"
        ) from None


def keyring_store(account: str, password: bytes) -> None:
    """`account` names the entry: "host:port|user" (as client.json's pins) or "repo:PATH"."""
    kr = _keyring()
    try:
        kr.set_password(KEYRING_SERVICE, account, password.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError("the keyring holds text only: this password is not UTF-8") from None
    except Exception as exc:  # each backend raises its own kinds
        raise StrongroomError(f"the OS keyring refused the password: {_one_line(exc)}") from None


def keyring_load(account: str) -> bytes:
    kr = _keyring()
    try:
        value = kr.get_password(KEYRING_SERVICE, account)
    except Exception as exc:
        raise StrongroomError(
            f"cannot read the password from the OS keyring: {_one_line(exc)}"
        ) from None
    if not isinstance(value, str) or not value:
        raise StrongroomError(
            "the OS keyring has no strongroom password for this account; "
            "run 'strongroom schedule enable --keyring' again"
        )
    return value.encode("utf-8")


def keyring_delete(account: str) -> None:
    try:
        kr = _keyring()
        kr.delete_password(KEYRING_SERVICE, account)
    except Exception:  # noqa: S110 - already gone, or no keyring: nothing to remove
        pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
