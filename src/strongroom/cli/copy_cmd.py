"""`strongroom copy`: copy snapshots to a second repository (the second copy of 3-2-1).

The source is chosen as for every command (--repo, or --server/--user or the saved login);
the destination with its own options (--to-repo, or --to-server and --to-user) and its own
password (--to-password-file, STRONGROOM_TO_PASSWORD, or a hidden prompt; never argv and
never the source's STRONGROOM_PASSWORD). Both are opened on this computer with their own keys.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import click

from ..crypto import constant_time_equal
from ..errors import StrongroomError, UsageError
from ..repository import LocalRepository, Repository, load_snapshots
from ..snapshot import Snapshot, resolve
from .app import cli, handle_errors
from .format import size
from .secrets_input import read_password
from .target import Where, connect, open_repo, repo_options

TO_PASSWORD_ENV = "STRONGROOM_TO_PASSWORD"  # noqa: S105 - a variable name


@dataclass(frozen=True)
class Destination:
    repo: str | None
    server: str | None
    user: str | None
    fingerprint: str | None
    ca_file: str | None
    password_file: str | None


def open_destination(to: Destination) -> Repository:
    if to.repo and to.server:
        raise UsageError("give either --to-repo (a local folder) or --to-server, not both")
    if not to.repo and not to.server:
        raise UsageError(
            "no destination given: use --to-repo DIR, or --to-server HOST:PORT and --to-user NAME"
        )
    if to.server and not to.user:
        raise UsageError("--to-server needs --to-user NAME (the account to copy into)")
    if to.repo and not (Path(to.repo) / "index.sqlite").is_file():
        raise StrongroomError(
            f"no strongroom repository at {to.repo} (create one with 'strongroom init --repo')"
        )
    where = f"{to.user} at {to.server}" if to.server else to.repo
    password = read_password(
        to.password_file, prompt=f"Password of the destination {where}", env=TO_PASSWORD_ENV
    )
    if to.repo:
        return LocalRepository.open(Path(to.repo), password, writer=True)
    target = Where(server=to.server, user=to.user, fingerprint=to.fingerprint, ca_file=to.ca_file)
    return connect(target, password=password)


def _side(what: str, exc: StrongroomError) -> StrongroomError:
    """The same error, saying which of the two repositories it is about."""
    out = StrongroomError(f"{what}: {exc}")
    out.exit_code = exc.exit_code
    return out


@cli.command(name="copy")
@repo_options
@click.argument("snapshots", nargs=-1)
@click.option(
    "--to-repo",
    envvar="STRONGROOM_TO_REPO",
    type=click.Path(file_okay=False),
    help="Destination: a local repository folder (env STRONGROOM_TO_REPO).",
)
@click.option("--to-server", envvar="STRONGROOM_TO_SERVER", help="Destination server HOST:PORT.")
@click.option("--to-user", envvar="STRONGROOM_TO_USER", help="User name on the destination.")
@click.option(
    "--to-fingerprint",
    envvar="STRONGROOM_TO_FINGERPRINT",
    help="Expected SHA-256 fingerprint of the destination server's certificate.",
)
@click.option(
    "--to-ca-file",
    envvar="STRONGROOM_TO_CA_FILE",
    type=click.Path(dir_okay=False),
    help="Verify the destination server with this CA bundle.",
)
@click.option(
    "--to-password-file",
    envvar="STRONGROOM_TO_PASSWORD_FILE",
    type=click.Path(dir_okay=False),
    help=f"Read the destination's password from this file (else {TO_PASSWORD_ENV} or a prompt).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def copy_cmd(
    where: Where,
    snapshots: tuple[str, ...],
    to_repo: str | None,
    to_server: str | None,
    to_user: str | None,
    to_fingerprint: str | None,
    to_ca_file: str | None,
    to_password_file: str | None,
    as_json: bool,
) -> None:
    """Copy snapshots (default: all) to another repository or account.

    Snapshots the destination already has are skipped; only blobs it lacks are sent. Copies
    keep their IDs, times and tags; they are re-encrypted here for the destination's keys."""
    from ..transfer.copier import Copier, select
    from ..transfer.idmap import IdMap

    to = Destination(to_repo, to_server, to_user, to_fingerprint, to_ca_file, to_password_file)
    if not to.repo and not to.server:
        open_destination(to)  # the usage error, before any password is asked
    t0 = time.monotonic()
    try:
        src = open_repo(where)
    except StrongroomError as exc:
        raise _side("source", exc) from None
    try:
        wanted = _chosen(load_snapshots(src), snapshots)  # before a password is asked
        try:
            dst = open_destination(to)
        except StrongroomError as exc:
            raise _side("destination", exc) from None
        try:
            if src.repo_id == dst.repo_id:
                raise UsageError("source and destination are the same repository")
            have = {s.id for s in load_snapshots(dst)}
            todo, skipped = select(wanted, have)
            idmap = None
            if not constant_time_equal(src.keys.id_key, dst.keys.id_key):
                idmap = IdMap(src.keys.id_key, dst.keys.id_key)
            try:
                copier = Copier(src, dst, idmap)
                try:
                    copier.stats.skipped = skipped
                    for snap in todo:
                        copier.copy(snap, src.repo_id)
                        if not as_json:
                            click.echo(f"copied snapshot {snap.short_id} of {_when(snap)}")
                finally:
                    copier.close()
            finally:
                if idmap is not None:
                    idmap.close()
        finally:
            dst.close()
    finally:
        src.close()
    stats = copier.stats
    elapsed = time.monotonic() - t0
    if as_json:
        click.echo(json.dumps({**stats.to_json(), "duration": round(elapsed, 3)}))
        return
    click.echo(
        f"{len(stats.copied)} snapshot(s) copied, {len(stats.skipped)} already there; "
        f"read {size(stats.bytes_read)} ({stats.blobs_read} blobs), stored "
        f"{size(stats.bytes_stored)} ({stats.blobs_stored} blobs) in {elapsed:.1f}s"
    )


def _chosen(snapshots: list[Snapshot], specs: tuple[str, ...]) -> list[Snapshot]:
    if not specs:
        return snapshots
    chosen = [resolve(snapshots, spec) for spec in specs]
    return list({s.id: s for s in chosen}.values())


def _when(snap: Snapshot) -> str:
    return f"{snap.time.astimezone():%Y-%m-%d %H:%M:%S} ({snap.host}: {', '.join(snap.paths)})"
