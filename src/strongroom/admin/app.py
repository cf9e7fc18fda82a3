"""The `strongroom-admin` command group and what its commands share: the data folder and
user database (`Admin`), and reading a new password. Command modules (cli, lifecycle, console)
import from here, and cli.py imports them to register their commands: no import cycle.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import StrongroomError, UsageError
from ..server.config import DEFAULT_DATA_DIR
from ..server.datadir import DataDir
from ..server.userdb import User, UserDB
from . import menu

PROG = "strongroom-admin"


class Admin:
    """The data folder and user database, made ready on first use (so --help touches nothing)."""

    def __init__(self, root: Path) -> None:
        self._datadir = DataDir(root)
        self._ready = False
        self._db: UserDB | None = None

    @property
    def datadir(self) -> DataDir:
        if not self._ready:
            self._datadir.ensure()
            self._ready = True
        return self._datadir

    @property
    def db(self) -> UserDB:
        if self._db is None:
            self._db = UserDB.open_file(self.datadir.users_db)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def existing(self, name: str) -> User:
        user = self.db.get(name)
        if user is None:
            raise UsageError(f"no user {name} (see 'strongroom-admin user list')")
        return user


pass_admin = click.make_pass_decorator(Admin)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
@click.option(
    "--data-dir",
    envvar="STRONGROOM_DATA_DIR",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The server's data folder (env STRONGROOM_DATA_DIR).",
)
@click.pass_context
def cli(ctx: click.Context, data_dir: Path) -> None:
    """Manage the users of a strongroom server. Without a command: an interactive menu."""
    admin = Admin(data_dir)
    ctx.obj = admin
    ctx.call_on_close(admin.close)
    if ctx.invoked_subcommand is None:
        menu.run_menu(admin.datadir, admin.db)


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
