"""Open the scale-out deployment: PostgreSQL from `metadata`, the bucket from `blobs`.

Both are checked at once, so a node that cannot reach either says so in one line at start-up
instead of failing its first client. Credentials come from server/deployment.py (files or the
environment) and never appear in a message.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ..db import close_pools, postgres_database
from ..store.objects import LocalObjects, ObjectStore
from .backend import Backend, SharedStorage
from .datadir import DataDir
from .deployment import BlobsSpec, MetadataSpec, blobs_spec, metadata_spec
from .nodes import SharedSessions
from .opsdb import OpsDB
from .userdb import UserDB

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import ServerConfig

ADMIN_NODE = "admin-tool"  # the admin tool holds no sessions; it only reads the table


def open_scaleout(config: ServerConfig, node: str | None) -> Backend:
    meta = metadata_spec(config.metadata, config.metadata_password_file)
    blobs = blobs_spec(config.blobs, config.s3_credentials_file)
    closers: list[Callable[[], None]] = [close_pools]
    objects, close_objects = _objects(blobs, config)
    closers.append(close_objects)
    conninfo = _conninfo(meta)
    try:
        db = postgres_database(conninfo)
        userdb = UserDB(db)
    except BaseException:
        for close in closers:
            with contextlib.suppress(Exception):
                close()
        raise
    datadir = DataDir(config.data_dir)
    if node is not None:  # the admin tool only looks for a node's socket there
        datadir.ensure_workdir()
    sessions = SharedSessions(
        db,
        node or ADMIN_NODE,
        node or "",
        interval_s=config.heartbeat_interval,
        missed=config.missed_heartbeats,
    )
    return Backend(
        kind="scaleout",
        datadir=datadir,
        userdb=userdb,
        ops=OpsDB(db),
        storage=SharedStorage(db, objects),
        sessions=sessions,
        cluster=sessions if node is not None else None,
        describe=f"metadata: {meta.shown}; blobs: {blobs.shown}",
        closers=closers,
        conninfo=conninfo,
    )


def _conninfo(meta: MetadataSpec) -> str:
    if meta.password is None:
        return meta.url  # libpq finds it: PGPASSWORD, PGPASSFILE, ~/.pgpass
    from psycopg.conninfo import make_conninfo

    return make_conninfo(meta.url, password=meta.password)


def _objects(
    blobs: BlobsSpec, config: ServerConfig
) -> tuple[Callable[[str], ObjectStore], Callable[[], None]]:
    """A factory of per-user object stores (prefix = storage ID) and how to close them."""
    if blobs.kind == "file":
        assert blobs.path is not None
        root = blobs.path

        def local(storage_id: str) -> ObjectStore:
            return LocalObjects(root / DataDir.check_storage_id(storage_id) / "packs")

        return local, lambda: None
    from ..store.s3objects import S3Bucket, S3Settings

    bucket = S3Bucket(
        S3Settings(
            bucket=blobs.bucket,
            endpoint=blobs.endpoint,
            region=blobs.region or "us-east-1",
            access_key=blobs.access_key,
            secret_key=blobs.secret_key,
            ca_file=str(blobs.ca_file) if blobs.ca_file else None,
            read_timeout_s=config.s3_read_timeout,
            attempts=config.s3_attempts,
        )
    )
    try:
        bucket.check()
    except BaseException:
        bucket.close()
        raise

    def s3(storage_id: str) -> ObjectStore:
        return bucket.objects(DataDir.check_storage_id(storage_id))

    return s3, bucket.close
