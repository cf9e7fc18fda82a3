"""`strongroom recovery-key create|rotate|remove|status|verify` and `strongroom recover`.

A recovery key is a second wrapping of the data keys in the key file (recovery.py). Making,
replacing or removing it sends the key file back with only that wrapping changed; `recover`
opens the keys with it after the admin reset the login (or, for a local repository, at once)
and wraps them under a new password.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

import click

from ..crypto import constant_time_equal
from ..errors import StrongroomError, UsageError, WrongPasswordError
from ..keys import KeyFile, RepoKeys
from ..recovery import RecoveryKey
from ..repository import LocalRepository
from .app import cli, handle_errors
from .recovery_io import RecoveryOutput, output_options, read_recovery_key
from .secrets_input import read_new_password
from .target import Where, connect, local_path, open_repo, repo_options


class _KeyHolder(Protocol):
    keys: RepoKeys

    @property
    def keyfile(self) -> KeyFile | None: ...
    def set_recovery(self, wrapped: bytes | None) -> None: ...
    def close(self) -> None: ...


def _open(where: Where) -> tuple[_KeyHolder, str]:
    r = open_repo(where, writer=True)
    if isinstance(r, LocalRepository):
        return r, f"repository {Path(where.repo or '.').resolve()}"
    from ..client.remote import RemoteRepository

    assert isinstance(r, RemoteRepository)
    return r, f"{r.account.user} at {r.transport.address}"


def _has_key(r: _KeyHolder) -> bool:
    return r.keyfile is not None and r.keyfile.recovery is not None


@cli.group("recovery-key")
def recovery_key() -> None:
    """A recovery key opens your backups if you forget your password."""


def _make(where: Where, file: str | None, page: str | None, *, replace: bool) -> None:
    output = RecoveryOutput(file=file, page=page)
    output.check()
    r, output.label = _open(where)
    try:
        if _has_key(r) and not replace:
            raise UsageError(
                "this account already has a recovery key; 'strongroom recovery-key rotate' "
                "replaces it (the old one then stops working)"
            )
        key = RecoveryKey.generate()
        r.set_recovery(key.wrap(r.keys))  # the server (or the folder) holds it before we show it
    finally:
        r.close()
    output.deliver(key)


@recovery_key.command("create")
@repo_options
@output_options
@handle_errors
def create(where: Where, recovery_key_file: str | None, recovery_key_html: str | None) -> None:
    """Make a recovery key for an account or repository that has none."""
    _make(where, recovery_key_file, recovery_key_html, replace=False)
    click.echo("recovery key created")


@recovery_key.command("rotate")
@repo_options
@output_options
@handle_errors
def rotate(where: Where, recovery_key_file: str | None, recovery_key_html: str | None) -> None:
    """Replace the recovery key: the old one no longer opens the key file."""
    _make(where, recovery_key_file, recovery_key_html, replace=True)
    click.echo("recovery key replaced; the old one no longer works")


@recovery_key.command("remove")
@repo_options
@handle_errors
def remove(where: Where) -> None:
    """Remove the recovery key: then only your password opens your backups."""
    r, _label = _open(where)
    try:
        if not _has_key(r):
            click.echo("this account has no recovery key")
            return
        r.set_recovery(None)
    finally:
        r.close()
    click.echo("recovery key removed; only your password opens your backups now")


@recovery_key.command("status")
@repo_options
@handle_errors
def status(where: Where) -> None:
    """Say whether the account has a recovery key."""
    r, label = _open(where)
    try:
        has = _has_key(r)
    finally:
        r.close()
    click.echo(f"{label}: {'has a recovery key' if has else 'no recovery key'}")


@recovery_key.command("verify")
@repo_options
@click.option("--recovery-key-file", type=click.Path(dir_okay=False), help="The key to test.")
@handle_errors
def verify(where: Where, recovery_key_file: str | None) -> None:
    """Check that a recovery key opens this account's keys (nothing is changed)."""
    key = read_recovery_key(recovery_key_file)
    r, label = _open(where)
    try:
        if r.keyfile is None or r.keyfile.recovery is None:
            raise StrongroomError(f"{label} has no recovery key")
        opened = key.unwrap(r.keyfile.recovery)
        if not constant_time_equal(opened.check_value().encode(), r.keys.check_value().encode()):
            raise StrongroomError("this recovery key opens other keys than your password does")
    finally:
        r.close()
    click.echo(f"the recovery key opens the keys of {label}")


@cli.command()
@repo_options
@click.option(
    "--recovery-key-file",
    type=click.Path(dir_okay=False),
    help="Your recovery key, as written by 'recovery-key create' (else it is asked for).",
)
@click.option(
    "--new-password-file",
    type=click.Path(dir_okay=False),
    help="Read the new password from a file (else it is asked for twice).",
)
@handle_errors
def recover(where: Where, recovery_key_file: str | None, new_password_file: str | None) -> None:
    """Forgot your password? Open your backups with your recovery key and choose a new one.

    On a server, the admin first resets your password ('strongroom-admin user passwd NAME');
    log in here with the password they set. They cannot read your backups with it, and the
    recovery key never leaves this computer.
    """
    key = read_recovery_key(recovery_key_file)  # a typo is found before anything is tried
    path = local_path(where)
    if path is not None:
        local = LocalRepository.open(path, None, writer=True, recovery=key)
        try:
            local.change_password(read_new_password(new_password_file))
        finally:
            local.close()
        click.echo("password changed: the repository opens with your new password")
        return
    if where.password_file is None and sys.stdin.isatty():
        click.echo("Log in with the password the admin set when they reset yours.", err=True)
    try:
        remote = connect(
            where,
            new_password=lambda: read_new_password(new_password_file),
            recovery_key=key,
        )
    except WrongPasswordError as exc:
        raise WrongPasswordError(
            f"{exc}; to recover, log in with the password the admin set when they reset yours "
            "('strongroom-admin user passwd NAME')"
        ) from None
    try:
        reset = remote.reset
    finally:
        remote.close()
    if not reset:
        raise StrongroomError(
            "your password still works, so there is nothing to recover; change it with "
            "'strongroom passwd'"
        )
    click.echo("password changed: your backups open with your new password")
