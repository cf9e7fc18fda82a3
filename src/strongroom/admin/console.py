"""`strongroom-admin console-admin`: the accounts of the web console (not backup users).

A console admin manages the server through the browser; they never hold a user's key. Their
password is stored as an Argon2id hash in the users database.
"""

from __future__ import annotations

import click

from ..errors import UsageError
from ..server.control import end_console_sessions
from ..server.opsdb import OpsDB
from ..server.userdb import validate_username
from ..server.web.auth import add_admin, set_admin_password
from .app import Admin, cli, pass_admin, read_new_password


def _ops(admin: Admin) -> OpsDB:
    return OpsDB(admin.db.db)  # opening the UserDB brought the schema up to date


@cli.group("console-admin")
def console_admin() -> None:
    """Accounts of the web console (separate from backup users)."""


@console_admin.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_admin
def console_admin_add(admin: Admin, name: str, password_stdin: bool) -> None:
    """Add console admin NAME (asks for a password twice, hidden)."""
    validate_username(name)
    ops = _ops(admin)
    try:
        if ops.admin(name) is not None:
            raise UsageError(f"console admin {name} already exists")
        add_admin(ops, name, read_new_password(name, password_stdin))
    finally:
        ops.close()
    click.echo(f"console admin {name} added; log in at https://SERVER:44080/")


@console_admin.command("list")
@pass_admin
def console_admin_list(admin: Admin) -> None:
    """Show the console admins."""
    ops = _ops(admin)
    try:
        names = ops.admins()
    finally:
        ops.close()
    for name in names:
        click.echo(name)
    click.echo(f"{len(names)} console admin(s)")


@console_admin.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_admin
def console_admin_passwd(admin: Admin, name: str, password_stdin: bool) -> None:
    """Give console admin NAME a new password (their open console sessions end)."""
    ops = _ops(admin)
    try:
        if ops.admin(name) is None:
            raise UsageError(f"no console admin {name}")
        set_admin_password(ops, name, read_new_password(name, password_stdin))
    finally:
        ops.close()
    end_console_sessions(admin.datadir.root, name)
    click.echo(f"password of console admin {name} changed")


@console_admin.command("delete")
@click.argument("name")
@pass_admin
def console_admin_delete(admin: Admin, name: str) -> None:
    """Remove console admin NAME (their open console sessions end)."""
    ops = _ops(admin)
    try:
        if not ops.delete_admin(name):
            raise UsageError(f"no console admin {name}")
    finally:
        ops.close()
    end_console_sessions(admin.datadir.root, name)
    click.echo(f"console admin {name} deleted")
