"""Scrub (store/scrub.py, `strongroom-admin scrub`) and `check --read-data` against bit rot.

One byte is flipped inside a stored blob, or a pack is cut short, in a local repository and in
a server user's storage. Both checks must name the damaged blob and the snapshots that use it
and exit 1; data that does not use that blob still restores, and a clean repository passes.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import Cli, tree_state
from netfixtures import Server
from strongroom.store import BlobLocation, PackStore
from strongroom.store.scrub import scrub

KiB = 1024


@dataclass
class Damage:
    """Two snapshots of one folder; `blob` is the one data blob only the second uses."""

    first: str
    second: str
    blob: BlobLocation
    first_state: dict[Any, tuple[Any, ...]]
    second_state: dict[Any, tuple[Any, ...]]


def make_history(cli: Cli, src: Path) -> tuple[str, str, dict[Any, Any], dict[Any, Any]]:
    src.mkdir()
    for name in ("a", "b"):
        (src / f"{name}.bin").write_bytes(random.Random(name).randbytes(200 * KiB))
    first = cli.backup(src)["snapshot"]
    first_state = tree_state(src)
    (src / "c.bin").write_bytes(random.Random("c").randbytes(200 * KiB))
    second = cli.backup(src)["snapshot"]
    return first, second, first_state, tree_state(src)


def new_blob_of(storage: Path, first: str, second: str) -> BlobLocation:
    """The biggest blob the second snapshot added: c.bin's data (trees are a few hundred
    bytes). Found from the manifests, without any key."""
    store = PackStore(storage)
    try:
        added = store.snapshot_manifest(second) - store.snapshot_manifest(first)
        locs = store.locate(added)
    finally:
        store.close()
    blob = max(locs.values(), key=lambda loc: loc.length)
    assert blob.length > 190 * KiB  # 128K < c.bin < MIN_SIZE: one chunk
    return blob


def pack_file(storage: Path, blob: BlobLocation) -> Path:
    return storage / "packs" / blob.pack[:2] / blob.pack


def flip_byte(storage: Path, blob: BlobLocation) -> None:
    path = pack_file(storage, blob)
    pos = blob.offset + blob.length // 2
    with open(path, "r+b") as fh:
        fh.seek(pos)
        byte = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([byte[0] ^ 0x40]))


def truncate(storage: Path, blob: BlobLocation) -> int:
    path = pack_file(storage, blob)
    size = path.stat().st_size
    os.truncate(path, blob.offset + 100)
    return size


def assert_check_names(cli: Cli, damage: Damage) -> None:
    res = cli.run("check", "--read-data", check=False)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert f"blob {damage.blob.blob_id.hex()[:16]} is damaged" in res.stderr, res.stderr
    assert f"affected snapshots: {damage.second[:8]}" in res.stderr, res.stderr
    assert damage.first[:8] not in res.stderr
    assert "check found" in res.stderr.splitlines()[-1]


def assert_unaffected_data_restores(cli: Cli, damage: Damage, tmp_path: Path) -> None:
    # The older snapshot does not use the damaged blob: all of it comes back.
    cli.restore(tmp_path / "old", damage.first)
    assert tree_state(tmp_path / "old" / "src") == damage.first_state
    # In the damaged snapshot, the files that do not use it come back too.
    cli.restore(tmp_path / "part", damage.second, "--include", "src/a.bin", "-i", "src/b.bin")
    got: dict[Any, tuple[Any, ...]] = tree_state(tmp_path / "part" / "src")
    for name in (b"a.bin", b"b.bin"):
        assert got[name] == damage.second_state[name]
    assert b"c.bin" not in got
    # The damaged file itself is never restored silently.
    res = cli.run("restore", damage.second, "--target", str(tmp_path / "all"), check=False)
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr
    restored_c = tmp_path / "all" / "src" / "c.bin"
    assert not restored_c.exists() or restored_c.read_bytes() != damage.second_state[b"c.bin"][3]


# ---- a local repository ----------------------------------------------------------------------


def local_damage(cli: Cli, tmp_path: Path) -> Damage:
    first, second, s1, s2 = make_history(cli, tmp_path / "src")
    return Damage(first, second, new_blob_of(cli.repo, first, second), s1, s2)


def test_clean_local_repository_scrubs_clean(cli: Cli, tmp_path: Path) -> None:
    damage = local_damage(cli, tmp_path)
    store = PackStore(cli.repo)
    try:
        report = scrub(store)
    finally:
        store.close()
    assert report.ok and report.problems == [] and not report.damaged_blobs
    assert report.packs == 2 and report.blobs > 3
    assert report.bytes_read == sum(p.stat().st_size for p in (cli.repo / "packs").glob("*/*"))
    assert report.to_json()["ok"] is True
    cli.run("check", "--read-data")
    assert damage.blob.length > 0


def test_flipped_byte_in_local_repository(cli: Cli, tmp_path: Path) -> None:
    damage = local_damage(cli, tmp_path)
    flip_byte(cli.repo, damage.blob)

    store = PackStore(cli.repo)
    try:
        report = scrub(store)
    finally:
        store.close()
    assert not report.ok
    assert report.damaged_blobs == {damage.blob.blob_id}
    assert report.affected_snapshots == [damage.second]
    hexid = damage.blob.blob_id.hex()
    assert f"blob {hexid[:16]} in pack {damage.blob.pack[:16]} is damaged" in report.problems
    assert f"pack {damage.blob.pack[:16]} does not match its content hash" in report.problems
    assert len(report.problems) == 2
    assert report.to_json()["damaged_blobs"] == [hexid]

    assert_check_names(cli, damage)
    assert_unaffected_data_restores(cli, damage, tmp_path)


def test_truncated_pack_in_local_repository(cli: Cli, tmp_path: Path) -> None:
    damage = local_damage(cli, tmp_path)
    size = truncate(cli.repo, damage.blob)
    store = PackStore(cli.repo)
    try:
        report = scrub(store)
    finally:
        store.close()
    short = damage.blob.offset + 100
    assert f"pack {damage.blob.pack[:16]} has size {short}, index says {size}" in report.problems
    assert damage.blob.blob_id in report.damaged_blobs
    assert report.affected_snapshots == [damage.second]
    res = cli.run("check", "--read-data", check=False)
    assert res.returncode == 1
    assert f"has size {short}, index says {size}" in res.stderr
    assert f"affected snapshots: {damage.second[:8]}" in res.stderr
    cli.restore(tmp_path / "old", damage.first)
    assert tree_state(tmp_path / "old" / "src") == damage.first_state


def test_missing_pack_in_local_repository(cli: Cli, tmp_path: Path) -> None:
    damage = local_damage(cli, tmp_path)
    pack_file(cli.repo, damage.blob).unlink()
    store = PackStore(cli.repo)
    try:
        report = scrub(store)
    finally:
        store.close()
    assert f"pack {damage.blob.pack[:16]} is missing" in report.problems
    assert damage.blob.blob_id in report.damaged_blobs
    assert report.affected_snapshots == [damage.second]
    assert cli.run("check", "--read-data", check=False).returncode == 1


# ---- a server user's storage -----------------------------------------------------------------


def storage_of(server: Server, name: str) -> Path:
    users = json.loads(server.admin("user", "list", "--json").stdout)
    found = [u for u in users if u["name"] == name]
    assert found, users
    paths = [p.parent for p in (server.data_dir / "storage").glob("*/index.sqlite")]
    # Pick the user's storage by its snapshots: the only one with any for a single user.
    with_snaps = []
    for path in paths:
        store = PackStore(path)
        try:
            if store.list_snapshots():
                with_snaps.append(path)
        finally:
            store.close()
    assert len(with_snaps) == 1, with_snaps
    return with_snaps[0]


def admin_scrub(server: Server, *args: str) -> tuple[int, dict[str, Any]]:
    res = server.admin("scrub", "--json", *args, check=False)
    assert "Traceback" not in res.stderr
    return res.returncode, json.loads(res.stdout)


def test_server_storage_scrub(server: Server, tmp_path: Path) -> None:
    alice = server.add_user("alice", tmp_path)
    first, second, s1, s2 = make_history(alice, tmp_path / "src")
    storage = storage_of(server, "alice")
    damage = Damage(first, second, new_blob_of(storage, first, second), s1, s2)

    code, reports = admin_scrub(server)
    assert code == 0, reports
    assert reports["alice"]["ok"] is True and reports["alice"]["problems"] == []
    text = server.admin("scrub")
    assert "alice:" in text.stdout and ": ok" in text.stdout

    flip_byte(storage, damage.blob)
    code, reports = admin_scrub(server)
    assert code == 1
    r = reports["alice"]
    assert r["ok"] is False
    assert r["damaged_blobs"] == [damage.blob.blob_id.hex()]
    assert r["affected_snapshots"] == [second]
    code, reports = admin_scrub(server, "alice")
    assert code == 1 and reports["alice"]["damaged_blobs"] == [damage.blob.blob_id.hex()]

    text = server.admin("scrub", check=False)
    assert text.returncode == 1
    assert f"blob {damage.blob.blob_id.hex()[:16]}" in text.stdout
    assert f"affected snapshots: {second[:8]}" in text.stdout

    assert_check_names(alice, damage)
    assert_unaffected_data_restores(alice, damage, tmp_path)


def test_server_storage_truncated_pack(server: Server, tmp_path: Path) -> None:
    alice = server.add_user("alice", tmp_path)
    first, second, s1, _s2 = make_history(alice, tmp_path / "src")
    storage = storage_of(server, "alice")
    blob = new_blob_of(storage, first, second)
    size = truncate(storage, blob)
    code, reports = admin_scrub(server)
    assert code == 1
    problems = reports["alice"]["problems"]
    assert f"pack {blob.pack[:16]} has size {blob.offset + 100}, index says {size}" in problems
    assert reports["alice"]["affected_snapshots"] == [second]
    text = server.admin("scrub", check=False)
    assert text.returncode == 1 and "index says" in text.stdout
    alice.restore(tmp_path / "old", first)
    assert tree_state(tmp_path / "old" / "src") == s1


def test_damaged_parent_tree_is_read_afresh_by_the_next_backup(cli: Cli, tmp_path: Path) -> None:
    """Trees of the parent snapshot that no longer decode: the next backup says so, reads the
    files as new and completes (it stops instead when the server or its object store is away:
    tests/test_scaleout.py). The damaged trees stay damaged (same content, same IDs): `check`
    names them, as the tests above do for data blobs."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(5):
        (src / "sub" / f"f{i}.txt").write_text(f"file {i}\n" * 50)
    first = cli.backup(src)["snapshot"]
    store = PackStore(cli.repo)
    try:
        locs = store.locate(store.snapshot_manifest(first))
    finally:
        store.close()
    trees = [loc for loc in locs.values() if loc.type == 1]  # BlobType.TREE
    assert len(trees) >= 2
    for loc in trees:
        flip_byte(cli.repo, loc)
    res = cli.run("backup", str(src), "--json", "--no-cache", check=False)  # parent's trees
    assert res.returncode == 3  # done, with warnings
    assert "parent snapshot tree unreadable" in res.stderr and "Traceback" not in res.stderr
    out = json.loads(res.stdout)
    assert out["parent"] == first and out["unchanged"] == 0 and out["added"] == 5
