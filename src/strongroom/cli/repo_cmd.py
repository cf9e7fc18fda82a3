"""`strongroom init`, `login` and `passwd`: a repository, an account, the password."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import crypto
from ..errors import UsageError
from ..recovery import RecoveryKey
from ..repository import LocalRepository
from .app import cli, handle_errors
from .recovery_io import RecoveryOutput, output_options
from .secrets_input import read_new_password, read_password
from .target import Where, open_repo, repo_options

_NO_RECOVERY = click.option(
    "--no-recovery-key",
    is_flag=True,
    help="Make no recovery key with new keys (then only the password opens the backups).",
)


def _output(file: str | None, page: str | None, none: bool) -> RecoveryOutput:
    if none and (file or page):
        raise UsageError("--no-recovery-key and a recovery key file exclude each other")
    output = RecoveryOutput(file=file, page=page, enabled=not none)
    output.check()
    return output


@cli.command()
@click.option(
    "--repo",
    "-r",
    envvar="STRONGROOM_REPO",
    required=True,
    type=click.Path(file_okay=False),
    help="Repository folder to create (env STRONGROOM_REPO). Server accounts are made by the "
    "server's admin with strongroom-admin.",
)
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    help="Read the password from this file (first line).",
)
@click.option(
    "--kdf-memory",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Argon2id memory cost in MiB (lower only for tests).",
)
@click.option("--kdf-iterations", type=click.IntRange(1, 64), default=3, show_default=True)
@output_options
@_NO_RECOVERY
@handle_errors
def init(
    repo: str,
    password_file: str | None,
    kdf_memory: int,
    kdf_iterations: int,
    recovery_key_file: str | None,
    recovery_key_html: str | None,
    no_recovery_key: bool,
) -> None:
    """Create a new repository protected by a password (and a recovery key)."""
    output = _output(recovery_key_file, recovery_key_html, no_recovery_key)
    password = read_password(password_file, confirm=True, prompt="New repository password")
    kdf = crypto.KdfParams(memory_kib=kdf_memory * 1024, iterations=kdf_iterations)
    key = RecoveryKey.generate() if output.enabled else None
    r = LocalRepository.init(Path(repo), password, kdf, recovery=key)
    repo_id = r.repo_id
    r.close()
    click.echo(f"created repository {repo_id[:8]} at {repo}")
    if key is None:
        click.echo("Keep the password safe: without it the data cannot be recovered.")
        return
    output.label = f"repository {Path(repo).resolve()}"
    output.deliver(key)


@cli.command()
@repo_options
@click.option(
    "--new-password-file",
    type=click.Path(dir_okay=False),
    help="Read the new password from a file.",
)
@click.option(
    "--old-password-file",
    type=click.Path(dir_okay=False),
    help="After an admin reset: your previous password, which locks your existing backups.",
)
@output_options
@_NO_RECOVERY
@handle_errors
def passwd(
    where: Where,
    new_password_file: str | None,
    old_password_file: str | None,
    recovery_key_file: str | None,
    recovery_key_html: str | None,
    no_recovery_key: bool,
) -> None:
    """Change your password (re-wraps the keys; data is not rewritten).

    The first password you choose on a server also makes your keys and a recovery key."""
    output = _output(recovery_key_file, recovery_key_html, no_recovery_key)
    changed: list[bool] = []

    def new_password() -> bytes:
        changed.append(True)
        return read_new_password(new_password_file)

    old = (lambda: read_password(old_password_file)) if old_password_file else None
    r = open_repo(
        where, writer=True, new_password=new_password, old_password=old, recovery_output=output
    )
    try:
        if not changed:  # not already done by a login that required it
            r.change_password(new_password())
    finally:
        r.close()
    click.echo("password changed")
    _unused(output)


def _unused(output: RecoveryOutput) -> None:
    if (output.file or output.page) and not output.delivered:
        click.echo(
            "this account already has its keys, so no recovery key was made: use "
            "'strongroom recovery-key create' (or rotate)",
            err=True,
        )


@cli.command()
@click.option("--server", "-s", envvar="STRONGROOM_SERVER", help="Server HOST:PORT.")
@click.option("--user", "-u", envvar="STRONGROOM_USER", help="User name on the server.")
@click.option("--fingerprint", envvar="STRONGROOM_FINGERPRINT", help="Expected fingerprint.")
@click.option("--ca-file", envvar="STRONGROOM_CA_FILE", type=click.Path(dir_okay=False))
@click.option("--password-file", type=click.Path(dir_okay=False))
@click.option(
    "--accept-new-keys",
    is_flag=True,
    help="Forget what this computer remembers of the account's keys and password hashing "
    "(only after the admin confirms they recreated your account).",
)
@output_options
@_NO_RECOVERY
@handle_errors
def login(
    server: str | None,
    user: str | None,
    fingerprint: str | None,
    ca_file: str | None,
    password_file: str | None,
    accept_new_keys: bool,
    recovery_key_file: str | None,
    recovery_key_html: str | None,
    no_recovery_key: bool,
) -> None:
    """Log in to a server once: pins its certificate and remembers server and user."""
    from .target import connect

    output = _output(recovery_key_file, recovery_key_html, no_recovery_key)

    if server is None and sys.stdin.isatty():
        server = click.prompt("Server (host:port)")
    if user is None and sys.stdin.isatty():
        user = click.prompt("User name")
    if not server or not user:
        raise UsageError("give --server HOST:PORT and --user NAME (or run on a terminal)")
    where = Where(
        server=server,
        user=user,
        fingerprint=fingerprint,
        ca_file=ca_file,
        password_file=password_file,
    )
    r = connect(where, remember=True, accept_new_keys=accept_new_keys, recovery_output=output)
    try:
        n = len(r.snapshot_rows())
        folder = r.directory or "(none recorded)"
    finally:
        r.close()
    click.echo(f"logged in as {user} at {server}; {n} snapshot(s); your folder: {folder}")
    _unused(output)
