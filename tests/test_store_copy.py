"""Copying an embedded store into PostgreSQL + S3 (the storage half of `strongroom-admin
migrate`): everything arrives (packs with trailers, snapshots with their manifests, received
times and protection), and a copy SIGKILLed after its first pack resumes and completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_backends import Backend, close_buckets
from strongroom import db as dblayer
from strongroom.store import PackStore
from strongroom.store.copy import copy_store
from strongroom.store.rebuild import rebuild_index
from strongroom.store.scrub import scrub

pytest_plugins = ["pgfixtures", "s3fixtures"]
pytestmark = pytest.mark.timeout(180)
HERE = Path(__file__).parent


@pytest.fixture
def scaleout(pg_dsn: str, s3_bucket: object) -> Iterator[Backend]:
    b = s3_bucket
    spec = {
        "kind": "scaleout",
        "dsn": pg_dsn,
        "storage_id": os.urandom(16).hex(),
        "s3": {
            "endpoint": b.endpoint,  # type: ignore[attr-defined]
            "region": b.region,  # type: ignore[attr-defined]
            "bucket": b.name,  # type: ignore[attr-defined]
            "access_key": b.access_key,  # type: ignore[attr-defined]
            "secret_key": b.secret_key,  # type: ignore[attr-defined]
            "pack_target": 1 << 20,
        },
    }
    backend = Backend("scaleout", spec)
    yield backend
    backend.close_all()
    dblayer.close_pools()
    close_buckets()


def test_copy_embedded_into_scaleout_resumes_after_a_kill(
    tmp_path: Path, scaleout: Backend
) -> None:
    src_root = tmp_path / "embedded"
    src = PackStore.create(src_root, {"repo_id": b"r"})
    blobs: dict[bytes, bytes] = {}
    for round_ in range(3):  # three flushes: three packs
        for _ in range(4):
            bid, data = os.urandom(32), os.urandom(50_000 + round_)
            src.add_blob(bid, round_ % 2, data)
            blobs[bid] = data
        src.flush()
    ids = list(blobs)
    src.commit_snapshot("a", 1, b"ra", ids[:6], "s1", received_ns=111)
    src.commit_snapshot("b", 2, b"rb", ids, "s1", received_ns=222)
    src.set_protected("a", True)
    src.close()

    dst = scaleout.open(create=True)
    dst.close()
    spec = {**scaleout.spec, "stop_at": "put-done", "copy_from": str(src_root)}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "storage_backends.py"), "child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    try:
        assert proc.stdout.readline().strip() == "put-done"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    dst = scaleout.open()
    assert dst.packs() == {}  # the killed run's object was never indexed
    src = PackStore(src_root)
    report = copy_store(src, dst)
    assert (report.packs_copied, report.snapshots_copied) == (3, 2)
    assert copy_store(src, dst).packs_copied == 0  # nothing left to do
    src.close()

    assert dict(dst.read_blobs(ids)) == blobs
    rows = {r.snap_id: r for r in dst.list_snapshots()}
    assert (rows["a"].protected, rows["a"].received_ns, rows["a"].record) == (True, 111, b"ra")
    assert (
        dst.snapshot_manifest("b") == set(ids)
        and dst.get_meta("repo_id") == scaleout.spec["storage_id"].encode()
    )
    dst.grace_ns = 0
    dst.remove_leftovers()  # the killed run's unindexed object
    assert set(dst.objects.names()) == set(dst.packs())
    assert scrub(dst).ok
    # The copies carry trailers: the bucket alone can give the index back.
    with dst.transaction() as tx:
        tx.execute("DELETE FROM snapshots")
        tx.execute("DELETE FROM blobs")
        tx.execute("DELETE FROM packs")
    assert rebuild_index(dst).blobs_added == len(blobs)
