"""Where the repository is: a local folder (--repo) or an account on a server (--server).

Every command that reads or writes snapshots takes the same options and opens the repository
through `open_repo`, so the engine's output is the same locally and over the network.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import StrongroomError, UsageError
from ..repository import LocalRepository, Repository
from .secrets_input import read_new_password, read_password

if TYPE_CHECKING:
    from ..client.remote import RemoteRepository
    from ..recovery import RecoveryKey
    from .recovery_io import RecoveryOutput

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Where:
    repo: str | None = None
    server: str | None = None
    user: str | None = None
    fingerprint: str | None = None
    ca_file: str | None = None
    password_file: str | None = None


_OPTIONS = (
    click.option(
        "--repo",
        "-r",
        envvar="STRONGROOM_REPO",
        type=click.Path(file_okay=False),
        help="Local repository folder instead of a server (env STRONGROOM_REPO).",
    ),
    click.option(
        "--server",
        "-s",
        envvar="STRONGROOM_SERVER",
        help="Server HOST:PORT (env STRONGROOM_SERVER).",
    ),
    click.option("--user", "-u", envvar="STRONGROOM_USER", help="User name on the server."),
    click.option(
        "--fingerprint",
        envvar="STRONGROOM_FINGERPRINT",
        help="Expected SHA-256 fingerprint of the server certificate.",
    ),
    click.option(
        "--ca-file",
        envvar="STRONGROOM_CA_FILE",
        type=click.Path(dir_okay=False),
        help="Verify the server with this CA bundle instead of a pinned fingerprint.",
    ),
    click.option(
        "--password-file",
        type=click.Path(dir_okay=False),
        help="Read the password from this file (first line).",
    ),
)


def repo_options(func: F) -> F:
    """Adds the location options and hands the command one `where: Where` argument."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        where = Where(**{name: kwargs.pop(name) for name in Where.__dataclass_fields__})
        return func(*args, where=where, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def _ask(prompt: str, default: str | None = None) -> str:
    try:
        value: str = click.prompt(prompt, default=default, show_default=bool(default))
    except (click.Abort, EOFError):
        raise StrongroomError("cancelled") from None
    if not value.strip():
        raise UsageError(f"{prompt.lower()} is required")
    return value.strip()


def _confirm(prompt: str, default: bool) -> bool:
    try:
        return bool(click.confirm(prompt, default=default))
    except (click.Abort, EOFError):
        return False


def trust_prompt(address: str, fingerprint: str) -> bool:
    """Trust on first use, as SSH does: show the fingerprint and ask."""
    if not sys.stdin.isatty():
        return False
    click.echo(f"The server {address} presents a certificate with fingerprint\n  {fingerprint}")
    click.echo("Compare it with 'strongroom-admin fingerprint' on the server.")
    return _confirm("Trust this server?", default=False)


def new_password_prompt() -> bytes:
    click.echo(
        "Your password was set by the admin. Choose your own now: your backups are encrypted "
        "with it, and the admin cannot read them."
    )
    return read_new_password(None)


def old_password_prompt() -> bytes:
    if not sys.stdin.isatty():
        raise UsageError("give your previous password with --old-password-file")
    return read_password(None, prompt="Your previous password (it locks your existing backups)")


def local_path(where: Where) -> Path | None:
    """The local repository folder (--repo), checked; None for a server."""
    if where.repo and where.server:
        raise UsageError("give either --repo (a local folder) or --server, not both")
    if not where.repo:
        return None
    path = Path(where.repo)
    if not (path / "index.sqlite").is_file():
        raise StrongroomError(
            f"no strongroom repository at {where.repo} (create one with 'strongroom init')"
        )
    return path


def open_repo(
    where: Where,
    *,
    writer: bool = False,
    new_password: Callable[[], bytes] | None = None,
    old_password: Callable[[], bytes] | None = None,
    recovery_output: RecoveryOutput | None = None,
) -> Repository:
    path = local_path(where)
    if path is not None:
        return LocalRepository.open(path, read_password(where.password_file), writer=writer)
    return connect(
        where,
        new_password=new_password,
        old_password=old_password,
        recovery_output=recovery_output,
    )


def connect(
    where: Where,
    *,
    new_password: Callable[[], bytes] | None = None,
    old_password: Callable[[], bytes] | None = None,
    remember: bool | None = None,
    accept_new_keys: bool = False,
    recovery_key: RecoveryKey | None = None,
    recovery_output: RecoveryOutput | None = None,
    password: bytes | None = None,
) -> RemoteRepository:
    """Log in to the server named by the options, the environment or the saved config.

    With nothing configured it asks for server and user on a terminal, as the original client
    did, and offers to remember them. `remember=True` saves without asking (`login`).
    The account's pins (key-derivation cost, key check) are always kept in the config;
    `accept_new_keys` forgets them first, for an account the admin recreated on purpose.
    A login that creates the account's keys also makes a recovery key and hands it to
    `recovery_output` (default: shown on the terminal); `recovery_key` opens the keys after an
    admin reset instead of the previous password (`strongroom recover`).
    """
    from ..client.config import AccountPin, ClientConfig, account_key
    from ..client.login import Recovery, Target, login, open_connection
    from ..client.transport import format_address, parse_address
    from .recovery_io import RecoveryOutput

    cfg = ClientConfig.load()
    server = where.server or cfg.server
    user = where.user or (cfg.user if server == cfg.server else None)
    asked = False
    if server is None or user is None:
        if not sys.stdin.isatty():
            raise UsageError(
                "no repository given: use --server HOST:PORT and --user NAME (or run "
                "'strongroom login' once), or --repo DIR for a local repository"
            )
        server = server or _ask("Server (host:port)", cfg.server)
        user = user or _ask("User name", cfg.user)
        asked = True
    key = format_address(*parse_address(server))
    pinned = where.fingerprint or cfg.fingerprints.get(key)
    trusted: list[str] = []

    def trust(address: str, fingerprint: str) -> bool:
        if trust_prompt(address, fingerprint):
            trusted.append(fingerprint)
            return True
        return False

    if password is None:
        password = read_password(where.password_file, prompt=f"Password for {user} at {server}")
    if new_password is None and sys.stdin.isatty():
        new_password = new_password_prompt
    if old_password is None and sys.stdin.isatty():
        old_password = old_password_prompt
    pin_key = account_key(key, user)
    if accept_new_keys and cfg.accounts.pop(pin_key, None) is not None:
        cfg.save()  # forgotten even if this login stops at a forced password change
    known = cfg.accounts.get(pin_key)
    pin = AccountPin(**vars(known)) if known is not None else AccountPin()
    output = recovery_output or RecoveryOutput()
    output.label = f"{user} at {key}"
    recovery = Recovery(
        key=(lambda: recovery_key) if recovery_key is not None else None,
        made=output.deliver if output.enabled else None,
    )
    transport = open_connection(Target(server, user, pinned, where.ca_file), trust)
    try:
        repo = login(
            transport,
            user,
            password,
            pin=pin,
            new_password=new_password,
            old_password=old_password,
            recovery=recovery,
        )
    except BaseException:
        transport.close()
        raise
    pins_changed = pin != known
    if pins_changed:
        cfg.accounts[pin_key] = pin
    save = remember
    if save is None and asked:
        save = _confirm(f"Remember server {key} and user {user} for next time?", default=True)
    if pins_changed and not (save or trusted or (where.fingerprint and remember)):
        cfg.save()
    if save or trusted or (where.fingerprint and remember):
        if save:
            cfg.server, cfg.user = key, user
        cfg.fingerprints[key] = transport.fingerprint
        path = cfg.save()
        if save:
            click.echo(f"saved server, user and certificate fingerprint in {path}", err=True)
    return repo
