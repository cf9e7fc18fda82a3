"""`strongroom-admin replicate NAME --to DIR`: a keyless replica of one account.

The destination is a data folder (created if missing), never a network address: an admin has
no access to another server's accounts over the network, and SSH already moves folders
safely. For an off-site replica, replicate into a folder here and copy that folder with
`rsync --delay-updates` while no replicate runs, or replicate onto a disk that goes
off-site (README, "3-2-1 with strongroom").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from ..cli import format as fmt
from ..errors import EXIT_ERROR, UsageError
from ..server.replica import replicate as replicate_account
from .app import Admin, cli, pass_admin

_ADDRESS = re.compile(r"([a-z][a-z0-9+.-]*://.*|[A-Za-z0-9.-]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5})")


@cli.command()
@click.argument("name")
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(path_type=Path),
    help="The replica's data folder (another server's --data-dir; created if missing).",
)
@click.option(
    "--keep-deleted",
    is_flag=True,
    help="Keep snapshots in the replica that were removed here (default: mirror removals).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_admin
def replicate(admin: Admin, name: str, target: Path, keep_deleted: bool, as_json: bool) -> None:
    """Mirror NAME's encrypted backups and account to another data folder, without any key.

    Only what the replica lacks is copied; run it again (e.g. nightly) to keep it current.
    A strongroom-server started on that folder lets NAME log in with their password."""
    if _ADDRESS.fullmatch(str(target)) and not target.exists():
        raise UsageError(
            f"--to takes a data folder, not a network address ({target}): replicate into a "
            "folder here and copy it with rsync (see the README, '3-2-1 with strongroom')"
        )
    report = replicate_account(
        admin.storage, admin.datadir.root, admin.db, name, target, keep_deleted=keep_deleted
    )
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(
            f"{report.user}: account {report.account}; {len(report.added)} snapshot(s) added, "
            f"{len(report.removed)} removed; {report.blobs_copied} blobs, "
            f"{fmt.size(report.bytes_copied)} copied to {target}"
        )
        for problem in report.problems:
            click.echo(f"  {problem}", err=True)
    if report.problems:
        raise SystemExit(EXIT_ERROR)
