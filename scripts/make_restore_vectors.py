#!/usr/bin/env python3
"""Write tests/vectors/restore-vectors.json: test vectors for the browser restore page.

One set of vectors, made by the Python code, is checked by both implementations: the Python
test (tests/test_restore_vectors.py) and the browser's (web/restore/src/vectors.ts, run in
chromium by tests/test_restore_browser.py). It holds:

- Argon2id, HKDF and key-file vectors (a password, its salt and cost, the derived keys);
- blobs of every encoding (padded raw and zstd, the old unpadded raw and zstd, empty), and
  malformed ones with the error each must give;
- trees (every entry type, a name with a non-UTF-8 byte) and malformed trees;
- snapshot records (padded, longer than 1024 bytes, written before padding) and bad ones;
- Padmé lengths;
- a small repository made by the real client (`strongroom init` and `strongroom backup`): its
  key file, snapshot rows, every stored blob, and what each file must restore to.

Nonces are random, so each run writes different bytes; every run's vectors are valid. Run:

    .venv/bin/python scripts/make_restore_vectors.py
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from strongroom import crypto  # noqa: E402
from strongroom.blobs import BlobCodec  # noqa: E402
from strongroom.keys import RepoKeys, auth_hash, create_keyfile  # noqa: E402
from strongroom.padding import padme  # noqa: E402
from strongroom.snapshot import Snapshot, seal_snapshot  # noqa: E402
from strongroom.store import PackStore  # noqa: E402
from strongroom.tree import ContentRef, Node, encode_tree  # noqa: E402

OUT = ROOT / "tests" / "vectors" / "restore-vectors.json"
PASSWORD = "correct horse ⚡ battery"  # noqa: S105 - a test vector


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def kdf_vectors() -> list[dict[str, Any]]:
    out = []
    for password, params in (
        (PASSWORD, crypto.KdfParams(65536, 3, 4)),  # the floor every login must reach
        ("tiny cost, other lanes", crypto.KdfParams(2048, 2, 1)),
    ):
        salt = os.urandom(16)
        master = crypto.derive_master(password.encode(), salt, params)
        pk = crypto.split_master(master)
        out.append(
            {
                "password": password,
                "salt": b64(salt),
                "memory_kib": params.memory_kib,
                "iterations": params.iterations,
                "lanes": params.lanes,
                "master": master.hex(),
                "auth_key": pk.auth_key.hex(),
                "kek": pk.kek.hex(),
                "auth_hash": auth_hash(pk.auth_key).hex(),
            }
        )
    return out


def seal_body(keys: RepoKeys, blob_id: bytes, body: bytes) -> bytes:
    return crypto.seal(keys.aead(), body, blob_id)


def blob_vectors(keys: RepoKeys) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    codec = BlobCodec(keys.aead(), keys.hasher())
    rng = random.Random(13)
    text = b"".join(b"line %d of a compressible text file\n" % i for i in range(3000))
    noise = rng.randbytes(5000)
    good: list[dict[str, Any]] = []

    def add(name: str, plain: bytes, stored: bytes, flag: int) -> None:
        good.append(
            {
                "name": name,
                "id": codec.hash(plain).hex(),
                "stored": b64(stored),
                "flag": flag,
                "plaintext": b64(plain),
            }
        )

    for name, plain in (("padded zstd", text), ("padded raw", noise), ("empty", b"")):
        blob_id = codec.hash(plain)
        stored = codec.encode(blob_id, plain)
        assert codec.decode(blob_id, stored) == plain
        body = crypto.unseal(keys.aead(), stored, blob_id, "v")
        add(name, plain, stored, body[0])
    old_text = text[:20000]
    old_id = codec.hash(old_text)
    add(
        "old raw (flag 0)",
        noise[:777],
        seal_body(keys, codec.hash(noise[:777]), b"\0" + noise[:777]),
        0,
    )
    frame = zstandard.ZstdCompressor(level=1).compress(old_text)
    add("old zstd (flag 1)", old_text, seal_body(keys, old_id, b"\1" + frame), 1)
    # A zstd frame that does not declare its content size (streamed): still read.
    cobj = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    streamed = cobj.compress(old_text) + cobj.flush()
    add("old zstd without content size", old_text, seal_body(keys, old_id, b"\1" + streamed), 1)
    for g in good:
        plain = base64.b64decode(g["plaintext"])
        assert codec.decode(bytes.fromhex(g["id"]), base64.b64decode(g["stored"])) == plain

    bad: list[dict[str, Any]] = []

    def refuse(name: str, blob_id: bytes, stored: bytes, error: str) -> None:
        try:
            codec.decode(blob_id, stored)
        except Exception as exc:  # the Python decoder must refuse it with the same words
            assert error in str(exc), (name, str(exc))
        else:
            raise AssertionError(f"{name} was accepted")
        bad.append({"name": name, "id": blob_id.hex(), "stored": b64(stored), "error": error})

    a_id = codec.hash(text)
    a = codec.encode(a_id, text)
    b_id = codec.hash(noise)
    flipped = bytearray(a)
    flipped[40] ^= 1
    refuse("a flipped bit", a_id, bytes(flipped), "failed authentication")
    refuse("another blob's bytes under this ID", b_id, a, "failed authentication")
    refuse("truncated", a_id, a[:20], "is truncated")
    other = codec.hash(b"something else")
    refuse(
        "sealed under its ID but not the hash of its content",
        other,
        seal_body(keys, other, b"\2" + struct.pack("<I", 0) + noise),
        "does not match its ID",
    )
    pad_id = codec.hash(noise[:100])
    refuse(
        "padding that is not zero",
        pad_id,
        seal_body(keys, pad_id, b"\2" + struct.pack("<I", 3) + noise[:100] + b"\0\1\0"),
        "malformed padding",
    )
    refuse(
        "more padding than the body holds",
        pad_id,
        seal_body(keys, pad_id, b"\2" + struct.pack("<I", 500) + noise[:100]),
        "declares more padding",
    )
    refuse(
        "a padding header cut short",
        pad_id,
        seal_body(keys, pad_id, b"\3\0\0"),
        "truncated padding header",
    )
    refuse(
        "unknown encoding 4",
        pad_id,
        seal_body(keys, pad_id, b"\4" + noise[:100]),
        "unknown encoding 4",
    )
    refuse("an empty body", pad_id, seal_body(keys, pad_id, b""), "is empty")
    refuse(
        "bytes after the zstd frame",
        old_id,
        seal_body(keys, old_id, b"\1" + frame + b"\0junk"),
        "does not decompress",
    )
    refuse(
        "a zstd frame cut short",
        old_id,
        seal_body(keys, old_id, b"\1" + frame[: len(frame) // 2]),
        "does not decompress",
    )
    # A frame that declares 17 MiB of content (over the 16 MiB cap) and holds none.
    bomb = b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", 17 * 1024 * 1024) + b"\x01\x00\x00"
    refuse(
        "a zstd frame declaring more than 16 MiB",
        old_id,
        seal_body(keys, old_id, b"\1" + bomb),
        "declares an oversized content",
    )
    refuse(
        "not a zstd frame",
        old_id,
        seal_body(keys, old_id, b"\1" + b"\x00" * 64),
        "does not decompress",
    )
    return good, bad


def tree_vectors(keys: RepoKeys) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    codec = BlobCodec(keys.aead(), keys.hasher())
    chunk = bytes.fromhex("ab" * 32)
    sub = bytes.fromhex("cd" * 32)
    nodes = [
        Node(
            "notes.txt",
            "file",
            mode=0o100644,
            mtime_ns=1_700_000_000_123_456_789,
            size=300,
            content=[ContentRef(chunk, 0, 100), ContentRef(chunk, 100, 200)],
            inode=7,
            uid=1000,
            gid=1000,
            ctime_ns=1_700_000_000_000_000_001,
        ),
        Node("Ünïcödé ✓ 日本.md", "file", mode=0o100600, mtime_ns=5, size=0),
        Node("bad-\udcff-byte", "file", mode=0o100644, size=0),
        Node("photos", "dir", mode=0o40755, mtime_ns=9, subtree=sub),
        Node("link", "symlink", mode=0o120777, target="../elsewhere/ü"),
        Node("pipe", "fifo", mode=0o10644),
        Node(
            "twin",
            "file",
            mode=0o100644,
            size=100,
            content=[ContentRef(chunk, 0, 100)],
            hardlink="2049:77",
        ),
        Node("null", "chardev", mode=0o20666, device=259),
    ]
    sparse_nodes = [
        Node(
            "disk.img",
            "file",
            mode=0o100644,
            size=1_000_000,
            content=[ContentRef(chunk, 0, 100), ContentRef(chunk, 100, 50)],
            holes=[(0, 200_000), (200_050, 799_900)],
            xattrs=[["user.comment", base64.b64encode(b"a sparse one").decode()]],
            flags=0x80,
        ),
        Node("plain", "file", mode=0o100644, size=0, xattrs=[["user.a", ""]]),
    ]
    good = []
    for name, tree_nodes in (
        ("every entry type", nodes),
        ("a sparse file, attributes and flags (v2)", sparse_nodes),
    ):
        raw = encode_tree(tree_nodes)
        tree_id = codec.hash(raw)
        good.append(
            {
                "name": name,
                "id": tree_id.hex(),
                "stored": b64(codec.encode(tree_id, raw)),
                "json": raw.decode("ascii"),
                "entries": [
                    {
                        "name": n.name,
                        "type": n.type,
                        "mode": n.mode,
                        "mtime_ns": str(n.mtime_ns),
                        "size": n.size,
                        "content": [[r.blob_id.hex(), r.offset, r.length] for r in n.content],
                        "subtree": n.subtree.hex() if n.subtree else None,
                        "target": n.target,
                        "holes": [list(h) for h in n.holes],
                    }
                    for n in sorted(tree_nodes, key=lambda n: os.fsencode(n.name))
                ],
            }
        )
    assert '"v":2' in good[1]["json"] and '"v":1' in good[0]["json"]
    bad = []
    for name, text, error in (
        ("not JSON", b"{entries", "not valid JSON"),
        ("another version", b'{"entries":[],"v":3}', "unsupported version"),
        (
            "holes that touch",
            b'{"entries":[{"holes":[[0,70000],[70000,70000]],"name":"x","size":200000,'
            b'"type":"file"}],"v":2}',
            "malformed holes",
        ),
        (
            "a hole past the end",
            b'{"entries":[{"holes":[[0,300000]],"name":"x","size":200000,"type":"file"}],"v":2}',
            "malformed holes",
        ),
        (
            "holes in a folder",
            b'{"entries":[{"holes":[[0,1]],"name":"x","size":2,"subtree":"'
            + b"ab" * 32
            + b'","type":"dir"}],"v":2}',
            "malformed holes",
        ),
        (
            "an extended attribute that is not base64",
            b'{"entries":[{"name":"x","type":"file","xattrs":[["user.a","***"]]}],"v":1}',
            "malformed extended attributes",
        ),
        (
            "an extended attribute without a name",
            b'{"entries":[{"name":"x","type":"file","xattrs":[["","AA=="]]}],"v":1}',
            "malformed extended attributes",
        ),
        ("entries not a list", b'{"entries":{},"v":1}', "malformed list"),
        ("an entry without a name", b'{"entries":[{"type":"file"}],"v":1}', "lacks"),
        ("an unknown type", b'{"entries":[{"name":"x","type":"door"}],"v":1}', "unknown type"),
        (
            "a folder without a subtree",
            b'{"entries":[{"name":"x","type":"dir"}],"v":1}',
            "no subtree",
        ),
        (
            "a malformed blob ID",
            b'{"entries":[{"name":"x","type":"file","content":[["zz",0,1]]}],"v":1}',
            "malformed blob ID",
        ),
        (
            "a negative offset",
            b'{"entries":[{"name":"x","type":"file","content":[["'
            + b"ab" * 32
            + b'",-1,1]]}],"v":1}',
            "malformed content reference",
        ),
        (
            "a size that is not a number",
            b'{"entries":[{"name":"x","type":"file","size":"1"}],"v":1}',
            "malformed number",
        ),
    ):
        bad.append({"name": name, "json": text.decode("ascii"), "error": error})
    return good, bad


def record_vectors(keys: RepoKeys) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    aead = keys.aead()
    good = []
    bad = []
    base = Snapshot(
        id=os.urandom(16).hex(),
        time_ns=1_764_000_000_000_000_000,
        host="laptop",
        username="ann",
        paths=["/home/ann/Documents"],
        tree="ef" * 32,
        tags=["daily"],
        stats={"files": 3, "bytes_scanned": 1234},
    )
    long = Snapshot(
        id=os.urandom(16).hex(),
        time_ns=1_764_000_000_000_000_001,
        host="workstation",
        username="ann",
        paths=[f"/srv/projects/a-rather-long-folder-name-{i:03d}" for i in range(40)],
        tree="01" * 32,
        parent=base.id,
    )
    for name, snap in (("padded to 1024 bytes", base), ("longer than 1024 bytes", long)):
        sealed = seal_snapshot(aead, snap)
        good.append(
            {
                "name": name,
                "snap_id": snap.id,
                "record": b64(sealed),
                "snapshot": dict(snap.to_json(), time_ns=str(snap.time_ns)),
            }
        )
    old = Snapshot(**{**base.to_json(), "id": os.urandom(16).hex()})
    raw = json.dumps(dict(old.to_json(), v=1), sort_keys=True, separators=(",", ":")).encode()
    good.append(
        {
            "name": "written before padding",
            "snap_id": old.id,
            "record": b64(crypto.seal(aead, raw, b"strongroom v1 snapshot " + old.id.encode())),
            "snapshot": dict(old.to_json(), time_ns=str(old.time_ns)),
        }
    )

    def aad(snap_id: str) -> bytes:
        return b"strongroom v1 snapshot " + snap_id.encode()

    other = os.urandom(16).hex()
    bad.append(
        {
            "name": "another snapshot's record",
            "snap_id": other,
            "record": good[0]["record"],
            "error": "failed authentication",
        }
    )
    swapped = json.dumps(dict(base.to_json(), v=1), sort_keys=True, separators=(",", ":"))
    bad.append(
        {
            "name": "a record naming another ID",
            "snap_id": other,
            "record": b64(crypto.seal(aead, swapped.encode(), aad(other))),
            "error": "was swapped",
        }
    )
    bad.append(
        {
            "name": "bytes after the JSON",
            "snap_id": other,
            "record": b64(crypto.seal(aead, swapped.encode() + b"  x", aad(other))),
            "error": "is malformed",
        }
    )
    bad.append(
        {
            "name": "another version",
            "snap_id": other,
            "record": b64(
                crypto.seal(aead, swapped.replace('"v":1', '"v":2').encode(), aad(other))
            ),
            "error": "unsupported version",
        }
    )
    bad.append(
        {
            "name": "a malformed tree ID",
            "snap_id": other,
            "record": b64(
                crypto.seal(
                    aead,
                    swapped.replace("ef" * 32, "zz").replace(base.id, other).encode(),
                    aad(other),
                )
            ),
            "error": "malformed tree ID",
        }
    )
    return good, bad


def make_source(src: Path) -> None:
    rng = random.Random(2024)
    (src / "docs" / "deep" / "deeper").mkdir(parents=True)
    (src / "photos").mkdir()
    (src / "empty folder").mkdir()
    (src / "README.md").write_text("# A small test folder\n" + "lorem ipsum dolor sit amet\n" * 400)
    (src / "docs" / "Ünïcödé ✓ 日本.txt").write_text("unicode name, small file\n")
    (src / "docs" / "deep" / "deeper" / "bottom.txt").write_text("at the bottom\n" * 10)
    (src / "docs" / "empty.txt").write_bytes(b"")
    (src / "photos" / "noise.bin").write_bytes(rng.randbytes(300 * 1024))  # one chunk, stored raw
    (src / "photos" / "small.bin").write_bytes(rng.randbytes(3000))
    (src / "log.txt").write_bytes(b"".join(b"%08d log line\n" % i for i in range(40000)))
    for i in range(12):
        (src / "docs" / f"note-{i:02d}.txt").write_text(f"note {i}\n" * (i * 37 + 1))
    os.symlink("docs/deep/deeper/bottom.txt", src / "shortcut")
    with open(src / "sparse.img", "wb") as f:  # data, a 1 MiB hole, data, a hole at the end
        f.write(rng.randbytes(5000))
        f.seek(5000 + 1024 * 1024)
        f.write(rng.randbytes(7000))
        f.truncate(3 * 1024 * 1024)


def repository_vector(work: Path) -> dict[str, Any]:
    src = work / "folder"
    src.mkdir()
    make_source(src)
    repo = work / "repo"
    env = {
        **os.environ,
        "STRONGROOM_PASSWORD": PASSWORD,
        "STRONGROOM_CACHE_DIR": str(work / "cache"),
        "STRONGROOM_REPO": str(repo),
        "STRONGROOM_CONFIG_DIR": str(work / "config"),
    }
    env.pop("STRONGROOM_INSECURE_TEST_KDF", None)
    exe = [sys.executable, "-m", "strongroom.cli.main"]
    subprocess.run([*exe, "init"], env=env, check=True, capture_output=True)
    subprocess.run(
        [*exe, "backup", str(src), "--tag", "vectors", "--host", "vector-host"],
        env=env,
        check=True,
        capture_output=True,
    )
    (src / "README.md").write_text("# Changed\n")
    subprocess.run(
        [*exe, "backup", str(src), "--host", "vector-host"],
        env=env,
        check=True,
        capture_output=True,
    )
    store = PackStore(repo)
    try:
        keyfile = store.get_meta("keyfile")
        assert keyfile is not None
        rows = store.list_snapshots()
        blobs = [
            {"id": loc.blob_id.hex(), "stored": b64(store.read_blob(loc.blob_id))}
            for loc in sorted(store.iter_index(), key=lambda loc: loc.blob_id)
        ]
    finally:
        store.close()
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if path.is_symlink():
            files.append({"path": rel, "type": "symlink", "target": os.readlink(path)})
        elif path.is_dir():
            files.append({"path": rel, "type": "dir"})
        else:
            data = path.read_bytes()
            files.append(
                {
                    "path": rel,
                    "type": "file",
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
    return {
        "password": PASSWORD,
        "keyfile": keyfile.decode(),
        "top": src.name,
        "snapshots": [
            {"snap_id": r.snap_id, "time_ns": str(r.time_ns), "record": b64(r.record)} for r in rows
        ],
        "blobs": blobs,
        "latest_files": files,
    }


def main() -> None:
    keys = RepoKeys.generate()
    keyfile = create_keyfile(PASSWORD.encode(), keys, crypto.KdfParams(65536, 3, 4))
    blobs, bad_blobs = blob_vectors(keys)
    trees, bad_trees = tree_vectors(keys)
    records, bad_records = record_vectors(keys)
    with tempfile.TemporaryDirectory() as tmp:
        repository = repository_vector(Path(tmp))
    doc = {
        "about": "made by scripts/make_restore_vectors.py; checked by "
        "tests/test_restore_vectors.py and web/restore/src/vectors.ts",
        "kdf": kdf_vectors(),
        "keys": {
            "password": PASSWORD,
            "keyfile": keyfile.to_json(),
            "data_key": keys.data_key.hex(),
            "id_key": keys.id_key.hex(),
            "chunker_seed": str(keys.chunker_seed),
            "check_value": keys.check_value(),
        },
        "blobs": blobs,
        "bad_blobs": bad_blobs,
        "trees": trees,
        "bad_trees": bad_trees,
        "records": records,
        "bad_records": bad_records,
        "padme": [
            [n, padme(n)]
            for n in (
                *range(0, 40),
                129,
                1000,
                1025,
                4097,
                65537,
                1048576 + 1,
                3_000_000,
                16 * 1024 * 1024 + 1045,
                2**40 + 12345,
            )
        ],
        "repository": repository,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=True) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    shutil.rmtree(ROOT / "tests" / "vectors" / "__pycache__", ignore_errors=True)
    main()
