"""`strongroom check`: verify the repository's structure, and with --read-data every blob."""

from __future__ import annotations

import click

from ..errors import StrongroomError
from .app import cli, handle_errors
from .target import Where, open_repo, repo_options


@cli.command(name="check")
@repo_options
@click.option("--read-data", is_flag=True, help="Also read and verify every stored blob.")
@handle_errors
def check_cmd(where: Where, read_data: bool) -> None:
    """Verify the repository's structure (and with --read-data, all its data)."""
    from ..checker import check

    r = open_repo(where)
    try:
        report = check(r, read_data=read_data)
    finally:
        r.close()
    for err in report.errors:
        click.echo(f"error: {err}", err=True)
    if report.affected_snapshots:
        click.echo(
            "affected snapshots: " + ", ".join(s[:8] for s in sorted(report.affected_snapshots)),
            err=True,
        )
    what = f", {report.blobs_read} blobs read and verified" if read_data else ""
    if report.ok:
        click.echo(f"no errors: {report.snapshots} snapshots, {report.trees} trees checked{what}")
    else:
        raise StrongroomError(f"check found {len(report.errors)} error(s)")
