"""Where passwords come from: env, a file, or a hidden prompt. Never argv."""

from __future__ import annotations

import getpass
import os
import sys

from ..errors import StrongroomError, UsageError


def read_password(
    password_file: str | None,
    *,
    confirm: bool = False,
    prompt: str = "Password",
    env: str = "STRONGROOM_PASSWORD",
) -> bytes:
    if password_file:
        try:
            with open(password_file, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise UsageError(f"cannot read password file {password_file}: {exc.strerror}") from None
        pw = raw.rstrip(b"\r\n")
        if not pw:
            raise UsageError(f"password file {password_file} is empty")
        return pw
    from_env = os.environ.get(env)
    if from_env:
        return from_env.encode("utf-8")
    if not sys.stdin.isatty():
        option = "--to-password-file" if env == "STRONGROOM_TO_PASSWORD" else "--password-file"
        raise UsageError(f"no password given: set {env}, use {option}, or run on a terminal")
    try:
        first = getpass.getpass(f"{prompt}: ")
        if not first:
            raise StrongroomError("empty password")
        if confirm and getpass.getpass(f"{prompt} (again): ") != first:
            raise StrongroomError("the two passwords differ")
    except (EOFError, KeyboardInterrupt):
        raise StrongroomError("no password entered") from None
    return first.encode("utf-8")


def read_new_password(password_file: str | None) -> bytes:
    """A new password: from a file, or asked twice on a terminal (never from the environment)."""
    if password_file:
        return read_password(password_file)
    if not sys.stdin.isatty():
        raise UsageError("give the new password with --new-password-file or run on a terminal")
    try:
        first = getpass.getpass("New password: ")
        if not first:
            raise StrongroomError("empty password")
        if getpass.getpass("New password (again): ") != first:
            raise StrongroomError("the two passwords differ")
    except (EOFError, KeyboardInterrupt):
        raise StrongroomError("no password entered") from None
    return first.encode("utf-8")
