"""`strongroom-admin migrate`: an embedded data folder moves into a real PostgreSQL 15 and a real
radosgw bucket; a node started on them serves the same certificate, users, keys, snapshots,
policy and console admins; clients keep their pinned fingerprint. A migration killed half-way
is run again and completes; one run again after completion does nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import tree_state
from netfixtures import ADMIN_PASSWORD, Server, exe

if TYPE_CHECKING:
    from pgfixtures import PgCluster
    from s3fixtures import CephS3

pytest_plugins = ["pgfixtures", "s3fixtures", "clusterfixtures"]
pytestmark = pytest.mark.timeout(300)


def test_migrate_embedded_folder_to_postgres_and_s3(
    tmp_path: Path, pg_cluster: PgCluster, ceph_s3: CephS3
) -> None:
    from clusterfixtures import destroy_cluster, make_cluster

    # An embedded server with two users, snapshots, a policy and a console admin.
    old = Server(tmp_path / "embedded").start()
    ann = old.add_user("ann", tmp_path)
    old.add_user("bob", tmp_path)
    data = tmp_path / "docs"
    data.mkdir()
    for i in range(6):
        (data / f"f{i}.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    ann.backup(data)
    (data / "f0.bin").write_bytes(b"changed")
    ann.backup(data)
    old.admin("user", "set", "ann", "--keep-last", "5")
    old.admin("console-admin", "add", "root", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    fingerprint = old.fingerprint
    # A running server is refused: the folder must be still while it is copied.
    cluster = make_cluster(tmp_path / "cluster", pg_cluster, ceph_s3)
    try:
        env = {**old.env, **cluster.env}
        busy = old.admin("migrate", check=False)
        assert busy.returncode != 0  # no destination given
        refused = subprocess.run(
            [*exe("strongroom-admin"), "--data-dir", str(old.data_dir), "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 2 and "stop it" in refused.stderr, refused.stderr
        old.stop()
        # Killed half-way (once the first pack is in the bucket), then run again.
        argv = [*exe("strongroom-admin"), "--data-dir", str(old.data_dir), "migrate"]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if "pack" in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(60)
        done = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert "identity" in report["steps_skipped"] and report["stores"]["ann"]["ok"]
        assert report["stores"]["ann"]["snapshots"] == 2
        again = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True)
        assert json.loads(again.stdout)["steps_done"] == []  # all done before
        # A node on the new deployment: same certificate, same users and keys.
        node = cluster.node("node-a").start()
        assert node.fingerprint == fingerprint
        ann.server = node  # the client's pinned fingerprint is the old server's
        snaps = ann.run("snapshots", "--json").json()
        assert len(snaps) == 2
        target = tmp_path / "restored"
        ann.restore(target)
        assert tree_state(target / "docs") == tree_state(data)
        ann.run("check", "--read-data")
        (data / "new.txt").write_text("after the move")
        assert ann.backup(data)["added"] == 1
        users = {u["name"]: u for u in json.loads(node.admin("user", "list", "--json").stdout)}
        assert set(users) == {"ann", "bob"} and users["ann"]["last_backup_result"] == "ok"
        assert "root" in node.admin("console-admin", "list").stdout
        new_user = node.admin("user", "add", "cyd", "--password-stdin", input="pw12345\n")
        assert new_user.returncode == 0  # IDs continue after the copied ones
        # The policy came along (keep 5): all 3 snapshots kept.
        assert len(ann.run("snapshots", "--json").json()) == 3
    finally:
        old.kill()
        destroy_cluster(cluster)
