"""`strongroom`: back up, list, compare, restore, forget and check snapshots."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

# The heavy engines (archiver, restorer, checker) and rich are imported by the commands that
# use them: a quick `ls` or `snapshots --json` then starts in about half the time.
from .. import __version__, crypto, tree
from ..browse import diff, find_subtree, walk
from ..errors import EXIT_PARTIAL, StrongroomError, UsageError
from ..excludes import ExcludeError, ExcludeMatcher, read_exclude_file
from ..repository import LocalRepository, Repository, load_snapshots
from ..snapshot import Snapshot, open_snapshot, resolve
from . import format as fmt
from .errors import display as _display
from .errors import handle_errors as _handle_errors
from .secrets_input import read_new_password, read_password
from .target import Where, open_repo, repo_options

F = TypeVar("F", bound=Callable[..., Any])


handle_errors = _handle_errors("strongroom", (ExcludeError,))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="strongroom")
def cli() -> None:
    """strongroom: encrypted, deduplicated backups."""


@cli.command()
@click.option(
    "--repo",
    "-r",
    envvar="STRONGROOM_REPO",
    required=True,
    type=click.Path(file_okay=False),
    help="Repository folder to create (env STRONGROOM_REPO). Server accounts are made by the "
    "server's admin with strongroom-admin.",
)
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    help="Read the password from this file (first line).",
)
@click.option(
    "--kdf-memory",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Argon2id memory cost in MiB (lower only for tests).",
)
@click.option("--kdf-iterations", type=click.IntRange(1, 64), default=3, show_default=True)
@handle_errors
def init(repo: str, password_file: str | None, kdf_memory: int, kdf_iterations: int) -> None:
    """Create a new repository protected by a password."""
    password = read_password(password_file, confirm=True, prompt="New repository password")
    kdf = crypto.KdfParams(memory_kib=kdf_memory * 1024, iterations=kdf_iterations)
    r = LocalRepository.init(Path(repo), password, kdf)
    repo_id = r.repo_id
    r.close()
    click.echo(f"created repository {repo_id[:8]} at {repo}")
    click.echo("Keep the password safe: without it the data cannot be recovered.")


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
    from ..archiver import Archiver
    from ..cache import LocalCache
    from .progress import ProgressBar

    patterns = list(excludes)
    for f in exclude_files:
        patterns.extend(read_exclude_file(f))
    matcher = ExcludeMatcher(patterns) if patterns else None
    hostname = host or socket.gethostname()
    r = open_repo(where, writer=True)
    try:
        paths = paths or _recorded_folder(r)
        abs_paths = [os.path.abspath(p) for p in paths]
        for p, raw in zip(abs_paths, paths, strict=True):
            if not os.path.lexists(p):
                raise StrongroomError(f"{raw}: no such file or folder")
        parent = _parent(load_snapshots(r), abs_paths, hostname)
        cache = None if no_cache else LocalCache(r.repo_id, abs_paths)
        with ProgressBar("backup", enabled=None if not as_json else False) as bar:
            bar.scan_totals(abs_paths, matcher)
            archiver = Archiver(
                r,
                cache,
                matcher,
                progress=bar.advance,
                warn=lambda m: bar.print(f"warning: {_display(m)}"),
            )
            result = archiver.run(
                abs_paths,
                parent,
                tags=list(tags),
                exclude_patterns=patterns,
                host=hostname,
                time_ns=_parse_time(snap_time) if snap_time else None,
            )
        if cache is not None:
            cache.close()
    finally:
        r.close()
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
                        }
                    )
                )
            elif long_:
                link = f" -> {_display(n.target)}" if n.target is not None else ""
                click.echo(
                    f"{fmt.mode_string(n)} {n.size:>12} {fmt.local_time(n.mtime_ns)} {shown}{link}"
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
    """Show what changed between two snapshots (+ added, - removed, M modified, T type changed)."""
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


@cli.command()
@repo_options
@click.option(
    "--new-password-file",
    type=click.Path(dir_okay=False),
    help="Read the new password from a file.",
)
@click.option(
    "--old-password-file",
    type=click.Path(dir_okay=False),
    help="After an admin reset: your previous password, which locks your existing backups.",
)
@handle_errors
def passwd(where: Where, new_password_file: str | None, old_password_file: str | None) -> None:
    """Change your password (re-wraps the keys; data is not rewritten)."""
    changed: list[bool] = []

    def new_password() -> bytes:
        changed.append(True)
        return read_new_password(new_password_file)

    old = (lambda: read_password(old_password_file)) if old_password_file else None
    r = open_repo(where, writer=True, new_password=new_password, old_password=old)
    try:
        if not changed:  # not already done by a login that required it
            r.change_password(new_password())
    finally:
        r.close()
    click.echo("password changed")


@cli.command()
@click.option("--server", "-s", envvar="STRONGROOM_SERVER", help="Server HOST:PORT.")
@click.option("--user", "-u", envvar="STRONGROOM_USER", help="User name on the server.")
@click.option("--fingerprint", envvar="STRONGROOM_FINGERPRINT", help="Expected fingerprint.")
@click.option("--ca-file", envvar="STRONGROOM_CA_FILE", type=click.Path(dir_okay=False))
@click.option("--password-file", type=click.Path(dir_okay=False))
@click.option(
    "--accept-new-keys",
    is_flag=True,
    help="Forget what this computer remembers of the account's keys and password hashing "
    "(only after the admin confirms they recreated your account).",
)
@handle_errors
def login(
    server: str | None,
    user: str | None,
    fingerprint: str | None,
    ca_file: str | None,
    password_file: str | None,
    accept_new_keys: bool,
) -> None:
    """Log in to a server once: pins its certificate and remembers server and user."""
    from .target import connect

    if server is None and sys.stdin.isatty():
        server = click.prompt("Server (host:port)")
    if user is None and sys.stdin.isatty():
        user = click.prompt("User name")
    if not server or not user:
        raise UsageError("give --server HOST:PORT and --user NAME (or run on a terminal)")
    where = Where(
        server=server,
        user=user,
        fingerprint=fingerprint,
        ca_file=ca_file,
        password_file=password_file,
    )
    r = connect(where, remember=True, accept_new_keys=accept_new_keys)
    try:
        n = len(r.snapshot_rows())
        folder = r.directory or "(none recorded)"
    finally:
        r.close()
    click.echo(f"logged in as {user} at {server}; {n} snapshot(s); your folder: {folder}")


# forget, protect and prune (lifecycle) and `schedule` live in their own modules; importing
# them registers them on `cli`.
from . import lifecycle, schedule  # noqa: E402, F401


def main() -> None:
    cli(prog_name="strongroom")


if __name__ == "__main__":
    main()
