"""`strongroom-admin`: add, list, change and delete the users of a server's data folder.

Every command works on the database directly (no cache), so a running server sees the change
at the user's next login or request. Passwords come from a hidden prompt or standard input,
never from the command line.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Literal, NoReturn

import click

from ..cli import format as fmt
from ..cli.policy_options import policy_from, policy_options
from ..crypto import KdfParams
from ..errors import EXIT_ERROR, StrongroomError, UsageError
from ..retention import Policy
from ..server.accounts import add_user, login_material
from ..server.config import default_kdf
from ..server.control import end_sessions_now
from ..server.schema import DEFAULT_PROTECT_WINDOW_S
from ..server.userdb import (
    User,
    format_window,
    parse_quota,
    parse_window,
    validate_directory,
    validate_username,
)
from . import menu
from .app import PROG, Admin, cli, pass_admin, read_new_password


@cli.group()
def user() -> None:
    """Add, list, change and delete users."""


@user.command("add")
@click.argument("name")
@click.option("--directory", "-d", default="", help="The folder on the user's computer to back up.")
@click.option("--quota", metavar="SIZE", help="Storage limit, e.g. 50G or 1.5T (binary units).")
@click.option("--append-only", is_flag=True, help="The user may add backups but never remove any.")
@click.option(
    "--protection-window",
    metavar="DURATION",
    help="Append-only: the server's policy never removes a snapshot received within this "
    f"long, e.g. 14d (default {format_window(DEFAULT_PROTECT_WINDOW_S)}).",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_admin
def user_add(
    admin: Admin,
    name: str,
    directory: str,
    quota: str | None,
    append_only: bool,
    protection_window: str | None,
    password_stdin: bool,
) -> None:
    """Add user NAME with a first password they must change at their first login."""
    validate_username(name)
    validate_directory(directory)
    limit = parse_quota(quota) if quota is not None else None
    window = (
        parse_window(protection_window)
        if protection_window is not None
        else DEFAULT_PROTECT_WINDOW_S
    )
    taken = admin.db.get(name)  # user names are case-insensitive
    if taken is not None:
        raise UsageError(f"user {taken.name} already exists")
    kdf = default_kdf()
    password = read_new_password(name, password_stdin)
    new = add_user(
        admin.storage,
        admin.db,
        name,
        password,
        directory=directory,
        kdf=kdf,
        quota=limit,
        append_only=append_only,
        protect_window_s=window,
    )
    click.echo(menu.added_message(new))


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@pass_admin
def user_list(admin: Admin, as_json: bool) -> None:
    """Show the users, their settings and their last backup."""
    users = admin.db.list()
    if as_json:
        click.echo(json.dumps([user_json(u) for u in users], indent=2))
    else:
        menu.show_users(users)


@user.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--purge-data", is_flag=True, help="Also delete the user's stored backups.")
@pass_admin
def user_delete(admin: Admin, name: str, yes: bool, purge_data: bool) -> None:
    """Delete user NAME (their stored backups are kept unless --purge-data)."""
    target = admin.existing(name)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not deleting {target.name} without confirmation: add --yes")
        what = " and all their stored backups" if purge_data else ""
        if not menu.confirm(f"delete user {target.name}{what}?"):
            raise StrongroomError("nothing deleted")
    click.echo(menu.delete_user(admin, target.name, purge=purge_data))


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_admin
def user_passwd(admin: Admin, name: str, password_stdin: bool) -> None:
    """Reset NAME's password; they must choose a new one at their next login."""
    target = admin.existing(name)
    # Never cheaper than the account's present cost: its clients remember the strongest cost
    # they logged in with and refuse less (a lower one is what a hostile server would ask).
    floor = default_kdf()
    kdf = KdfParams(
        memory_kib=max(floor.memory_kib, target.kdf.memory_kib),
        iterations=max(floor.iterations, target.kdf.iterations),
        lanes=floor.lanes,
    )
    password = read_new_password(target.name, password_stdin)
    salt, auth_hash = login_material(password, kdf)
    admin.db.set_login(target.id, salt=salt, kdf=kdf, auth_hash=auth_hash, must_change=True)
    # Whoever held the old password (perhaps a thief) is cut off now, not at their next request.
    end_sessions_now(admin.datadir.root, target.id, "the admin reset this account's password")
    click.echo(
        f"password of {target.name} reset; they must choose a new password at their next login"
    )
    if target.keyfile is not None:
        click.echo(
            "their existing backups stay encrypted under their previous password: "
            "they still need it, or their recovery key ('strongroom recover'), to open them"
        )


@user.command("set")
@click.argument("name")
@click.option("--directory", "-d", default=None, help="The folder on the user's computer.")
@click.option("--quota", metavar="SIZE|none", help="Storage limit, or 'none' to remove it.")
@click.option(
    "--append-only/--no-append-only",
    default=None,
    help="Allow adding backups only / allow removing them again.",
)
@click.option(
    "--protection-window",
    metavar="DURATION",
    help="Append-only: the server's policy never removes a snapshot received within this "
    "long, e.g. 14d or 0 (off).",
)
@click.option(
    "--expected-interval",
    metavar="DURATION|default",
    help="A backup is overdue (stale alert) after this long without a success, e.g. 26h.",
)
@click.option(
    "--notify-email",
    metavar="ADDRESS|none",
    help="Also tell the user about their own alerts (with notify_users on the server).",
)
@policy_options
@click.option("--no-policy", is_flag=True, help="Use the server's default policy again.")
@pass_admin
def user_set(
    admin: Admin,
    /,
    name: str,
    directory: str | None,
    quota: str | None,
    append_only: bool | None,
    protection_window: str | None,
    expected_interval: str | None,
    notify_email: str | None,
    no_policy: bool,
    **keep: Any,
) -> None:
    """Change NAME's folder, quota, append-only setting or retention policy (--keep-*)."""
    policy = policy_from(keep)
    if no_policy and not policy.is_empty():
        raise UsageError("give --keep-* options or --no-policy, not both")
    new_policy: str | Literal["unset"] | None = "unset"
    if no_policy:
        new_policy = None
    elif not policy.is_empty():
        new_policy = json.dumps(policy.to_json())
    window = parse_window(protection_window) if protection_window is not None else None
    interval: int | Literal["unset"] | None = "unset"
    if expected_interval is not None:
        interval = None if expected_interval == "default" else parse_window(expected_interval)
    email: str | Literal["unset"] | None = "unset"
    if notify_email is not None:
        email = None if notify_email.lower() == "none" else notify_email
    nothing = (directory, quota, append_only, window) == (None, None, None, None)
    if nothing and new_policy == "unset" and interval == "unset" and email == "unset":
        raise UsageError(
            "nothing to change: give --directory, --quota, --(no-)append-only, "
            "--protection-window, --expected-interval, --notify-email or --keep-*"
        )
    before = admin.existing(name)
    changed = admin.db.update(
        name,
        directory=directory,
        quota=parse_quota(quota) if quota is not None else "unset",
        append_only=append_only,
        policy=new_policy,
        protect_window_s=window,
        expected_interval_s=interval,
        notify_email=email,
    )
    if changed.generation != before.generation:  # the append-only flag changed
        end_sessions_now(admin.datadir.root, changed.id, "the admin changed this account")
    quota_text = fmt.size(changed.quota) if changed.quota is not None else "none"
    policy_text = (
        Policy.from_json(json.loads(changed.policy)).describe()
        if changed.policy
        else "server default"
    )
    click.echo(
        f"user {changed.name}: folder {changed.directory or 'none recorded'}, "
        f"quota {quota_text}, append-only "
        f"{'yes' if changed.append_only else 'no'} (protection window "
        f"{format_window(changed.protect_window_s)}), policy {policy_text}"
    )


@cli.command()
@click.option(
    "--cert",
    envvar="STRONGROOM_TLS_CERT",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A certificate given to the server with --tls-cert (default: the data folder's own).",
)
@pass_admin
def fingerprint(admin: Admin, cert: Path | None) -> None:
    """Print the SHA-256 fingerprint of the server's certificate, for clients to check."""
    from ..server.tls import certificate_fingerprint, ensure_certificate, pem_fingerprint

    if cert is None and admin.backend.kind == "scaleout":
        from ..server.identity import shared_identity

        click.echo(pem_fingerprint(shared_identity(admin.backend.db)["tls_cert"]))
        return
    if cert is None:
        ensure_certificate(admin.datadir)
        cert = admin.datadir.cert_path
    click.echo(certificate_fingerprint(cert))


@cli.command()
@pass_admin
def purge(admin: Admin) -> None:
    """Remove the stored backups of users deleted with --purge-data that are still on disk
    (a purge a crash or a busy server interrupted)."""
    from ..server.purge import finish_purges

    pending = admin.db.pending_purges()
    done = finish_purges(admin.storage, admin.db, admin.storage_in_use)
    left = len(pending) - len(done)
    click.echo(
        f"removed the storage of {len(done)} deleted user(s)"
        + (f"; {left} still in use by the running server, try again later" if left else "")
    )


def user_json(u: User) -> dict[str, Any]:
    """What `user list --json` shows: settings and times, never login or key material."""
    from datetime import UTC, datetime

    def iso(ns: int | None) -> str | None:
        return None if ns is None else datetime.fromtimestamp(ns / 1e9, UTC).isoformat()

    return {
        "name": u.name,
        "directory": u.directory,
        "quota": u.quota,
        "append_only": u.append_only,
        "protection_window": format_window(u.protect_window_s),
        "protection_window_s": u.protect_window_s,
        "expected_interval_s": u.expected_interval_s,
        "notify_email": u.notify_email,
        "last_success": iso(u.last_success_ns),
        "last_success_ns": u.last_success_ns,
        "must_change_password": u.must_change_password,
        "has_keys": u.keyfile is not None,
        "storage_id": u.storage_id,
        "created": iso(u.created_ns),
        "created_ns": u.created_ns,
        "last_backup": iso(u.last_backup_ns),
        "last_backup_ns": u.last_backup_ns,
        "last_backup_result": u.last_backup_result,
    }


def _fail(message: str, code: int) -> NoReturn:
    from ..redact import redact

    click.echo(f"{PROG}: error: {redact(message)}", err=True)  # never a credential
    sys.exit(code)


# gc, usage, scrub and policy, and console-admin, live in their own modules; importing them
# registers them on `cli`.
from . import console, lifecycle, replicate, scaleout_cmds  # noqa: E402, F401


def main() -> None:
    """Run the command; any failure is one line on stderr and an exit code, never a traceback."""
    try:
        rv = cli.main(prog_name=PROG, standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(f"{PROG}: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        _fail(" ".join(exc.format_message().split()).rstrip(".") + hint, exc.exit_code)
    except StrongroomError as exc:
        _fail(str(exc), exc.exit_code)
    except sqlite3.Error as exc:
        _fail(f"user database: {exc}", EXIT_ERROR)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}", EXIT_ERROR)
    except Exception as exc:
        if os.environ.get("STRONGROOM_DEBUG"):
            raise
        click.echo(
            f"{PROG}: internal error: {type(exc).__name__}: {exc} "
            "(set STRONGROOM_DEBUG=1 for details)",
            err=True,
        )
        sys.exit(EXIT_ERROR)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
