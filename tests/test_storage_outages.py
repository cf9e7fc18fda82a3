"""The scale-out store when its engines go away: a stopped or hung radosgw and a stopped
PostgreSQL give one clear error within a bounded time, nothing half-done is indexed, and the
same store instance (a server keeps it open) works again once they are back."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from storage_backends import Backend, close_buckets
from strongroom import db as dblayer
from strongroom.db import DatabaseUnavailable
from strongroom.store import PackStore
from strongroom.store.objects import ObjectStoreError

if TYPE_CHECKING:
    from pgfixtures import PgCluster
    from s3fixtures import S3Bucket

pytest_plugins = ["pgfixtures", "s3fixtures"]
pytestmark = pytest.mark.timeout(180)
MiB = 1 << 20


@pytest.fixture
def store(pg_dsn: str, s3_bucket: S3Bucket) -> Iterator[PackStore]:
    spec = {
        "kind": "scaleout",
        "dsn": pg_dsn,
        "storage_id": os.urandom(16).hex(),
        "s3": {
            "endpoint": s3_bucket.endpoint,
            "region": s3_bucket.region,
            "bucket": s3_bucket.name,
            "access_key": s3_bucket.access_key,
            "secret_key": s3_bucket.secret_key,
            "pack_target": MiB,
            "read_timeout": 2,
        },
    }
    from strongroom.db.postgres import PgSettings

    # The shared pool, made first with short waits (a node's default waits 15 s for one).
    dblayer.postgres_database(pg_dsn, settings=PgSettings(connect_timeout_s=2, pool_wait_s=4))
    backend = Backend("scaleout", spec)
    yield backend.open(create=True)
    backend.close_all()
    dblayer.close_pools()
    close_buckets()


def _blobs(n: int = 3) -> dict[bytes, bytes]:
    return {os.urandom(32): os.urandom(400_000) for _ in range(n)}


def _store_all(store: PackStore, blobs: dict[bytes, bytes]) -> None:
    for bid, data in blobs.items():
        store.add_blob(bid, 0, data)
    store.flush()


def _refused(store: PackStore, blobs: dict[bytes, bytes], error: type[Exception]) -> str:
    t0 = time.monotonic()
    with pytest.raises(error) as info:
        _store_all(store, blobs)
    assert time.monotonic() - t0 < 30
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("how", ["stopped", "hung"])
def test_object_store_away(store: PackStore, s3_bucket: S3Bucket, how: str) -> None:
    blobs = _blobs()
    if how == "stopped":
        s3_bucket.cluster.stop_rgw()
    else:
        s3_bucket.cluster.pause_rgw()
    try:
        message = _refused(store, blobs, ObjectStoreError)
    finally:
        if how == "stopped":
            s3_bucket.cluster.start_rgw()
        else:
            s3_bucket.cluster.resume_rgw()
    assert "object store" in message and s3_bucket.secret_key not in message
    assert store.packs() == {}
    assert store.query("SELECT COUNT(*) FROM pending_packs")[0][0] == 0
    assert store.missing(blobs) == set(blobs)
    _store_all(store, blobs)  # the same instance, once it is back
    assert dict(store.read_blobs(blobs)) == blobs


def test_postgresql_away(store: PackStore, pg_cluster: PgCluster) -> None:
    blobs = _blobs()
    pg_cluster.stop(mode="immediate")
    try:
        message = _refused(store, blobs, DatabaseUnavailable)
    finally:
        pg_cluster.start()
    assert pg_cluster.password not in message
    assert store.packs() == {}
    assert set(store.objects.names()) == set()  # the pending row comes first: nothing written
    _store_all(store, blobs)
    store.commit_snapshot("s", 1, b"r", blobs)
    assert dict(store.read_blobs(blobs)) == blobs
