"""`strongroom forget`, `protect` and `prune`: retention and reclaiming space.

The policy is applied here, where snapshots are decrypted and their host and paths are known;
the server applies the admin's own policy itself after each backup (server/stores.py).
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import UsageError
from ..repository import Repository, load_snapshots
from ..retention import Candidate, Decision, Policy, apply_policy
from ..snapshot import Snapshot, resolve
from . import format as fmt
from .app import cli, handle_errors
from .errors import display
from .policy_options import policy_from, policy_options
from .target import Where, open_repo, repo_options


@cli.command()
@repo_options
@click.argument("snapshot_ids", nargs=-1)
@policy_options
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be removed.")
@click.option("--prune", is_flag=True, help="Reclaim the space of removed snapshots at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
@handle_errors
def forget(
    where: Where,
    snapshot_ids: tuple[str, ...],
    dry_run: bool,
    prune: bool,
    as_json: bool,
    **keep: Any,
) -> None:
    """Remove snapshots: the ones named, and those a --keep-* policy does not keep.

    Policies work as restic's, per host and set of paths. Protected snapshots are always kept.
    """
    policy = policy_from(keep)
    if not snapshot_ids and policy.is_empty():
        raise UsageError("name the snapshots to remove, or give a policy such as --keep-daily 7")
    r = open_repo(where, writer=not dry_run)
    try:
        rows = {row.snap_id: row for row in r.snapshot_rows()}
        snaps = load_snapshots(r)
        named = {snap.id for snap in (resolve(snaps, s) for s in snapshot_ids)}
        decisions = _decide(snaps, rows, policy, named)
        removed = [d for d in decisions if not d.keep]
        if not dry_run:
            for d in removed:
                r.delete_snapshot(d.candidate.id)
        report = r.prune() if prune and removed and not dry_run else None
    finally:
        r.close()
    by_id = {s.id: s for s in snaps}
    if as_json:
        click.echo(json.dumps(_json(decisions, by_id, dry_run, report)))
        return
    verb = "would remove" if dry_run else "removed"
    if policy.is_empty():  # only named snapshots: one line each, as before policies existed
        for d in removed:
            click.echo(f"{verb} snapshot {d.candidate.id[:8]}")
    else:
        _print_table(decisions, by_id)
        click.echo(f"{verb} {len(removed)} snapshot(s), kept {len(decisions) - len(removed)}")
    if report is not None:
        click.echo(f"pruned: {fmt.size(int(report.get('reclaimed_bytes', 0)))} reclaimed")


def _decide(
    snaps: list[Snapshot], rows: dict[str, Any], policy: Policy, named: set[str]
) -> list[Decision]:
    protected = {sid for sid, row in rows.items() if row.protected}
    for sid in named & protected:
        raise UsageError(
            f"snapshot {sid[:8]} is protected; run 'strongroom protect --remove' first"
        )
    candidates = [
        Candidate(s.id, s.time_ns, "\0".join([s.host, *sorted(s.paths)]), s.id in protected)
        for s in snaps
    ]
    if policy.is_empty():
        decisions = [Decision(c, True, ["not named"]) for c in candidates]
    else:
        decisions = apply_policy(candidates, policy)
    for d in decisions:
        if d.candidate.id in named:
            d.keep, d.reasons = False, []
    return sorted(decisions, key=lambda d: (d.candidate.time_ns, d.candidate.id))


def _print_table(decisions: list[Decision], by_id: dict[str, Snapshot]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None)
    for col in ("ID", "Time", "Host", "Paths", "Action", "Reasons"):
        table.add_column(col)
    for d in decisions:
        s = by_id[d.candidate.id]
        table.add_row(
            Text(s.short_id),
            Text(fmt.local_time(s.time_ns)),
            Text(display(s.host)),
            Text("\n".join(display(p) for p in s.paths)),
            Text("keep" if d.keep else "remove", style="green" if d.keep else "red"),
            Text(", ".join(d.reasons)),
        )
    Console().print(table)


def _json(
    decisions: list[Decision],
    by_id: dict[str, Snapshot],
    dry_run: bool,
    report: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "keep": [
            {
                "id": d.candidate.id,
                "time": by_id[d.candidate.id].time.isoformat(),
                "reasons": d.reasons,
            }
            for d in decisions
            if d.keep
        ],
        "remove": [
            {"id": d.candidate.id, "time": by_id[d.candidate.id].time.isoformat()}
            for d in decisions
            if not d.keep
        ],
        "prune": report,
    }


@cli.command()
@repo_options
@click.argument("snapshot_ids", nargs=-1, required=True)
@click.option("--remove", is_flag=True, help="Remove the protection instead.")
@handle_errors
def protect(where: Where, snapshot_ids: tuple[str, ...], remove: bool) -> None:
    """Protect snapshots against every forget (the server's policy included)."""
    r = open_repo(where, writer=True)
    try:
        snaps = load_snapshots(r)
        for snap in {s.id: s for s in (resolve(snaps, x) for x in snapshot_ids)}.values():
            r.set_protected(snap.id, not remove)
            click.echo(f"snapshot {snap.short_id} {'unprotected' if remove else 'protected'}")
    finally:
        r.close()


@cli.command()
@repo_options
@click.option("--dry-run", "-n", is_flag=True, help="Only report what could be reclaimed.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def prune(where: Where, dry_run: bool, as_json: bool) -> None:
    """Reclaim the space of data no snapshot uses any more (on a server, the server does the
    work, without any of your keys)."""
    r: Repository = open_repo(where, writer=True)
    try:
        report = r.prune(dry_run=dry_run)
    finally:
        r.close()
    if as_json:
        click.echo(json.dumps(report))
        return
    what = "could be reclaimed" if dry_run else "reclaimed"
    click.echo(
        f"{fmt.size(int(report.get('unreferenced_bytes', 0)))} unreferenced; "
        f"{fmt.size(int(report.get('reclaimed_bytes', 0)))} {what}; "
        f"{report.get('deleted_packs', 0)} pack(s) deleted, "
        f"{report.get('repacked_packs', 0)} repacked"
    )
    waiting = int(report.get("waiting_blobs", 0))
    if waiting:
        click.echo(f"{waiting} blob(s) wait for backups still running; a later prune frees them")
