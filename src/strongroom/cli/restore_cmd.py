"""`strongroom restore`: a snapshot back onto disk (the engine is strongroom.restorer)."""

from __future__ import annotations

import sys

import click

from ..errors import EXIT_PARTIAL
from ..repository import load_snapshots
from ..snapshot import resolve
from . import format as fmt
from .app import cli, handle_errors
from .errors import display as _display
from .target import Where, open_repo, repo_options


@cli.command()
@repo_options
@click.argument("snapshot")
@click.option(
    "--target",
    "-t",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to restore into.",
)
@click.option(
    "--include",
    "-i",
    "includes",
    multiple=True,
    help="Restore only this snapshot path (repeatable).",
)
@click.option(
    "--allow-foreign-owners",
    is_flag=True,
    help="Also restore into existing folders (the target included) owned by another user. "
    "Without it, restore stops at such a folder, because its owner could swap it for a link "
    "while the restore runs: this matters when root restores over other users' files.",
)
@handle_errors
def restore(
    where: Where,
    snapshot: str,
    target: str,
    includes: tuple[str, ...],
    allow_foreign_owners: bool,
) -> None:
    """Restore SNAPSHOT (an ID prefix or 'latest') into --target."""
    from ..restorer import Restorer
    from .progress import ProgressBar

    r = open_repo(where)
    try:
        snap = resolve(load_snapshots(r), snapshot)
        with ProgressBar("restore") as bar:
            bar.set_total(int(snap.stats.get("bytes_scanned", 0)) if not includes else 0)
            restorer = Restorer(
                r,
                warn=lambda m: bar.print(f"warning: {_display(m)}"),
                progress=bar.advance,
                note=lambda m: bar.print(f"note: {_display(m)}"),
                allow_foreign_owners=allow_foreign_owners,
            )
            result = restorer.restore(snap, target, list(includes))
    finally:
        r.close()
    click.echo(
        f"restored snapshot {snap.short_id}: {result.files} files, {result.dirs} folders, "
        f"{fmt.size(result.bytes_written)} in {fmt.duration(result.duration)} to {target}"
    )
    if result.warnings:
        click.echo(f"{len(result.warnings)} warning(s) during restore", err=True)
        sys.exit(EXIT_PARTIAL)
