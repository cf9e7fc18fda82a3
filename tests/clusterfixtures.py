"""Several strongroom-server nodes on loopback ports sharing one PostgreSQL database and one S3
bucket (real PostgreSQL 15 and Ceph radosgw, from pgfixtures and s3fixtures).

Credentials reach the nodes as in production: the PostgreSQL password in a 0600 file
(STRONGROOM_METADATA_PASSWORD_FILE), the S3 keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
never on a command line. Each node is a netfixtures.Server with its own work folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
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


# ---- the network end-to-end suite through two nodes ------------------------------------------
#
# STRONGROOM_TEST_NODES=2 makes netfixtures' `server` fixture a ClusterServer: two scale-out
# nodes on a fresh database and bucket behind a round-robin TCP proxy on one loopback port, so
# every connection a test's client opens goes to the next node (as a load balancer would send
# it). Tests that look inside an embedded data folder are marked `embedded_only` and run in
# the embedded pass only.


class RoundRobinProxy:
    """A TCP load balancer in threads: each accepted connection is piped to the next target
    (a target that refuses is skipped, like a load balancer's retry). Stops by itself when
    the fixture ends; every socket has a timeout so no thread waits forever."""

    def __init__(self, targets: list[tuple[str, int]], port: int = 0) -> None:
        self.targets = targets
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._next = 0
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = self._connect()
            if upstream is None:
                conn.close()
                continue
            with self._lock:
                self._open |= {conn, upstream}
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        for _ in range(len(self.targets)):
            target = self.targets[self._next % len(self.targets)]
            self._next += 1
            try:
                return socket.create_connection(target, timeout=5)
            except OSError:
                continue
        return None

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.close()
            self._open.clear()


class ClusterServer(Server):
    """netfixtures.Server's interface over two scale-out nodes behind a RoundRobinProxy."""

    embedded = False

    def __init__(self, cluster: Cluster, *extra: str) -> None:
        super().__init__(cluster.tmp / "node-a", *extra, env=cluster.env)
        self.cluster = cluster
        self.nodes = [Server(cluster.tmp / f"node-{n}", *extra, env=cluster.env) for n in "ab"]
        cluster.nodes.extend(self.nodes)
        self.proxy: RoundRobinProxy | None = None
        self.log = self.nodes[0].log

    def start(self, timeout: float = 30) -> Server:
        for node in self.nodes:
            if not node.alive():
                node.start(timeout)
        self.fingerprint = self.nodes[0].fingerprint
        assert all(n.fingerprint == self.fingerprint for n in self.nodes)
        if self.proxy is None:  # a restart keeps the port, so clients' settings stay valid
            targets = [("127.0.0.1", n.port) for n in self.nodes]
            self.proxy = RoundRobinProxy(targets, self.port)
            self.port = self.proxy.port
        self.proc = self.nodes[0].proc
        return self

    def stop(self, timeout: float = 15) -> int:
        codes = [node.stop(timeout) for node in self.nodes if node.alive()]
        self._close_proxy()
        return max(codes, default=0)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()
        self._close_proxy()

    def _close_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None

    def alive(self) -> bool:
        return all(node.alive() for node in self.nodes)

    def stored_state(self, dest: Path) -> list[Path]:
        """Everything the deployment keeps, as files to scan: each table's values (bytea raw,
        the rest as text) from every schema of the database, every object of the bucket, and
        the nodes' work folders and logs."""
        from psycopg import sql

        dest.mkdir(parents=True, exist_ok=True)
        files = []
        with psycopg.connect(self.cluster.dsn, autocommit=True, connect_timeout=10) as conn:
            tables = conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
            for schema, table in tables:
                query = sql.SQL("SELECT * FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
                out = bytearray()
                for row in conn.execute(query).fetchall():
                    for value in row:
                        raw = isinstance(value, bytes | memoryview)
                        out += bytes(value) if raw else str(value).encode()
                        out += b"\0"
                files.append(dest / f"table-{len(files)}")
                files[-1].write_bytes(out)
        s3 = self.cluster.ceph.client()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.cluster.bucket):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=self.cluster.bucket, Key=obj["Key"])["Body"].read()
                files.append(dest / f"object-{len(files)}")
                files[-1].write_bytes(body)
        for node in self.nodes:
            files += [p for p in node.data_dir.rglob("*") if p.is_file()]
            files.append(node.log)
        return files


def nodes_wanted() -> int:
    return int(os.environ.get("STRONGROOM_TEST_NODES", "1") or "1")


def cluster_server(request: pytest.FixtureRequest, tmp: Path) -> Iterator[Server]:
    pg = request.getfixturevalue("pg_cluster")
    ceph = request.getfixturevalue("ceph_s3")
    c = make_cluster(tmp / "cluster", pg, ceph)
    srv = ClusterServer(c)
    try:
        srv.start()
        yield srv
    finally:
        srv.kill()
        destroy_cluster(c)
