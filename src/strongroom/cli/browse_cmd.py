"""`strongroom snapshots`, `ls` and `diff`: looking at what is stored."""

from __future__ import annotations

import json

import click

from .. import tree
from ..browse import diff, find_subtree, walk
from ..repository import load_snapshots
from ..snapshot import open_snapshot, resolve
from . import format as fmt
from .app import cli, handle_errors
from .attrs_view import has_acl, json_fields, long_suffix
from .errors import display as _display
from .target import Where, open_repo, repo_options


@cli.command()
@repo_options
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def snapshots(where: Where, as_json: bool) -> None:
    """List snapshots, oldest first."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    r = open_repo(where)
    try:
        rows = r.snapshot_rows()
        aead = r.keys.aead()
        snaps = sorted((open_snapshot(aead, row) for row in rows), key=lambda s: (s.time_ns, s.id))
    finally:
        r.close()
    protected = {row.snap_id for row in rows if row.protected}
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        **s.to_json(),
                        "short_id": s.short_id,
                        "time": s.time.isoformat(),
                        "protected": s.id in protected,
                    }
                    for s in snaps
                ]
            )
        )
        return
    table = Table(box=None)
    for col in ("ID", "Time", "Host", "Tags", "Paths", "Files", "Size", "Protected"):
        table.add_column(col)
    for s in snaps:
        # Text, not str: a cell string would be parsed as rich markup ("[/]" in a path crashes).
        table.add_row(
            Text(s.short_id),
            Text(fmt.local_time(s.time_ns)),
            Text(_display(s.host)),
            Text(_display(",".join(s.tags))),
            Text("\n".join(_display(p) for p in s.paths)),
            Text(str(s.stats.get("files", ""))),
            Text(fmt.size(s.stats.get("bytes_scanned", 0))),
            Text("yes" if s.id in protected else ""),
        )
    Console().print(table)
    click.echo(f"{len(snaps)} snapshot(s)")


@cli.command(name="ls")
@repo_options
@click.argument("snapshot")
@click.argument("path", required=False, default="")
@click.option("--long", "-l", "long_", is_flag=True, help="Show mode, size and time.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@handle_errors
def ls_cmd(where: Where, snapshot: str, path: str, long_: bool, as_json: bool) -> None:
    """List the files in SNAPSHOT (optionally below PATH)."""
    r = open_repo(where)
    try:
        snap = resolve(load_snapshots(r), snapshot)
        base, node, subtree = find_subtree(r, bytes.fromhex(snap.tree), path)
        entries = (
            walk(r, subtree, base)
            if node is None or node.type == tree.DIR
            else iter([(base, node)])
        )
        for p, n in entries:
            shown = _display(p)
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "path": shown,
                            "type": n.type,
                            "mode": n.mode,
                            "size": n.size,
                            "mtime_ns": n.mtime_ns,
                            **json_fields(n),
                        }
                    )
                )
            elif long_:
                link = f" -> {_display(n.target)}" if n.target is not None else ""
                mode = fmt.mode_string(n) + ("+" if has_acl(n) else " ")  # "+": ls's ACL mark
                click.echo(
                    f"{mode} {n.size:>12} {fmt.local_time(n.mtime_ns)} {shown}{link}"
                    f"{long_suffix(n)}"
                )
            else:
                click.echo(shown)
    finally:
        r.close()


@cli.command(name="diff")
@repo_options
@click.argument("snapshot1")
@click.argument("snapshot2")
@handle_errors
def diff_cmd(where: Where, snapshot1: str, snapshot2: str) -> None:
    """Show what changed between two snapshots (+ added, - removed, M modified, T type changed).

    Modified includes changes of metadata only: mode, owner, extended attributes, ACLs, flags.
    """
    r = open_repo(where)
    counts = {"+": 0, "-": 0, "M": 0, "T": 0}
    try:
        snaps = load_snapshots(r)
        a, b = resolve(snaps, snapshot1), resolve(snaps, snapshot2)
        for change in diff(r, bytes.fromhex(a.tree), bytes.fromhex(b.tree)):
            suffix = "/" if change.node.type == tree.DIR else ""
            click.echo(f"{change.kind}    {_display(change.path)}{suffix}")
            counts[change.kind] += 1
    finally:
        r.close()
    click.echo(
        f"\n{counts['+']} added, {counts['-']} removed, {counts['M']} modified, "
        f"{counts['T']} changed type"
    )
