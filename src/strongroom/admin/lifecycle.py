"""`strongroom-admin gc`, `forget`, `usage`, `scrub` and `policy`: storage for years.

None of these needs a user's key: they work from pack checksums and snapshot manifests.
`gc` runs inside the running server (which knows the backups in progress) through the admin
socket, or here under the store's writer lock when the server is stopped.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..cli import format as fmt
from ..errors import EXIT_ERROR, StrongroomError, UsageError
from ..retention import Policy
from ..server.control import ask_server, retain
from ..server.policy import policy_for
from ..server.runs import record_scrub
from ..server.stores import UserStore, metadata_charge
from ..server.userdb import User
from ..store import PackStore
from ..store.gc import unreferenced
from ..store.scrub import scrub as scrub_store
from .app import Admin, cli, pass_admin


def _users(admin: Admin, name: str | None) -> list[User]:
    return [admin.existing(name)] if name else admin.db.list()


def _open_store(admin: Admin, user: User, *, writer: bool) -> PackStore | None:
    if not admin.storage.exists(user.storage_id):
        return None  # nothing stored yet
    return admin.storage.open(user.storage_id, writer=writer)


@cli.command()
@click.argument("name", required=False)
@click.option("--dry-run", "-n", is_flag=True, help="Only report what could be reclaimed.")
@click.option("--json", "as_json", is_flag=True)
@pass_admin
def gc(admin: Admin, name: str | None, dry_run: bool, as_json: bool) -> None:
    """Reclaim the space no snapshot uses (for NAME, or every user). Backups may keep running."""
    _report(_collect(admin, name, "gc", dry_run), dry_run, as_json)


@cli.command()
@click.argument("name", required=False)
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be removed.")
@click.option("--json", "as_json", is_flag=True)
@pass_admin
def forget(admin: Admin, name: str | None, dry_run: bool, as_json: bool) -> None:
    """Apply each user's retention policy now (the server also does after every backup), then
    reclaim the space. Needs no user's key."""
    _report(_collect(admin, name, "forget", dry_run), dry_run, as_json)


def _collect(admin: Admin, name: str | None, op: str, dry_run: bool) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for user in _users(admin, name):
        answer = ask_server(admin.datadir.root, {"op": op, "user": user.name, "dry_run": dry_run})
        if answer is not None:
            if not answer.get("ok"):
                raise StrongroomError(f"server: {answer.get('error', op + ' failed')}")
            results[user.name] = answer
            continue
        # No server answers here. Embedded: the store's writer lock keeps backups out.
        # Scale-out: the sessions table holds back what running backups on any node may use.
        packs = _open_store(admin, user, writer=True)
        if packs is None:
            continue
        store = UserStore(packs, user.storage_id, admin.backend.sessions)
        try:
            policy = policy_for(admin.db, user) if op == "forget" else None
            removed = retain(store, user, policy, dry_run)
            results[user.name] = {
                "ok": True,
                "removed": removed,
                "report": store.gc(dry_run=dry_run).to_json(),
            }
        finally:
            store.close()
    return results


def _report(results: dict[str, dict[str, Any]], dry_run: bool, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(results))
        return
    what = "could be reclaimed" if dry_run else "reclaimed"
    for user_name, answer in results.items():
        r = answer["report"]
        removed = answer.get("removed") or []
        line = f"{user_name}: "
        if removed:
            verb = "would remove" if dry_run else "removed"
            line += f"{verb} {len(removed)} snapshot(s), "
        line += (
            f"{fmt.size(r['unreferenced_bytes'])} unreferenced, "
            f"{fmt.size(r['reclaimed_bytes'])} {what}, {r['deleted_packs']} pack(s) deleted, "
            f"{r['repacked_packs']} repacked"
        )
        if r.get("waiting_blobs"):
            line += f", {r['waiting_blobs']} blob(s) wait for running backups"
        click.echo(line)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_admin
def usage(admin: Admin, as_json: bool) -> None:
    """Per user: stored bytes, quota and what it counts, snapshots, last backup, reclaimable."""
    rows: list[dict[str, Any]] = []
    for user in admin.db.list():
        stored = snapshots = reclaimable = charged = 0
        store = _open_store(admin, user, writer=False)
        if store is not None:
            try:
                stored = store.stored_bytes()
                charged = stored + metadata_charge(store)
                snapshots = len(store.list_snapshots())
                reclaimable = unreferenced(store)[1]
            finally:
                store.close()
        rows.append(
            {
                "name": user.name,
                "stored_bytes": stored,
                "quota": user.quota,
                "quota_used_bytes": charged,
                "snapshots": snapshots,
                "last_backup_ns": user.last_backup_ns,
                "last_backup_result": user.last_backup_result,
                "reclaimable_bytes": reclaimable,
                "policy": json.loads(user.policy) if user.policy else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None)
    for col in ("User", "Stored", "Quota", "Used", "Snapshots", "Last backup", "Reclaimable"):
        table.add_column(col)
    for r in rows:
        quota = r["quota"]
        last = (
            f"{fmt.local_time(r['last_backup_ns'])} {r['last_backup_result']}"
            if r["last_backup_ns"]
            else "never"
        )
        table.add_row(
            Text(r["name"]),
            Text(fmt.size(r["stored_bytes"])),
            Text(fmt.size(quota) if quota else "none"),
            Text(f"{100 * r['quota_used_bytes'] / quota:.0f}%" if quota else ""),
            Text(str(r["snapshots"])),
            Text(last),
            Text(fmt.size(r["reclaimable_bytes"])),
        )
    Console().print(table)


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_admin
def scrub(admin: Admin, name: str | None, as_json: bool) -> None:
    """Verify every stored pack and blob against its checksums (no key needed)."""
    reports: dict[str, dict[str, Any]] = {}
    for user in _users(admin, name):
        store = _open_store(admin, user, writer=False)
        if store is None:
            continue
        try:
            reports[user.name] = scrub_store(store).to_json()
        finally:
            store.close()
        record_scrub(admin.db, user, reports[user.name])  # for the dashboard and the alerts
    damaged = any(not r["ok"] for r in reports.values())
    if as_json:
        click.echo(json.dumps(reports))
    else:
        for user_name, r in reports.items():
            status = "ok" if r["ok"] else f"{len(r['problems'])} problem(s)"
            click.echo(
                f"{user_name}: {r['packs']} packs, {r['blobs']} blobs, "
                f"{fmt.size(r['bytes_read'])} read: {status}"
            )
            for problem in r["problems"]:
                click.echo(f"  {problem}")
            if r["affected_snapshots"]:
                click.echo(
                    "  affected snapshots: " + " ".join(s[:8] for s in r["affected_snapshots"])
                )
    if damaged:
        raise SystemExit(EXIT_ERROR)


@cli.group(invoke_without_command=True)
@click.pass_context
def policy(ctx: click.Context) -> None:
    """The server-wide default retention policy (users without their own)."""
    if ctx.invoked_subcommand is None:
        admin = ctx.find_object(Admin)
        assert admin is not None
        raw = admin.db.get_setting("default_policy")
        click.echo(
            "default policy: "
            + (Policy.from_json(json.loads(raw)).describe() if raw else "none (keep everything)")
        )


def _set_policy_options(func: Any) -> Any:
    from ..cli.policy_options import policy_options

    return policy_options(func)


@policy.command("set")
@_set_policy_options
@pass_admin
def policy_set(admin: Admin, /, **keep: Any) -> None:
    """Set the default policy, e.g. --keep-daily 7 --keep-weekly 4 --keep-monthly 12."""
    from ..cli.policy_options import policy_from

    new = policy_from(keep)
    if new.is_empty():
        raise UsageError("give at least one --keep-* option (or use 'policy clear')")
    admin.db.set_setting("default_policy", json.dumps(new.to_json()))
    click.echo(f"default policy: {new.describe()}; the server applies it after each backup")


@policy.command("clear")
@pass_admin
def policy_clear(admin: Admin) -> None:
    """Remove the default policy: snapshots are kept until users forget them."""
    admin.db.set_setting("default_policy", None)
    click.echo("default policy removed")
