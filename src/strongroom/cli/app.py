"""The `strongroom` command group, and the one place where its commands are registered.

Each command group lives in its own module (backup_cmd, browse_cmd, restore_cmd, check_cmd,
repo_cmd, lifecycle, schedule). A module is imported only when one of its commands runs (or
for --help), so `strongroom --version` and each command load just what they use: the heavy
engines and `rich` stay out of a quick `snapshots --json`.

To add a command group: write a module that defines it with `@cli.command()` /
`@cli.group()` from this module, and name it in COMMANDS below.
"""

from __future__ import annotations

import importlib

import click

from .. import __version__
from .errors import handle_errors as _handle_errors

# Command name -> the module (in this package) that defines it: the registration point.
COMMANDS: dict[str, str] = {
    "init": "repo_cmd",
    "login": "repo_cmd",
    "passwd": "repo_cmd",
    "backup": "backup_cmd",
    "snapshots": "browse_cmd",
    "ls": "browse_cmd",
    "diff": "browse_cmd",
    "restore": "restore_cmd",
    "check": "check_cmd",
    "copy": "copy_cmd",
    "forget": "lifecycle",
    "protect": "lifecycle",
    "prune": "lifecycle",
    "schedule": "schedule",
    "mount": "mount_cmd",
    "recovery-key": "recovery_cmd",
    "recover": "recovery_cmd",
}

handle_errors = _handle_errors("strongroom")


class _LazyGroup(click.Group):
    """Imports a command's module the first time the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"{__package__}.{COMMANDS[cmd_name]}")
        return self.commands.get(cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="strongroom")
def cli() -> None:
    """strongroom: encrypted, deduplicated backups."""
