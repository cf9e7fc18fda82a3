"""The pack store on its two backends, alone (no client, no network protocol): write, read
back, commit and GC on embedded (SQLite + a local folder) and scale-out (PostgreSQL 15 +
Ceph radosgw, both started here with the test fixtures, on loopback).

    .venv/bin/python bench/store_bench.py [--mib 256] [--blob-kib 1024] [--refs 50000]

Prints one line per step and backend (MB/s or seconds). Run it on an idle machine: the object
store here is one radosgw process with a memstore OSD on the same 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from pgfixtures import PgCluster  # noqa: E402
from s3fixtures import CephS3  # noqa: E402
from strongroom import db as dblayer  # noqa: E402
from strongroom.store import PackStore  # noqa: E402
from strongroom.store.gc import collect_garbage  # noqa: E402
from strongroom.store.s3objects import S3Bucket, S3Settings  # noqa: E402


def timed(label: str, nbytes: int, fn: Callable[[], object]) -> None:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    rate = f"{nbytes / dt / 1e6:8.1f} MB/s" if nbytes else ""
    print(f"  {label:<34} {dt:7.2f} s {rate}", flush=True)


def workload(name: str, store: PackStore, args: argparse.Namespace) -> None:
    print(f"{name}: pack target {store.target_pack_size >> 20} MiB", flush=True)
    size = args.blob_kib * 1024
    blobs = [(os.urandom(32), os.urandom(size)) for _ in range(args.mib * 1024 // args.blob_kib)]
    total = len(blobs) * size

    def write() -> None:
        for bid, data in blobs:
            store.add_blob(bid, 0, data)
        store.flush()

    timed(f"write {args.mib} MiB", total, write)
    ids = [b for b, _d in blobs]
    timed("read all back", total, lambda: sum(len(d) for _b, d in store.read_blobs(ids)))
    small = [(os.urandom(32), os.urandom(64)) for _ in range(args.refs)]
    timed(
        f"write {args.refs} small blobs",
        0,
        lambda: [store.add_blob(b, 1, d) for b, d in small] and store.flush(),
    )
    manifest = ids + [b for b, _d in small]
    timed(
        f"commit ({len(manifest)} refs)", 0, lambda: store.commit_snapshot("s1", 1, b"r", manifest)
    )
    timed("missing() of all refs", 0, lambda: store.missing(manifest))
    store.delete_snapshot("s1")
    store.commit_snapshot("s2", 2, b"r", ids[: len(ids) // 2])

    def gc() -> None:
        with store.gc_lock():
            collect_garbage(store, horizon_ns=0)
            collect_garbage(store)

    timed("GC (half the data garbage)", 0, gc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--blob-kib", type=int, default=1024)
    ap.add_argument("--refs", type=int, default=50_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        store = PackStore.create(Path(tmp) / "repo")
        workload("embedded (SQLite + local folder)", store, args)
        store.close()

        pg, ceph = PgCluster(), CephS3()
        try:
            pg.start()
            ceph.start()
            s3 = ceph.client()
            bucket_name = ceph.new_bucket(s3, "bench")
            bucket = S3Bucket(
                S3Settings(
                    bucket=bucket_name,
                    endpoint=ceph.endpoint,
                    region=ceph.region,
                    access_key=ceph.access_key,
                    secret_key=ceph.secret_key,
                )
            )
            sid = os.urandom(16).hex()
            db = dblayer.postgres_database(pg.dsn_for(pg.create_database("bench")), f"store_{sid}")
            store = PackStore.create_attached(db, bucket.objects(sid), {"repo_id": sid.encode()})
            workload("scale-out (PostgreSQL 15 + radosgw)", store, args)
            store.close()
            bucket.close()
            dblayer.close_pools()
        finally:
            ceph.destroy()
            pg.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
