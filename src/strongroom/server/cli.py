"""`strongroom-server`: start the backup server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import __version__
from ..cli.errors import handle_errors
from .config import load_config

if TYPE_CHECKING:
    import ssl

    from .context import ServerContext


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="strongroom-server")
@click.option("--host", default=None, help="Address to listen on (default 0.0.0.0).")
@click.option("--port", type=int, default=None, help="TCP port (default 44000; 0 = any free).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Server data folder (default ./strongroom-data, env STRONGROOM_DATA_DIR).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="STRONGROOM_SERVER_CONFIG",
    default=None,
    help="TOML config file (see deploy/strongroom-server.toml.example).",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None, help="PEM certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="PEM private key.")
@click.option("--max-connections", type=int, default=None, help="Connections served at once.")
@click.option(
    "--idle-timeout", type=float, default=None, help="Seconds before an idle client is dropped."
)
@click.option(
    "--web-port",
    type=int,
    default=None,
    help="HTTPS port of the web console and /metrics (default 44080; 0 = off).",
)
@click.option(
    "--metadata",
    default=None,
    metavar="postgresql://USER@HOST/DB",
    help="Scale-out: PostgreSQL for all shared state (env STRONGROOM_METADATA; the password "
    "from metadata_password_file, PGPASSWORD or ~/.pgpass, never here).",
)
@click.option(
    "--blobs",
    default=None,
    metavar="s3://BUCKET?endpoint=URL",
    help="Scale-out: the S3 bucket for packs (env STRONGROOM_BLOBS; keys from "
    "s3_credentials_file or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).",
)
@click.option("--node-id", default=None, help="Scale-out: this node's name in the sessions table.")
@handle_errors("strongroom-server")
def main(config_file: str | None, **flags: Any) -> None:
    """Serve encrypted backups to strongroom clients over TLS."""
    from .app import setup_logging
    from .context import ServerContext
    from .deployment import refuse_argv_secrets
    from .identity import materialise, shared_identity
    from .opener import open_backend
    from .purge import finish_purges
    from .tls import certificate_fingerprint, ensure_certificate, server_ssl_context

    refuse_argv_secrets(flags.get("metadata"), flags.get("blobs"))
    config = load_config(Path(config_file) if config_file else None, flags)
    setup_logging(config)
    node_id = config.node_id or _node_id(config.port)
    backend = open_backend(config, node=node_id if config.scaleout else None)
    try:
        datadir = backend.datadir
        if backend.kind == "scaleout":
            # One identity for every node, so clients' pinned fingerprint holds on any of them.
            identity = shared_identity(backend.db)
            materialise(datadir, identity)
            secret = identity["server_secret"]
        else:
            ensure_certificate(datadir)
            secret = datadir.server_secret()
        if config.tls_cert is None or config.tls_key is None:
            cert, key = datadir.cert_path, datadir.key_path
        else:
            cert, key = config.tls_cert, config.tls_key
        tls = server_ssl_context(cert, key)
        fingerprint = certificate_fingerprint(cert)
        # A `user delete --purge-data` a crash interrupted.
        finish_purges(backend.storage, backend.userdb, backend.sessions.in_use)
        if backend.cluster is not None:
            backend.cluster.start()
        ctx = ServerContext(config=config, backend=backend, secret=secret, node_id=node_id)
        _serve(ctx, tls, fingerprint)
    finally:
        backend.close()
    click.echo("strongroom-server stopped")


def _node_id(port: int) -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{port}:{os.urandom(3).hex()}"


def _serve(ctx: ServerContext, tls: ssl.SSLContext, fingerprint: str) -> None:
    from .app import serve

    backend = ctx.backend

    def announce(addresses: list[Any], web: list[tuple[str, int]]) -> None:
        for addr in addresses:
            host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            click.echo(f"strongroom-server listening on {host}:{addr[1]} (TLS)")
        for web_host, web_port in web:
            shown = f"[{web_host}]" if ":" in web_host else web_host
            click.echo(f"web console on https://{shown}:{web_port}/")
        click.echo(backend.describe)
        if backend.kind == "scaleout":
            click.echo(f"node: {ctx.node_id}")
        click.echo(f"certificate fingerprint: {fingerprint}")
        sys.stdout.flush()

    asyncio.run(serve(ctx, tls, announce))


if __name__ == "__main__":
    main()
