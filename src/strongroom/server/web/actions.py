"""The console's actions: each validates its form like the admin tool's options, does the work
in a thread, and says what happened (for the page and for the server's log)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ...errors import UsageError
from ...retention import Policy
from ...snapshot import is_snapshot_id
from .. import operations
from ..userdb import User, parse_quota, parse_window, validate_username

if TYPE_CHECKING:
    from ..context import ServerContext

Form = dict[str, str]


@dataclass(frozen=True)
class Outcome:
    message: str  # for the admin, on the next page
    log: str  # for the server's log (never a password)
    redirect: str | None = None


Action = Callable[["ServerContext", str | None, Form], Awaitable[Outcome]]

_KEEP = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


async def _user(ctx: ServerContext, name: str | None) -> User:
    user = await asyncio.to_thread(ctx.userdb.get, name or "")
    if user is None:
        raise UsageError(f"no user {name}")
    return user


def _password(form: Form) -> bytes:
    first, second = form.get("password", ""), form.get("password2", "")
    if not first:
        raise UsageError("the password cannot be empty")
    if first != second:
        raise UsageError("the two passwords differ; nothing was changed")
    return first.encode("utf-8")


def _checked(form: Form, field: str) -> bool:
    return form.get(field) == "on"


async def add_user(ctx: ServerContext, _name: str | None, form: Form) -> Outcome:
    name = form.get("name", "").strip()
    validate_username(name)
    password = _password(form)
    quota = parse_quota(form["quota"]) if form.get("quota", "").strip() else None
    settings: dict[str, object] = {
        "directory": form.get("directory", "").strip(),
        "quota": quota,
        "append_only": _checked(form, "append_only"),
    }
    if form.get("protection_window", "").strip():
        settings["protect_window_s"] = parse_window(form["protection_window"])
    if await asyncio.to_thread(ctx.userdb.get, name) is not None:
        raise UsageError(f"user {name} already exists")
    user = await asyncio.to_thread(lambda: operations.create_user(ctx, name, password, **settings))
    return Outcome(
        f"user {user.name} added; they must choose a new password at their first login",
        f"added user {user.name!r}",
        f"/users/{user.name}",
    )


async def change_settings(ctx: ServerContext, name: str | None, form: Form) -> Outcome:
    user = await _user(ctx, name)
    quota_text = form.get("quota", "").strip()
    interval_text = form.get("expected_interval", "").strip()
    email = form.get("notify_email", "").strip()
    interval: int | None = parse_window(interval_text) if interval_text else None
    policy: str | Literal["unset"] | None = "unset"
    if form.get("policy") == "default":
        policy = None
    elif form.get("policy") == "own":
        c = {k: _count(form.get(f"keep_{k}", "")) for k in _KEEP}
        own = Policy(
            last=c["last"],
            hourly=c["hourly"],
            daily=c["daily"],
            weekly=c["weekly"],
            monthly=c["monthly"],
            yearly=c["yearly"],
        )
        if own.is_empty():
            raise UsageError("give at least one keep count for the user's own policy")
        policy = json.dumps(own.to_json())
    changed = await asyncio.to_thread(
        lambda: ctx.userdb.update(
            user.name,
            directory=form.get("directory", user.directory).strip(),
            quota=parse_quota(quota_text) if quota_text else None,
            append_only=_checked(form, "append_only"),
            policy=policy,
            protect_window_s=parse_window(form.get("protection_window", "") or "0")
            if form.get("protection_window", "").strip()
            else None,
            expected_interval_s=interval,
            notify_email=email or None,
        )
    )
    if changed.generation != user.generation:  # the append-only flag changed
        await ctx.end_sessions(user.id, "the admin changed this account")
    return Outcome(f"settings of {user.name} saved", f"changed the settings of {user.name!r}")


def _count(text: str) -> int:
    text = text.strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"a keep count must be a whole number, not {text[:20]!r}") from None
    if value < -1 or value > 1_000_000:
        raise UsageError("a keep count is between 0 and 1,000,000 (or -1 for all)")
    return value


async def reset_password(ctx: ServerContext, name: str | None, form: Form) -> Outcome:
    user = await _user(ctx, name)
    password = _password(form)
    await asyncio.to_thread(operations.reset_password, ctx, user, password)
    await ctx.end_sessions(user.id, "the admin reset this account's password")
    return Outcome(
        f"password of {user.name} reset; they must choose a new one at their next login"
        + (
            " (their backups stay locked with their previous password or recovery key)"
            if user.keyfile
            else ""
        ),
        f"reset the password of {user.name!r}",
    )


async def protect(ctx: ServerContext, name: str | None, form: Form) -> Outcome:
    user = await _user(ctx, name)
    snap_id = form.get("snapshot", "")
    if not is_snapshot_id(snap_id):
        raise UsageError("invalid snapshot ID")
    on = form.get("protected") == "1"
    found = await asyncio.to_thread(operations.set_protected, ctx, user, snap_id, on)
    if not found:
        raise UsageError(f"no snapshot {snap_id[:8]}")
    verb = "protected" if on else "no longer protected"
    return Outcome(
        f"snapshot {snap_id[:8]} is {verb}", f"set snapshot {snap_id[:8]} of {user.name!r} {verb}"
    )


async def gc(ctx: ServerContext, name: str | None, form: Form) -> Outcome:
    user = await _user(ctx, name)
    report = await asyncio.to_thread(operations.run_gc, ctx, user)
    from ...cli import format as fmt

    summary = (
        f"{fmt.size(report['reclaimed_bytes'])} reclaimed, {report['deleted_packs']} pack(s) "
        f"deleted, {report['repacked_packs']} repacked"
    )
    return Outcome(f"garbage collection for {user.name}: {summary}", f"ran gc for {user.name!r}")


async def scrub(ctx: ServerContext, name: str | None, form: Form) -> Outcome:
    user = await _user(ctx, name)
    report = await asyncio.to_thread(operations.run_scrub, ctx, user)
    problems = report.get("problems", [])
    text = "no problems" if not problems else f"{len(problems)} problem(s): {problems[0]}"
    return Outcome(f"scrub of {user.name}: {text}", f"ran scrub for {user.name!r}: {text}")


async def delete(ctx: ServerContext, name: str | None, form: Form) -> Outcome:
    user = await _user(ctx, name)
    if form.get("confirm", "").strip() != user.name:
        raise UsageError(f"type the user name ({user.name}) to confirm the deletion")
    purge = _checked(form, "purge")
    await ctx.end_sessions(user.id, "this account was deleted", wait=30.0)
    removed = await asyncio.to_thread(lambda: operations.delete_user(ctx, user, purge=purge))
    if purge and removed:
        message = f"user {user.name} deleted, with their stored backups"
    elif purge:
        message = (
            f"user {user.name} deleted; their stored backups are removed once nothing uses them"
        )
    else:
        message = f"user {user.name} deleted; their stored backups remain on disk"
    return Outcome(
        message, f"deleted user {user.name!r}" + (" and their data" if purge else ""), "/"
    )
