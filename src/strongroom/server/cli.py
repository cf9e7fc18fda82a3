"""`strongroom-server`: start the backup server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..cli.errors import handle_errors
from .config import load_config


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
@handle_errors("strongroom-server")
def main(config_file: str | None, **flags: Any) -> None:
    """Serve encrypted backups to strongroom clients over TLS."""
    from .app import serve, setup_logging
    from .context import ServerContext
    from .datadir import DataDir
    from .opsdb import OpsDB
    from .purge import finish_purges
    from .stores import StoreRegistry
    from .tls import certificate_fingerprint, ensure_certificate, server_ssl_context
    from .userdb import UserDB

    config = load_config(Path(config_file) if config_file else None, flags)
    setup_logging(config)
    datadir = DataDir(config.data_dir)
    datadir.ensure()
    if config.tls_cert is None or config.tls_key is None:
        ensure_certificate(datadir)
        cert, key = datadir.cert_path, datadir.key_path
    else:
        cert, key = config.tls_cert, config.tls_key
    tls = server_ssl_context(cert, key)
    fingerprint = certificate_fingerprint(cert)
    userdb = UserDB(datadir.users_db)
    finish_purges(datadir, userdb)  # a `user delete --purge-data` a crash interrupted
    ctx = ServerContext(
        config=config,
        datadir=datadir,
        userdb=userdb,
        secret=datadir.server_secret(),
        stores=StoreRegistry(datadir.storage_root),
        ops=OpsDB(datadir.users_db),
    )

    def announce(addresses: list[Any], web: list[tuple[str, int]]) -> None:
        for addr in addresses:
            host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            click.echo(f"strongroom-server listening on {host}:{addr[1]} (TLS)")
        for web_host, web_port in web:
            shown = f"[{web_host}]" if ":" in web_host else web_host
            click.echo(f"web console on https://{shown}:{web_port}/")
        click.echo(f"data folder: {datadir.root.resolve()}")
        click.echo(f"certificate fingerprint: {fingerprint}")
        sys.stdout.flush()

    asyncio.run(serve(ctx, tls, announce))
    click.echo("strongroom-server stopped")


if __name__ == "__main__":
    main()
