"""`strongroom mount MOUNTPOINT`: the snapshots as a read-only file system (FUSE)."""

from __future__ import annotations

from collections.abc import Callable

import click

from ..repository import Repository
from .app import cli, handle_errors
from .errors import display
from .secrets_input import read_password
from .target import Where, connect, open_repo, repo_options


@cli.command()
@repo_options
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option(
    "--allow-other",
    is_flag=True,
    help="Let other local users in; they see what the stored modes and owners allow "
    "(needs user_allow_other in /etc/fuse.conf unless you are root).",
)
@click.option(
    "--cache-size",
    default="1G",
    show_default=True,
    help="Disk cache for blobs fetched from the server (kept encrypted); 0 turns it off.",
)
@handle_errors
def mount(where: Where, mountpoint: str, allow_other: bool, cache_size: str) -> None:
    """Browse the snapshots at MOUNTPOINT, read-only, until Ctrl-C.

    snapshots/<time>/ holds each snapshot, latest points to the newest, tags/<tag>/,
    hosts/<host>/ and ids/<ID> group them. Files are fetched and decrypted as they are read.
    """
    from ..mount.access import RepoAccess
    from ..mount.blobsource import BlobSource
    from ..mount.diskcache import DiskCache
    from ..mount.fuse_ops import Warner, check_mountpoint, load_binding, serve
    from ..mount.view import SnapshotView
    from ..server.userdb import parse_size

    full = check_mountpoint(mountpoint)
    load_binding()  # a missing libfuse is reported before the password is asked for
    cache_bytes = parse_size(cache_size)
    repo, reopen, label = _open(where)
    warn = Warner()
    access = RepoAccess(repo, reopen, warn)
    try:
        # A local repository is already on disk: caching its blobs again gains nothing.
        disk = DiskCache(repo.repo_id, cache_bytes) if cache_bytes and reopen else None
        view = SnapshotView(access, BlobSource(access, repo.codecs, disk), warn=warn)

        def ready() -> None:
            click.echo(
                f"strongroom: {display(label)} mounted at {display(full)}; Ctrl-C or "
                f"'fusermount3 -u {display(full)}' unmounts",
                err=True,
            )

        serve(view, full, allow_other=allow_other, warn=warn, on_ready=ready)
    finally:
        access.close()
    click.echo(f"strongroom: unmounted {display(full)}", err=True)


def _open(where: Where) -> tuple[Repository, Callable[[], Repository] | None, str]:
    """The repository, how to open it again after a lost connection, and what to call it."""
    if where.repo:
        return open_repo(where), None, f"repository {where.repo}"
    prompt = f"Password for {where.user} at {where.server}" if where.user and where.server else ""
    password = read_password(where.password_file, prompt=prompt or "Password")
    repo = connect(where, password=password)
    # The same server, account and certificate every time, whatever the config says later.
    again = Where(
        server=repo.transport.address,
        user=repo.account.user,
        fingerprint=None if where.ca_file else repo.transport.fingerprint,
        ca_file=where.ca_file,
    )
    label = f"{repo.account.user} at {repo.transport.address}"
    return repo, lambda: connect(again, password=password), label
