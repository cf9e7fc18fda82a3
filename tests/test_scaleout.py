"""Scale-out end to end: two strongroom-server nodes on loopback sharing a real PostgreSQL 15
and a real Ceph radosgw bucket; real clients back up through either node."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import tree_state
from netfixtures import NetCli, Server, finish, spawn

if TYPE_CHECKING:
    from clusterfixtures import Cluster

pytest_plugins = ["pgfixtures", "s3fixtures", "clusterfixtures"]
pytestmark = pytest.mark.timeout(300)


def _tree(root: Path, files: int, size: int, seed: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i:03d}.bin").write_bytes(
            os.urandom(size)
            if seed == "random"
            else (f"{seed}-{i}-".encode() * (size // 8 + 1))[:size]
        )
    return root


def _via(client: NetCli, node: Server) -> NetCli:
    client.server = node
    return client


def _one_line_error(res: object) -> str:
    """The run failed with one error line (warnings before it are allowed), no traceback."""
    err = res.stderr.strip()  # type: ignore[attr-defined]
    assert res.returncode != 0, res  # type: ignore[attr-defined]
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("strongroom: error: ") and err.count("error:") == 1, err
    return last


def test_backups_alternate_nodes(cluster: Cluster, tmp_path: Path) -> None:
    cluster.healthy()
    a, b = cluster.nodes
    assert a.fingerprint == b.fingerprint  # one certificate for every node
    ann = cluster.user(a, "ann")
    data = _tree(tmp_path / "docs", 20, 30_000, "ann")
    first = _via(ann, a).backup(data)
    assert first["added"] == 20
    (data / "f000.bin").write_bytes(b"changed")
    (data / "new.txt").write_text("new")
    second = _via(ann, b).backup(data)
    assert (second["added"], second["modified"]) == (1, 1)
    assert second["bytes_uploaded"] < 100_000  # dedup against what node a stored
    snaps = _via(ann, a).run("snapshots", "--json").json()
    assert len(snaps) == 2
    target = tmp_path / "restored"
    _via(ann, a).restore(target)
    assert tree_state(target / "docs") == tree_state(data)
    _via(ann, b).run("check", "--read-data")
    # The admin tool works on the shared state from any node's host.
    users = json.loads(b.admin("user", "list", "--json").stdout)
    assert [u["name"] for u in users if u["name"] == "ann"] == ["ann"]
    usage = {u["name"]: u for u in json.loads(a.admin("usage", "--json").stdout)}
    assert usage["ann"]["snapshots"] == 2 and usage["ann"]["stored_bytes"] > 0
    scrub = json.loads(b.admin("scrub", "ann", "--json").stdout)
    assert scrub["ann"]["ok"] and scrub["ann"]["packs"] >= 1
    assert a.admin("fingerprint").stdout.strip() == a.fingerprint
    # The server's retention through node a's admin socket, seen through node b.
    b.admin("user", "set", "ann", "--keep-last", "1")
    forgot = json.loads(a.admin("forget", "ann", "--json").stdout)
    assert forgot["ann"]["removed"] == [first["snapshot"]]
    assert len(_via(ann, b).run("snapshots", "--json").json()) == 1
    # The password never reaches a log line; the S3 key neither.
    logs = a.log.read_text() + b.log.read_text()
    assert cluster.pg.password not in logs and cluster.ceph.secret_key not in logs
    assert "Traceback" not in logs


def test_users_back_up_at_once_across_nodes(cluster: Cluster, tmp_path: Path) -> None:
    cluster.healthy()
    a, b = cluster.nodes
    clients = []
    for i in range(8):
        node = (a, b)[i % 2]
        client = cluster.user(node, f"u{i}")
        clients.append((client, _tree(tmp_path / f"d{i}", 6, 30_000, f"user{i}")))
    procs = [spawn(c, "backup", str(d), "--json") for c, d in clients]
    results = [finish(p) for p in procs]
    for res in results:
        assert res.returncode == 0, res.stderr
    for i, (client, data) in enumerate(clients):
        _via(client, (b, a)[i % 2]).run("check", "--read-data")  # through the other node
        target = tmp_path / f"r{i}"
        client.restore(target)
        assert tree_state(target / data.name) == tree_state(data)


def test_quota_holds_exactly_across_nodes(cluster: Cluster, tmp_path: Path) -> None:
    """Two backups of one account through two nodes at once, each alone within the quota,
    together over it: the nodes' buffered uploads are booked in PostgreSQL, so one fails and
    the account never holds more than its quota."""
    cluster.healthy()
    a, b = cluster.nodes
    quota = 3 * 1024 * 1024
    carl = cluster.user(a, "carl", "--quota", str(quota))
    one = _tree(tmp_path / "one", 4, 500_000, "random")
    two = _tree(tmp_path / "two", 4, 500_000, "random")
    first = spawn(_via(carl, a), "backup", str(one), "--json")
    second = spawn(_via(carl, b), "backup", str(two), "--json")
    results = [finish(first), finish(second)]
    codes = sorted(r.returncode for r in results)
    assert codes[0] == 0 or codes == [1, 1], results
    refused = [r for r in results if r.returncode != 0]
    assert refused and all("quota" in r.stderr for r in refused), results
    usage = {u["name"]: u for u in json.loads(b.admin("usage", "--json").stdout)}
    assert usage["carl"]["quota_used_bytes"] <= quota, usage["carl"]
    assert cluster.query("SELECT COUNT(*) FROM quota_reservations")[0][0] == 0  # all settled
    _via(carl, b).run("check", "--read-data")


def test_node_killed_mid_backup_the_retry_through_the_other_completes(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.healthy()
    a, b = cluster.nodes
    dora = cluster.user(a, "dora")
    sid = cluster.storage_id(a, "dora")
    data = _tree(tmp_path / "big", 12, 6 * 1024 * 1024, "random")  # 72 MiB: packs of 32 MiB
    proc = spawn(_via(dora, a), "backup", str(data), "--json")
    deadline = time.monotonic() + 120
    while cluster.packs_of(sid) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the backup ended before a pack was stored"
    a.kill()  # SIGKILL, mid-backup
    failed = finish(proc)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    stored = cluster.stored_of(sid)  # what node a had stored and indexed when it died
    retry = _via(dora, b).backup(data)  # the load balancer sends the retry to node b
    total = 12 * 6 * 1024 * 1024
    assert stored > 1024 * 1024
    assert retry["bytes_uploaded"] <= total - stored + 1024 * 1024, (retry, stored)
    _via(dora, b).run("check", "--read-data")
    a.start()  # back in the cluster, on the same port
    target = tmp_path / "restored"
    _via(dora, a).restore(target)
    assert tree_state(target / "big") == tree_state(data)
    # The killed node's session expired with its heartbeats: nothing holds GC back.
    assert cluster.sessions_of(sid) == 0


def test_postgres_restart_mid_backup(cluster: Cluster, tmp_path: Path) -> None:
    cluster.healthy()
    a, _b = cluster.nodes
    eve = cluster.user(a, "eve")
    data = _tree(tmp_path / "data", 10, 3 * 1024 * 1024, "random")
    proc = spawn(_via(eve, a), "backup", str(data), "--json")
    time.sleep(1.5)
    cluster.pg.restart("fast")
    res = finish(proc)
    if res.returncode != 0:  # it may also ride over the restart: the pool reconnects
        _one_line_error(res)
    again = _via(eve, a).backup(data)
    assert again["snapshot"]
    _via(eve, a).run("check", "--read-data")
    assert "Traceback" not in a.log.read_text()


def test_object_store_refusing_or_hanging(cluster: Cluster, tmp_path: Path) -> None:
    """radosgw stopped: a clear one-line error, earlier snapshots intact, the next run
    completes. radosgw hung (SIGSTOP): an error after the node's S3 timeout, not a hang."""
    cluster.healthy()
    a, _b = cluster.nodes
    fay = cluster.user(a, "fay")
    data = _tree(tmp_path / "data", 5, 100_000, "fay")
    _via(fay, a).backup(data)
    (data / "more.bin").write_bytes(os.urandom(200_000))
    cluster.ceph.stop_rgw()
    err = _one_line_error(_via(fay, a).run("backup", str(data), check=False))
    assert "object store" in err or "S3" in err or "bucket" in err, err
    cluster.ceph.start_rgw()
    _via(fay, a).backup(data)
    assert len(_via(fay, a).run("snapshots", "--json").json()) == 2
    _via(fay, a).run("check", "--read-data")
    # A hung object store, through a node with short S3 timeouts.
    slow = cluster.node("node-slow", STRONGROOM_S3_READ_TIMEOUT="2", STRONGROOM_S3_ATTEMPTS="1")
    slow.start()
    try:
        (data / "more2.bin").write_bytes(os.urandom(200_000))
        cluster.ceph.pause_rgw()
        started = time.monotonic()
        res = _via(fay, slow).run("backup", str(data), check=False, timeout=120)
        _one_line_error(res)
        assert time.monotonic() - started < 90
        cluster.ceph.resume_rgw()
        _via(fay, slow).backup(data)
        _via(fay, a).run("check", "--read-data")
    finally:
        cluster.ceph.resume_rgw()
        slow.kill()
        cluster.nodes.remove(slow)


def test_gc_on_one_node_while_a_backup_runs_on_the_other(cluster: Cluster, tmp_path: Path) -> None:
    cluster.healthy()
    a, b = cluster.nodes
    gus = cluster.user(a, "gus")
    sid = cluster.storage_id(a, "gus")
    old = _tree(tmp_path / "old", 6, 1024 * 1024, "random")
    first = _via(gus, a).backup(old)
    (old / "f000.bin").write_bytes(os.urandom(1024 * 1024))
    _via(gus, a).backup(old)
    _via(gus, a).run("forget", first["snapshot"])
    big = _tree(tmp_path / "new", 8, 4 * 1024 * 1024, "random")
    proc = spawn(_via(gus, a), "backup", str(old), str(big), "--json")
    deadline = time.monotonic() + 60
    while cluster.sessions_of(sid) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    report = json.loads(b.admin("gc", "gus", "--json").stdout)["gus"]["report"]
    res = finish(proc)
    assert res.returncode == 0, res.stderr
    assert report["unreferenced_blobs"] >= 1
    _via(gus, b).run("check", "--read-data")
    scrub = json.loads(a.admin("scrub", "gus", "--json").stdout)
    assert scrub["gus"]["ok"], scrub
    # With the backup over, the next GC frees what is really unreferenced.
    again = json.loads(a.admin("gc", "gus", "--json").stdout)["gus"]["report"]
    assert again["waiting_blobs"] == 0
    rebuilt = json.loads(a.admin("rebuild-index", "gus", "--json").stdout)
    assert rebuilt["packs_added"] == 0 and rebuilt["objects"] == rebuilt["indexed_before"]


def test_user_delete_with_purge_removes_index_and_objects(cluster: Cluster, tmp_path: Path) -> None:
    cluster.healthy()
    a, b = cluster.nodes
    zed = cluster.user(a, "zed")
    sid = cluster.storage_id(a, "zed")
    _via(zed, b).backup(_tree(tmp_path / "z", 3, 200_000, "random"))
    s3 = cluster.ceph.client()
    listed = s3.list_objects_v2(Bucket=cluster.bucket, Prefix=f"{sid}/")
    assert listed.get("KeyCount", 0) >= 1
    out = a.admin("user", "delete", "zed", "--yes", "--purge-data").stdout
    assert "with their stored backups" in out, out
    assert s3.list_objects_v2(Bucket=cluster.bucket, Prefix=f"{sid}/").get("KeyCount", 0) == 0
    schemas = cluster.query("SELECT 1 FROM pg_namespace WHERE nspname = %s", f"store_{sid}")
    assert schemas == [] and cluster.query("SELECT * FROM pending_purges") == []
    assert _via(zed, b).run("snapshots", check=False).returncode != 0  # the account is gone


def test_console_on_a_node_shows_the_shared_state(cluster: Cluster, tmp_path: Path) -> None:
    """The web console of any node: the accounts, snapshots and actions of the whole cluster
    (GC and scrub through the bucket), and its admins from PostgreSQL."""
    from consolefixtures import CONSOLE_ADMIN, CONSOLE_PASSWORD, Console
    from netfixtures import free_port

    cluster.healthy()
    a, _b = cluster.nodes
    vic = cluster.user(a, "vic")
    _via(vic, a).backup(_tree(tmp_path / "v", 3, 50_000, "vic"))
    web = cluster.node("node-web", STRONGROOM_WEB_PORT=str(free_port()))
    web.start()
    try:
        a.admin(
            "console-admin", "add", CONSOLE_ADMIN, "--password-stdin", input=CONSOLE_PASSWORD + "\n"
        )
        c = Console(web.web_port)
        assert c.login().status == 200
        assert "vic" in c.get("/").text
        page = c.get("/users/vic")
        assert page.status == 200 and "1" in page.text
        scrubbed = c.post("/users/vic/scrub", {})
        assert scrubbed.flashes() == ["scrub of vic: no problems"], scrubbed.flashes()
        assert c.post("/users/vic/gc", {}).status == 200
        _via(vic, web).run("check", "--read-data")
    finally:
        web.kill()
        cluster.nodes.remove(web)


def test_a_password_reset_on_one_node_ends_sessions_on_the_other_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    from netfixtures import ADMIN_PASSWORD
    from strongroom.protocol import messages as m
    from test_server_hostile import connect

    cluster.healthy()
    a, b = cluster.nodes
    cluster.user(a, "wes")
    with connect(b, "wes") as thief:  # a stolen password, logged in through node b
        a.admin("user", "passwd", "wes", "--password-stdin", input=ADMIN_PASSWORD + "\n")
        answers = thief.until_closed()  # node b is told through PostgreSQL, not a request
        assert [msg.code for _r, msg in answers] == [m.ErrorCode.SESSION_ENDED], answers
    assert "the account changed on another node" in b.log.read_text()


def test_replicate_from_the_cluster_into_a_data_folder(cluster: Cluster, tmp_path: Path) -> None:
    """`strongroom-admin replicate` reads a scaled-out account (PostgreSQL + bucket) and writes
    a keyless replica as an embedded data folder; a server on that folder lets the user log
    in with their password and restore."""
    cluster.healthy()
    a, b = cluster.nodes
    rue = cluster.user(a, "rue")
    data = _tree(tmp_path / "docs", 12, 40_000, "rue")
    first = _via(rue, a).backup(data)
    (data / "more.txt").write_text("more")
    _via(rue, b).backup(data)
    target = tmp_path / "replica"
    report = json.loads(b.admin("replicate", "rue", "--to", str(target), "--json").stdout)
    assert report["account"] == "created" and len(report["added"]) == 2
    again = json.loads(a.admin("replicate", "rue", "--to", str(target), "--json").stdout)
    assert again["added"] == [] and again["blobs_copied"] == 0
    replica = Server(target).start()
    try:
        there = NetCli(tmp_path / "rue-on-replica", replica, "rue")
        snaps = there.run("snapshots", "--json").json()
        assert len(snaps) == 2 and first["snapshot"] in {s["id"] for s in snaps}
        there.run("check", "--read-data")
        there.restore(tmp_path / "restored")
        assert tree_state(tmp_path / "restored" / "docs") == tree_state(data)
    finally:
        replica.kill()
