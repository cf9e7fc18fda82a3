"""`strongroom backup`: a new snapshot of some folders (the engine is strongroom.archiver)."""

from __future__ import annotations

import json
import os
import sys

import click

from ..errors import EXIT_PARTIAL, StrongroomError, UsageError
from ..excludes import ExcludeError, ExcludeMatcher, read_exclude_file
from ..fsmeta import hostname as this_host
from ..repository import Repository, load_snapshots
from ..snapshot import Snapshot
from . import format as fmt
from .app import cli
from .errors import display as _display
from .errors import handle_errors as _handle_errors
from .target import Where, open_repo, repo_options

handle_errors = _handle_errors("strongroom", (ExcludeError,))


def _recorded_folder(r: Repository) -> tuple[str, ...]:
    """`backup` with no PATH: the folder the admin recorded for this user on the server."""
    from ..client.remote import RemoteRepository

    if not isinstance(r, RemoteRepository):
        raise UsageError(
            "give the folders or files to back up (e.g. strongroom backup ~/Documents)"
        )
    if not r.directory:
        raise UsageError(
            "no folder is recorded for you on the server: give the folders to back up "
            "(or ask the admin to set one with 'strongroom-admin user set NAME --directory DIR')"
        )
    folder = os.path.expanduser(r.directory)  # the admin may record '~/Documents'
    if not os.path.isdir(folder):
        raise StrongroomError(
            f"{r.directory}: the folder recorded for you on the server does not exist here"
        )
    return (folder,)


def _parse_time(text: str) -> int:
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--time {text!r}: use a date and time like '2026-11-29 14:00'") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as a person means it
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def _parent(snapshots: list[Snapshot], paths: list[str], host: str) -> Snapshot | None:
    key = sorted(paths)
    same = [s for s in snapshots if sorted(s.paths) == key and s.host == host]
    return max(same, key=lambda s: (s.time_ns, s.id)) if same else None


@cli.command()
@repo_options
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--exclude", "-e", "excludes", multiple=True, help="Exclude a glob pattern (repeatable)."
)
@click.option(
    "--exclude-file",
    "exclude_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Read exclude patterns from a file (repeatable).",
)
@click.option("--tag", "tags", multiple=True, help="Add a tag to the snapshot (repeatable).")
@click.option("--host", default=None, help="Host name to record (default: this machine's).")
@click.option(
    "--time",
    "snap_time",
    default=None,
    help="Time to record for the snapshot, e.g. '2026-11-29 14:00' (local time; default now).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--no-cache", is_flag=True, help="Do not use or update the local cache.")
@handle_errors
def backup(
    where: Where,
    paths: tuple[str, ...],
    excludes: tuple[str, ...],
    exclude_files: tuple[str, ...],
    tags: tuple[str, ...],
    host: str | None,
    snap_time: str | None,
    as_json: bool,
    no_cache: bool,
) -> None:
    """Back up PATHS (default: the folder recorded for you on the server) into a new snapshot."""
    from ..archiver import Archiver, Scanner
    from ..cache import LocalCache
    from .progress import ProgressBar

    patterns = list(excludes)
    for f in exclude_files:
        patterns.extend(read_exclude_file(f))
    matcher = ExcludeMatcher(patterns) if patterns else None
    hostname = host or this_host()
    when = _parse_time(snap_time) if snap_time else None
    # With the paths known, the scanner lists them while the password is checked (the key
    # derivation releases the interpreter lock); the recorded folder is known only after login.
    scanner = Scanner(list(paths), matcher) if paths else None
    try:
        r = open_repo(where, writer=True)
        try:
            if scanner is None:
                scanner = Scanner(list(_recorded_folder(r)), matcher)
            abs_paths = scanner.paths
            parent = _parent(load_snapshots(r), abs_paths, hostname)
            cache = None if no_cache else LocalCache(r.repo_id, abs_paths)
            with ProgressBar("backup", enabled=None if not as_json else False) as bar:
                previous = parent.stats.get("bytes_scanned") if parent is not None else None
                if isinstance(previous, int):
                    bar.set_total(previous)  # a good estimate, without a second walk
                else:
                    bar.scan_totals(abs_paths, matcher)
                archiver = Archiver(
                    r,
                    cache,
                    matcher,
                    progress=bar.advance,
                    warn=lambda m: bar.print(f"warning: {_display(m)}"),
                )
                result = archiver.run(
                    scanner,
                    parent,
                    tags=list(tags),
                    exclude_patterns=patterns,
                    host=hostname,
                    time_ns=when,
                )
            if cache is not None:
                cache.close()
        finally:
            r.close()
    finally:
        if scanner is not None:
            scanner.stop()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "snapshot": result.snapshot.id,
                    "parent": result.snapshot.parent,
                    "added": result.added,
                    "modified": result.modified,
                    "removed": result.removed,
                    "unchanged": result.unchanged,
                    "files": result.files,
                    "dirs": result.dirs,
                    "bytes_scanned": result.bytes_scanned,
                    "bytes_read": result.bytes_read,
                    "bytes_uploaded": result.bytes_uploaded,
                    "duration": round(result.duration, 3),
                    "warnings": result.warnings,
                    "notes": result.notes,
                }
            )
        )
    else:
        click.echo(f"snapshot {result.snapshot.short_id} saved")
        click.echo(
            f"files: {result.added} added, {result.modified} modified, "
            f"{result.removed} removed, {result.unchanged} unchanged"
        )
        click.echo(
            f"{fmt.size(result.bytes_scanned)} scanned, {fmt.size(result.bytes_read)} read, "
            f"{fmt.size(result.bytes_uploaded)} stored after dedup and compression, "
            f"in {fmt.duration(result.duration)}"
        )
        if result.warnings:
            click.echo(
                f"{len(result.warnings)} file(s) or folder(s) could not be read (see warnings)"
            )
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if result.warnings:
        sys.exit(EXIT_PARTIAL)
