"""Opening the deployment a server's settings name: embedded (a data folder) or scale-out
(PostgreSQL + S3). Its own module because it is the one place that knows both: backend.py
is what both share, scaleout.py builds on it."""

from __future__ import annotations

from .backend import Backend, open_embedded
from .config import ServerConfig


def open_backend(config: ServerConfig, *, node: str | None = None) -> Backend:
    """The deployment the settings name. `node`: this server node's ID and address, which
    registers it for heartbeats (the admin tool passes None: it holds no sessions)."""
    if not config.scaleout:
        return open_embedded(config.data_dir)
    from .scaleout import open_scaleout  # psycopg and boto3 only when they are needed

    return open_scaleout(config, node)
