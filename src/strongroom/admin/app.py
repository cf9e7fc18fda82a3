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
from ..server.deployment import refuse_argv_secrets
from . import menu
from .context import Admin as Admin

PROG = "strongroom-admin"


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
