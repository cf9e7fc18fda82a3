"""The restore page's test vectors (tests/vectors/restore-vectors.json), checked by the Python
code: the same file is checked in chromium by the page's own code (web/restore/src/vectors.ts,
from tests/test_restore_browser.py), so both implementations agree byte for byte and refuse
the same malformed input with the same words."""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from strongroom import crypto
from strongroom.blobs import BlobCodec
from strongroom.errors import IntegrityError
from strongroom.keys import KeyFile, RepoKeys, auth_hash, unlock
from strongroom.padding import padme
from strongroom.snapshot import open_snapshot
from strongroom.sparse import data_extents
from strongroom.store import SnapshotRow
from strongroom.tree import decode_tree

VECTORS = Path(__file__).parent / "vectors" / "restore-vectors.json"


@cache
def vectors() -> Any:
    return json.loads(VECTORS.read_text())


def keys() -> RepoKeys:
    k = vectors()["keys"]
    return RepoKeys(
        bytes.fromhex(k["data_key"]), bytes.fromhex(k["id_key"]), int(k["chunker_seed"])
    )


def codec() -> BlobCodec:
    return BlobCodec(keys().aead(), keys().hasher())


def b64(text: str) -> bytes:
    return base64.b64decode(text)


@pytest.mark.parametrize("i", range(2))
def test_kdf(i: int) -> None:
    v = vectors()["kdf"][i]
    params = crypto.KdfParams(v["memory_kib"], v["iterations"], v["lanes"])
    master = crypto.derive_master(v["password"].encode(), b64(v["salt"]), params)
    assert master.hex() == v["master"]
    pk = crypto.split_master(master)
    assert pk.auth_key.hex() == v["auth_key"]
    assert pk.kek.hex() == v["kek"]
    assert auth_hash(pk.auth_key).hex() == v["auth_hash"]


def test_keyfile_unlocks_the_keys() -> None:
    k = vectors()["keys"]
    opened = unlock(KeyFile.from_json(k["keyfile"]), k["password"].encode())
    assert opened == keys()
    assert opened.check_value() == k["check_value"]


def test_blobs_of_every_encoding() -> None:
    flags = set()
    for v in vectors()["blobs"]:
        assert codec().decode(bytes.fromhex(v["id"]), b64(v["stored"])) == b64(v["plaintext"])
        flags.add(v["flag"])
    assert flags == {0, 1, 2, 3}


def test_malformed_blobs_are_refused() -> None:
    assert len(vectors()["bad_blobs"]) >= 12
    for v in vectors()["bad_blobs"]:
        with pytest.raises(IntegrityError, match=v["error"]):
            codec().decode(bytes.fromhex(v["id"]), b64(v["stored"]))


def test_trees() -> None:
    for v in vectors()["trees"]:
        raw = codec().decode(bytes.fromhex(v["id"]), b64(v["stored"]))
        assert raw == v["json"].encode()
        nodes = decode_tree(raw)
        assert [
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
            for n in nodes
        ] == v["entries"]
    for v in vectors()["bad_trees"]:
        with pytest.raises(IntegrityError, match=v["error"]):
            decode_tree(v["json"].encode())


def _row(snap_id: str, record: str, time_ns: int = 0) -> SnapshotRow:
    return SnapshotRow(snap_id, time_ns, b64(record), "", False, time_ns)


def test_records() -> None:
    aead = keys().aead()
    for v in vectors()["records"]:
        snap = open_snapshot(aead, _row(v["snap_id"], v["record"]))
        assert dict(snap.to_json(), time_ns=str(snap.time_ns)) == v["snapshot"]
    for v in vectors()["bad_records"]:
        with pytest.raises(IntegrityError, match=v["error"]):
            open_snapshot(aead, _row(v["snap_id"], v["record"]))


def test_padme() -> None:
    for length, padded in vectors()["padme"]:
        assert padme(length) == padded


def test_the_repository_made_by_the_client_restores() -> None:
    repo = vectors()["repository"]
    repo_keys = unlock(KeyFile.from_json(repo["keyfile"]), repo["password"].encode())
    blob_codec = BlobCodec(repo_keys.aead(), repo_keys.hasher())
    stored = {bytes.fromhex(b["id"]): b64(b["stored"]) for b in repo["blobs"]}

    def blob(blob_id: bytes) -> bytes:
        return blob_codec.decode(blob_id, stored[blob_id])

    snaps = [
        open_snapshot(repo_keys.aead(), _row(s["snap_id"], s["record"], int(s["time_ns"])))
        for s in repo["snapshots"]
    ]
    latest = max(snaps, key=lambda s: s.time_ns)
    (top,) = decode_tree(blob(bytes.fromhex(latest.tree)))
    assert top.name == repo["top"] and top.subtree is not None
    found: list[dict[str, Any]] = []

    def walk(tree_id: bytes, prefix: str) -> None:
        for node in decode_tree(blob(tree_id)):
            path = prefix + node.name
            if node.type == "dir":
                assert node.subtree is not None
                found.append({"path": path, "type": "dir"})
                walk(node.subtree, path + "/")
            elif node.type == "symlink":
                found.append({"path": path, "type": "symlink", "target": node.target})
            else:
                data = b"".join(
                    blob(r.blob_id)[r.offset : r.offset + r.length] for r in node.content
                )
                if node.holes:  # the data goes between the holes
                    whole = bytearray(node.size)
                    pos = 0
                    for start, length in data_extents(node.holes, node.size):
                        whole[start : start + length] = data[pos : pos + length]
                        pos += length
                    assert pos == len(data)
                    data = bytes(whole)
                    holes.append(path)
                assert len(data) == node.size
                found.append(
                    {
                        "path": path,
                        "type": "file",
                        "size": node.size,
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )

    holes: list[str] = []
    walk(top.subtree, "")
    assert holes == ["sparse.img"]  # the client stored it as a sparse file
    assert sorted(found, key=lambda f: f["path"]) == repo["latest_files"]
