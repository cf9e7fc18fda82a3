"""The interactive menu of `strongroom-admin` (no command), numbered as in the original tool,
and the views and messages it shares with the commands in admin/cli.py."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..cli import format as fmt
from ..errors import StrongroomError, UsageError
from ..server.accounts import add_user
from ..server.config import default_kdf
from ..server.control import end_sessions_now
from ..server.purge import finish_purges
from ..server.userdb import (
    User,
    format_window,
    parse_quota,
    validate_directory,
    validate_username,
)

if TYPE_CHECKING:
    from .context import Admin

T = TypeVar("T")

MENU = "1) add user  2) delete user  3) show users  4) exit"


def run_menu(admin: Admin) -> None:
    """Loop until 4 (or end of input). Errors are shown and the menu carries on."""
    backend = admin.backend
    where = backend.describe if backend.kind == "scaleout" else f"data folder {admin.datadir.root}"
    print(f"strongroom-admin: {where}")
    actions: dict[str, Callable[[Admin], None]] = {
        "1": _add,
        "2": _delete,
        "3": lambda a: show_users(a.db.list()),
    }
    while True:
        print()
        print(MENU)
        try:
            choice = input("choice: ").strip()
        except EOFError:
            print()
            return
        if choice == "4":
            return
        action = actions.get(choice)
        if action is None:
            print(f"unknown choice {choice[:20]!r}: type 1, 2, 3 or 4")
            continue
        try:
            action(admin)
        except EOFError:
            print()
            return
        except StrongroomError as exc:
            print(f"error: {exc}")
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"error: {exc.strerror or exc}{where}")


def _add(admin: Admin) -> None:
    db = admin.db

    def new_name(text: str) -> str:
        validate_username(text)
        if db.get(text) is not None:
            raise UsageError(f"user {text} already exists (user names ignore case)")
        return text

    name = _ask("user name (Enter to cancel): ", new_name, empty=None)
    if name is None:
        print("cancelled")
        return
    password = _ask_password()
    directory = _ask(
        "folder to back up on the user's computer (Enter for none): ", _directory, empty=""
    )
    quota = _ask("quota (e.g. 50G, Enter for none): ", parse_quota, empty=None)
    append_only = confirm("append-only?")
    user = add_user(
        admin.storage,
        db,
        name,
        password,
        directory=directory,
        kdf=default_kdf(),
        quota=quota,
        append_only=append_only,
    )
    print(added_message(user))


def _delete(admin: Admin) -> None:
    name = input("user to delete (Enter to cancel): ").strip()
    if not name:
        print("cancelled")
        return
    user = admin.db.get(name)
    if user is None:
        print(f"no user {name}")
        return
    if not confirm(f"delete user {user.name}?"):
        print("cancelled")
        return
    purge = confirm(f"also delete {user.name}'s stored backups for good?")
    print(delete_user(admin, user.name, purge=purge))


def _directory(text: str) -> str:
    validate_directory(text)
    return text


def _ask(prompt: str, parse: Callable[[str], T], *, empty: T) -> T:
    """Ask until `parse` accepts the answer; an empty answer gives `empty`."""
    while True:
        text = input(prompt).strip()
        if not text:
            return empty
        try:
            return parse(text)
        except UsageError as exc:
            print(exc)


def _ask_password() -> bytes:
    while True:
        first = getpass.getpass("password: ")
        if not first:
            print("the password cannot be empty")
            continue
        if getpass.getpass("password (again): ") != first:
            print("the two passwords differ; try again")
            continue
        return first.encode("utf-8")


def confirm(question: str) -> bool:
    """A [y/N] question read with input(); end of input counts as no."""
    try:
        answer = input(f"{question} [y/N]: ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


# ---- shared with admin/cli.py -----------------------------------------------------------


def delete_user(admin: Admin, name: str, *, purge: bool) -> str:
    """Delete the user's row (and with `purge`, their storage); returns what to tell the admin."""
    datadir, db = admin.datadir, admin.db
    user = db.delete(name, purge=purge)
    if user is None:
        raise UsageError(f"no user {name}")
    # A running server ends the user's sessions now and closes their storage before any of
    # it is removed; the purge queue finishes the removal even after a crash (server/purge.py).
    released = end_sessions_now(
        datadir.root, user.id, "this account was deleted", storage_id=user.storage_id
    )
    if not purge:
        if admin.backend.kind == "embedded" and admin.storage.exists(user.storage_id):
            path = datadir.storage_path(user.storage_id)
            return (
                f"user {user.name} deleted; their stored backups remain in {path} "
                "(delete that folder to free the space)"
            )
        if admin.storage.exists(user.storage_id):
            return (
                f"user {user.name} deleted; their stored backups remain (storage "
                f"{user.storage_id}); delete with --purge-data to free the space"
            )
        return f"user {user.name} deleted"
    if released is False:
        # The server still works on the storage (a long GC): removing it under it is not
        # safe. The purge stays queued; the next delete or server start finishes it.
        return (
            f"user {user.name} deleted; their stored backups will be removed once the server "
            "lets go of them (at its next start, or with 'strongroom-admin purge')"
        )
    if user.storage_id not in finish_purges(admin.storage, db, admin.storage_in_use):
        return (
            f"user {user.name} deleted; their stored backups will be removed once no server "
            "holds them (at a server's next start, or with 'strongroom-admin purge')"
        )
    return f"user {user.name} deleted, with their stored backups"


def added_message(user: User) -> str:
    details = [f"folder: {user.directory or 'none recorded'}"]
    if user.quota is not None:
        details.append(f"quota: {fmt.size(user.quota)}")
    if user.append_only:
        details.append(f"append-only, protection window {format_window(user.protect_window_s)}")
    return (
        f"user {user.name} added ({', '.join(details)}); "
        "they must choose a new password at first login"
    )


def show_users(users: list[User]) -> None:
    """The table of `user list` and of menu choice 3."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None)
    table.add_column("User", overflow="fold")
    table.add_column("Folder", overflow="fold")
    table.add_column("Quota", no_wrap=True)
    table.add_column("Append-only")
    table.add_column("Must change password")
    table.add_column("Created", no_wrap=True)
    table.add_column("Last backup")
    for u in users:
        # Text, not str: a cell string would be parsed as rich markup.
        table.add_row(
            Text(u.name),
            Text(u.directory or "-"),
            Text(fmt.size(u.quota) if u.quota is not None else "none"),
            Text(f"yes ({format_window(u.protect_window_s)})" if u.append_only else "no"),
            Text("yes" if u.must_change_password else "no"),
            Text(fmt.local_time(u.created_ns)),
            Text(last_backup(u)),
        )
    Console().print(table)
    print(f"{len(users)} user(s)")


def last_backup(user: User) -> str:
    if user.last_backup_ns is None:
        return "never"
    return f"{fmt.local_time(user.last_backup_ns)} ({user.last_backup_result or '?'})"
