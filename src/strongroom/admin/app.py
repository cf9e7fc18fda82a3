"""The `strongroom-admin` command group and what its commands share: the data folder and
user database (`Admin`), and reading a new password. Command modules (cli, lifecycle, console)
import from here, and cli.py imports them to register their commands: no import cycle.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import StrongroomError, UsageError
from ..server.backend import Backend, Storage, open_backend
from ..server.config import DEFAULT_DATA_DIR, ServerConfig, load_config
from ..server.datadir import DataDir
from ..server.deployment import refuse_argv_secrets
from ..server.userdb import User, UserDB
from . import menu

PROG = "strongroom-admin"


class Admin:
    """The deployment the admin works on (embedded data folder, or PostgreSQL + S3), opened
    on first use (so --help touches nothing)."""

    def __init__(self, settings: dict[str, Any], config_file: Path | None = None) -> None:
        self._settings = settings
        self._config_file = config_file
        self._backend: Backend | None = None

    @property
    def config(self) -> ServerConfig:
        return load_config(self._config_file, self._settings)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = open_backend(self.config)
        return self._backend

    @property
    def datadir(self) -> DataDir:
        return self.backend.datadir

    @property
    def db(self) -> UserDB:
        return self.backend.userdb

    @property
    def storage(self) -> Storage:
        return self.backend.storage

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def existing(self, name: str) -> User:
        user = self.db.get(name)
        if user is None:
            raise UsageError(f"no user {name} (see 'strongroom-admin user list')")
        return user

    def storage_in_use(self, storage_id: str) -> bool:
        """Held by the server answering on this data folder's socket, or by a live session
        on any node (scale-out)."""
        from ..server.control import storage_in_use

        return storage_in_use(self.datadir.root, storage_id) or self.backend.sessions.in_use(
            storage_id
        )


pass_admin = click.make_pass_decorator(Admin)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help=f"The server's data folder (default {DEFAULT_DATA_DIR}, env STRONGROOM_DATA_DIR); "
    "in scale-out mode this node's work folder.",
)
@click.option(
    "--config",
    "config_file",
    envvar="STRONGROOM_SERVER_CONFIG",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The server's TOML config file (its metadata, blobs and credential settings).",
)
@click.option(
    "--metadata",
    default=None,
    metavar="postgresql://USER@HOST/DB",
    help="Scale-out: the nodes' PostgreSQL (env STRONGROOM_METADATA; no password here).",
)
@click.option(
    "--blobs",
    default=None,
    metavar="s3://BUCKET?endpoint=URL",
    help="Scale-out: the nodes' S3 bucket (env STRONGROOM_BLOBS; no keys here).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    data_dir: Path | None,
    config_file: Path | None,
    metadata: str | None,
    blobs: str | None,
) -> None:
    """Manage the users of a strongroom server. Without a command: an interactive menu."""
    refuse_argv_secrets(metadata, blobs)
    admin = Admin({"data_dir": data_dir, "metadata": metadata, "blobs": blobs}, config_file)
    ctx.obj = admin
    ctx.call_on_close(admin.close)
    if ctx.invoked_subcommand is None:
        menu.run_menu(admin)


def read_new_password(name: str, from_stdin: bool) -> bytes:
    """The first line of standard input, or asked twice on the terminal, hidden."""
    if from_stdin:
        raw = sys.stdin.buffer.readline().rstrip(b"\r\n")
        if not raw:
            raise UsageError("no password on standard input (--password-stdin reads one line)")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("the password on standard input is not valid UTF-8") from None
        return raw
    if not sys.stdin.isatty():
        raise UsageError(
            "standard input is not a terminal: give the password with --password-stdin"
        )
    try:
        first = getpass.getpass(f"New password for {name}: ")
        if not first:
            raise UsageError("the password cannot be empty")
        if getpass.getpass("Repeat it: ") != first:
            raise StrongroomError("the two passwords differ; nothing was changed")
    except EOFError:
        raise StrongroomError("no password entered; nothing was changed") from None
    return first.encode("utf-8")
