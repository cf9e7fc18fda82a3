"""Several strongroom-server nodes on loopback ports sharing one PostgreSQL database and one S3
bucket (real PostgreSQL 15 and Ceph radosgw, from pgfixtures and s3fixtures).

Credentials reach the nodes as in production: the PostgreSQL password in a 0600 file
(STRONGROOM_METADATA_PASSWORD_FILE), the S3 keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
never on a command line. Each node is a netfixtures.Server with its own work folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from netfixtures import NetCli, Server

if TYPE_CHECKING:
    from pgfixtures import PgCluster
    from s3fixtures import CephS3

HEARTBEAT = "0.5"  # seconds; a node silent for 4 beats is dead
MISSED = "4"


@dataclass
class Cluster:
    tmp: Path
    dsn: str  # with the password: for the tests' own look-ups only
    bucket: str
    ceph: CephS3
    pg: PgCluster
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[Server] = field(default_factory=list)

    @property
    def metadata_url(self) -> str:
        return _without_password(self.dsn)

    @property
    def blobs_url(self) -> str:
        return f"s3://{self.bucket}?endpoint={self.ceph.endpoint}&region={self.ceph.region}"

    def node(self, name: str, **env: str) -> Server:
        server = Server(self.tmp / name, env={**self.env, **env})
        self.nodes.append(server)
        return server

    def storage_id(self, node: Server, user: str) -> str:
        users = json.loads(node.admin("user", "list", "--json").stdout)
        return str(next(u["storage_id"] for u in users if u["name"] == user))

    def sessions_of(self, storage_id: str) -> int:
        rows = self.query("SELECT COUNT(*) FROM sessions WHERE storage_id = %s", storage_id)
        return int(rows[0][0])  # type: ignore[call-overload]

    def user(self, node: Server, name: str, *extra: str) -> NetCli:
        return node.add_user(name, self.tmp, extra=extra)

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def healthy(self) -> None:
        """Whatever a test stopped comes back: PostgreSQL, radosgw, every node."""
        self.pg.ensure_running()
        if not self.ceph.rgw_alive():
            self.ceph.start_rgw()
        self.ceph.resume_rgw()
        for node in self.nodes:
            if not node.alive():
                node.start()

    def stored_of(self, storage_id: str) -> int:
        rows = self.query(f"SELECT COALESCE(SUM(size), 0) FROM store_{storage_id}.packs")
        return int(rows[0][0])  # type: ignore[call-overload]

    def packs_of(self, storage_id: str) -> int:
        rows = self.query(f"SELECT COUNT(*) FROM store_{storage_id}.packs")
        return int(rows[0][0])  # type: ignore[call-overload]


def _without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def make_cluster(tmp: Path, pg: PgCluster, ceph: CephS3) -> Cluster:
    database = pg.create_database("sc")
    dsn = pg.dsn_for(database)
    s3 = ceph.client()
    bucket = ceph.new_bucket(s3, "sc")
    tmp.mkdir(parents=True, exist_ok=True)
    secret = tmp / "pg-password"
    secret.write_text(pg.password + "\n")
    secret.chmod(0o600)
    cluster = Cluster(tmp, dsn, bucket, ceph, pg)
    cluster.env = {
        "STRONGROOM_METADATA": cluster.metadata_url,
        "STRONGROOM_BLOBS": cluster.blobs_url,
        "STRONGROOM_METADATA_PASSWORD_FILE": str(secret),
        "AWS_ACCESS_KEY_ID": ceph.access_key,
        "AWS_SECRET_ACCESS_KEY": ceph.secret_key,
        "STRONGROOM_HEARTBEAT_INTERVAL": HEARTBEAT,
        "STRONGROOM_MISSED_HEARTBEATS": MISSED,
        "PYTHONFAULTHANDLER": "1",  # a node that dies of a signal says where
    }
    return cluster


def destroy_cluster(cluster: Cluster) -> None:
    for node in cluster.nodes:
        node.kill()
    from s3fixtures import empty_bucket

    if not cluster.ceph.rgw_alive():
        cluster.ceph.start_rgw()
    cluster.ceph.resume_rgw()
    s3 = cluster.ceph.client()
    empty_bucket(s3, cluster.bucket)
    s3.delete_bucket(Bucket=cluster.bucket)
    cluster.pg.ensure_running()
    cluster.pg.drop_database(urlsplit(cluster.dsn).path.lstrip("/"))


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, pg_cluster: PgCluster, ceph_s3: CephS3
) -> Iterator[Cluster]:
    """Two running nodes ("a", "b") on one database and bucket, for the whole module."""
    c = make_cluster(tmp_path_factory.mktemp("cluster"), pg_cluster, ceph_s3)
    try:
        c.node("node-a").start()
        c.node("node-b").start()
        yield c
    finally:
        destroy_cluster(c)
