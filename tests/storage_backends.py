"""The two storage backends the conformance suite runs against, and a child process that
opens either one (for the tests that SIGKILL a writer).

A `Backend` opens new PackStore instances on one and the same storage: in embedded mode the
same folder (one writer at a time: its writer lock), in scale-out mode the same PostgreSQL
schema and S3 prefix (any number of writers: each instance stands for a node).

    python tests/storage_backends.py child < spec.json
runs `child_main`: it opens the store the spec names and follows the spec's script, printing
a line at each step so the parent knows when to kill it. Credentials come in the spec on
stdin, never in argv.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strongroom.db import postgres_database
from strongroom.store import PackStore

Spec = dict[str, Any]


@dataclass
class Backend:
    name: str
    spec: Spec
    opened: list[PackStore] = field(default_factory=list)

    def open(self, *, writer: bool = True, **kwargs: Any) -> PackStore:
        store = open_store(self.spec, writer=writer, **kwargs)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            with contextlib.suppress(Exception):
                store.close()
        self.opened.clear()


def _s3_objects(spec: Spec) -> Any:
    from strongroom.store.s3objects import S3Bucket, S3Settings

    s3 = spec["s3"]
    key = (s3["endpoint"], s3["bucket"])
    bucket = _BUCKETS.get(key)
    if bucket is None:
        bucket = _BUCKETS[key] = S3Bucket(
            S3Settings(
                bucket=s3["bucket"],
                endpoint=s3["endpoint"],
                region=s3["region"],
                access_key=s3["access_key"],
                secret_key=s3["secret_key"],
                connect_timeout_s=2,
                read_timeout_s=s3.get("read_timeout", 20),
                attempts=2,
                pack_target=s3.get("pack_target", 1 << 20),
                multipart_threshold=s3.get("multipart_threshold", 16 << 20),
                part_size=s3.get("part_size", 5 << 20),
            )
        )
    return bucket.objects(spec["storage_id"])


_BUCKETS: dict[tuple[str, str], Any] = {}


def close_buckets() -> None:
    for bucket in _BUCKETS.values():
        bucket.close()
    _BUCKETS.clear()


def open_store(
    spec: Spec, *, writer: bool = True, create: bool = False, **kwargs: Any
) -> PackStore:
    meta = {"repo_id": spec["storage_id"].encode()}
    if spec["kind"] == "embedded":
        root = Path(spec["root"])
        if create:
            store = PackStore.create(root, meta)
            if not writer or kwargs:
                store.close()
                return PackStore(root, writer=writer, **kwargs)
            return store
        return PackStore(root, writer=writer, **kwargs)
    db = postgres_database(spec["dsn"], f"store_{spec['storage_id']}")
    objects = _s3_objects(spec)
    if create:
        return PackStore.create_attached(db, objects, meta, label=spec["storage_id"], **kwargs)
    return PackStore.attach(db, objects, writer=writer, label=spec["storage_id"], **kwargs)


def child_main() -> int:
    """Open the store, add the spec's blobs, and stop at the step the spec names: print the
    step's name and sleep (the parent SIGKILLs us there)."""
    spec = json.load(sys.stdin)
    stop_at = spec["stop_at"]  # "put-done" (object durable, not indexed) or "put-started"
    store = open_store(spec, writer=True, **spec.get("open", {}))
    if "gc" in spec:  # a GC killed at one of its steps (store/gc.py's `step` names)
        from strongroom.store.gc import collect_garbage

        def step(name: str) -> None:
            if name == stop_at:
                print(name, flush=True)
                time.sleep(600)

        with store.gc_lock():
            collect_garbage(store, horizon_ns=0)
            collect_garbage(store, repack_threshold=0.1, step=step)
        print("done", flush=True)
        return 0
    real_put = store.objects.put

    def put(name: str, parts: Any) -> None:
        if stop_at == "put-started":
            # Leave a partial write the way a killed one does: part of a .tmp file, or a
            # multipart upload with one part sent and never completed.
            data = b"".join(parts)
            if store.objects.kind == "local":
                folder = Path(spec["root"]) / "packs" / name[:2]
                folder.mkdir(exist_ok=True)
                (folder / (name + ".tmp")).write_bytes(data[:1000])
            else:
                s3 = store.objects.bucket
                key = store.objects.key(name)
                up = s3.client.create_multipart_upload(Bucket=s3.name, Key=key)["UploadId"]
                s3.client.upload_part(
                    Bucket=s3.name, Key=key, UploadId=up, PartNumber=1, Body=data[: 5 << 20]
                )
            print("put-started", flush=True)
            time.sleep(600)
        real_put(name, parts)
        print("put-done", flush=True)
        time.sleep(600)

    store.objects.put = put  # type: ignore[method-assign]
    if "copy_from" in spec:  # the storage half of `strongroom-admin migrate`
        from strongroom.store.copy import copy_store

        copy_store(PackStore(Path(spec["copy_from"])), store)
        print("copied", flush=True)
        return 0
    for hexid, size in spec["blobs"]:
        store.add_blob(bytes.fromhex(hexid), 0, os.urandom(size))
    store.flush()
    print("flushed", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["child"]:
        sys.exit(child_main())
    print("usage: storage_backends.py child < spec.json", file=sys.stderr)
    sys.exit(2)
