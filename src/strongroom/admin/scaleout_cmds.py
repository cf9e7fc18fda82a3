"""`strongroom-admin migrate` (an embedded data folder into PostgreSQL + S3) and
`strongroom-admin rebuild-index NAME` (a user's index from the trailers of their packs)."""

from __future__ import annotations

import dataclasses
import json

import click

from ..errors import EXIT_ERROR, UsageError
from ..server.backend import open_embedded
from ..server.control import ask_server
from .app import Admin, cli, pass_admin


@cli.command()
@click.option("--metadata", default=None, help="The destination PostgreSQL (postgresql://…).")
@click.option("--blobs", default=None, help="The destination bucket (s3://BUCKET?endpoint=…).")
@click.option("--json", "as_json", is_flag=True)
@pass_admin
def migrate(admin: Admin, metadata: str | None, blobs: str | None, as_json: bool) -> None:
    """Copy the data folder (--data-dir: users, keys, packs, snapshots, policies, history,
    certificate and secret) into PostgreSQL + S3; resumable, verified by scrub. Stop the
    embedded server first; the folder is left as it was."""
    from ..server.deployment import refuse_argv_secrets
    from ..server.migration import migrate as run
    from ..server.scaleout import open_scaleout

    refuse_argv_secrets(metadata, blobs)
    config = admin.config
    config.metadata = metadata or config.metadata
    config.blobs = blobs or config.blobs
    if not (config.metadata and config.blobs):
        raise UsageError("give --metadata and --blobs (or STRONGROOM_METADATA / STRONGROOM_BLOBS)")
    source = open_embedded(config.data_dir)
    try:
        if ask_server(source.datadir.root, {"op": "storage-open", "storage_id": "0" * 32}, 10):
            raise UsageError(
                "a strongroom-server is running on this data folder; stop it before migrating"
            )
        dest = open_scaleout(config, None)
        try:
            report = run(source, dest, say=lambda line: None if as_json else click.echo(line))
        finally:
            dest.close()
    finally:
        source.close()
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    for name, store in report.stores.items():
        click.echo(f"{name}: {store['snapshots']} snapshots, {store['blobs']} blobs: verified")
    click.echo(
        f"migration complete ({len(report.steps_done)} steps now, "
        f"{len(report.steps_skipped)} done before); start the nodes with these --metadata and "
        "--blobs: clients keep their pinned fingerprint"
    )


@cli.command("rebuild-index")
@click.argument("name")
@click.option("--dry-run", "-n", is_flag=True, help="Only report what would be indexed.")
@click.option("--json", "as_json", is_flag=True)
@pass_admin
def rebuild_index(admin: Admin, name: str, dry_run: bool, as_json: bool) -> None:
    """Index the blobs of NAME's pack objects that the index lacks (from each pack's trailer,
    no key needed): after an index was lost or restored from an older backup."""
    from ..store.rebuild import rebuild_index as rebuild

    user = admin.existing(name)
    if not admin.storage.exists(user.storage_id):
        raise UsageError(f"{user.name} has no storage yet")
    store = admin.storage.open(user.storage_id, writer=True)
    try:
        report = rebuild(store, dry_run=dry_run)
    finally:
        store.close()
    result = dataclasses.asdict(report)
    if as_json:
        click.echo(json.dumps(result))
    else:
        verb = "would index" if dry_run else "indexed"
        click.echo(
            f"{user.name}: {report.objects} pack objects, {report.indexed_before} were indexed; "
            f"{verb} {report.packs_added} packs ({report.blobs_added} blobs)"
        )
        for what in ("missing", "damaged", "without_trailer"):
            for pack in result[what]:
                click.echo(f"  {what.replace('_', ' ')}: pack {pack[:16]}")
    if report.missing or report.damaged:
        raise SystemExit(EXIT_ERROR)
