"""The mount's file-system view, without FUSE: names, paths, reads, the blob caches.

A real repository made by the real client (`--repo`), opened in-process; every read is
checked against the bytes of the backed-up files.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PASSWORD, Cli
from strongroom.mount.access import RepoAccess
from strongroom.mount.blobsource import BlobSource
from strongroom.mount.diskcache import DiskCache
from strongroom.mount.layout import NAME_MAX, Layout, component, time_name
from strongroom.mount.view import SnapshotView
from strongroom.repository import LocalRepository
from strongroom.snapshot import Snapshot

BIG = 6 * 1024 * 1024 + 12345


def _snap(i: int, time_ns: int, tags: list[str] | None = None, host: str = "h") -> Snapshot:
    return Snapshot(f"{i:032x}", time_ns, host, "u", ["/x"], "0" * 64, tags=tags or [])


def test_names_are_time_based_unique_and_stable() -> None:
    t = 1_700_000_000_000_000_000
    a, b, c = _snap(1, t), _snap(2, t + 5), _snap(3, t + 2_000_000_000)
    first = Layout.build([b, a, c])
    assert list(first.by_name) == [
        time_name(t),
        f"{time_name(t)}-{b.short_id}",
        time_name(c.time_ns),
    ]
    assert first.latest == time_name(c.time_ns)
    # A newer snapshot in the same second as the newest leaves the older names alone.
    d = _snap(4, c.time_ns + 1)
    second = Layout.build([a, b, c, d])
    assert {k: v.id for k, v in first.by_name.items()}.items() <= {
        k: v.id for k, v in second.by_name.items()
    }.items()
    assert second.latest == f"{time_name(c.time_ns)}-{d.short_id}"


def test_group_names_are_safe_path_components() -> None:
    for text in ["a/b", ".", "..", "", "50%", "x\0y", "é" * 200, "/" * 300]:
        name = component(text)
        assert "/" not in name and "\0" not in name and name not in ("", ".", "..")
        assert len(os.fsencode(name)) <= NAME_MAX
    assert component("a/b") != component("a%2Fb")
    assert component("é" * 200) != component("é" * 201)
    t = 1_700_000_000_000_000_000
    layout = Layout.build([_snap(1, t, ["x/y", "x/y", "z"], host="..")])
    assert set(layout.groups["tags"]) == {"x%2Fy", "z"}
    assert layout.groups["tags"]["x%2Fy"] == [time_name(t)]  # a repeated tag, listed once
    assert set(layout.groups["hosts"]) == {"%2E%2E"}


@pytest.fixture(scope="module")
def repo_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Path]]:
    tmp = tmp_path_factory.mktemp("mountview")
    cli = Cli(tmp)
    cli.init()
    src = tmp / "data"
    (src / "sub" / "deeper").mkdir(parents=True)
    rng = random.Random(7)
    (src / "big.bin").write_bytes(rng.randbytes(BIG))
    (src / "empty").write_bytes(b"")
    for i in range(30):
        (src / "sub" / f"small{i}.txt").write_text(f"small file {i}\n" * (i + 1))
    (src / "sub" / "deeper" / "note").write_text("deep\n")
    os.symlink("sub/small1.txt", src / "link")
    os.link(src / "sub" / "small2.txt", src / "hard")
    os.chmod(src / "sub" / "small3.txt", 0o640)
    os.setxattr(src / "sub" / "small5.txt", "user.demo", b"\x00value\xff")
    with open(src / "sparse", "wb") as fh:  # stored with holes where the archiver does that
        fh.write(b"head")
        fh.seek(3 * 1024 * 1024)
        fh.write(b"tail")
    cli.backup(src, extra=("--tag", "one", "--tag", "a/b"))
    yield cli, src


@pytest.fixture
def view(repo_world: tuple[Cli, Path], tmp_path: Path) -> Iterator[SnapshotView]:
    cli, _src = repo_world
    repo = LocalRepository.open(cli.repo, PASSWORD.encode())
    access = RepoAccess(repo)
    disk = DiskCache(repo.repo_id, 64 * 1024 * 1024, root=tmp_path / "cache")
    blobs = BlobSource(access, repo.codecs, disk)
    try:
        yield SnapshotView(access, blobs)
    finally:
        blobs.close()
        access.close()


def _read_all(view: SnapshotView, path: str, chunk: int) -> bytes:
    fh = view.open(path)
    try:
        out, pos = [], 0
        while data := view.read(fh, pos, chunk):
            out.append(data)
            pos += len(data)
        return b"".join(out)
    finally:
        view.release(fh)


def test_top_levels(view: SnapshotView, repo_world: tuple[Cli, Path]) -> None:
    names = [n for n, _m, _i in view.listdir("/")]
    assert names == ["snapshots", "latest", "tags", "hosts", "ids"]
    ((name, mode, _ino),) = view.listdir("/snapshots")
    assert stat.S_ISDIR(mode)
    assert view.readlink("/latest") == f"snapshots/{name}"
    assert sorted(n for n, _m, _i in view.listdir("/tags")) == ["a%2Fb", "one"]
    assert view.readlink(f"/tags/one/{name}") == f"../../snapshots/{name}"
    ((snap_id, _m, _i),) = view.listdir("/ids")
    assert view.readlink(f"/ids/{snap_id}") == f"../snapshots/{name}"
    assert [n for n, _m, _i in view.listdir(f"/snapshots/{name}")] == ["data"]
    for bad, code in [
        ("/nope", errno.ENOENT),
        ("/snapshots/1999-01-01T00:00:00+00:00", errno.ENOENT),
        (f"/snapshots/{name}/data/big.bin/x", errno.ENOTDIR),
        (f"/snapshots/{name}/data/missing", errno.ENOENT),
        ("/tags/none", errno.ENOENT),
        (f"/tags/one/{name}/x", errno.ENOTDIR),
    ]:
        with pytest.raises(OSError) as info:
            view.getattr(bad)
        assert info.value.errno == code, bad


def test_attributes_match_the_source(view: SnapshotView, repo_world: tuple[Cli, Path]) -> None:
    _cli, src = repo_world
    base = f"/snapshots/{view.listdir('/snapshots')[0][0]}/data"
    for rel in ["big.bin", "empty", "sub", "sub/small3.txt", "link", "hard", "sub/deeper/note"]:
        st = os.lstat(src / rel)
        a = view.getattr(f"{base}/{rel}")
        assert a.st_mode == st.st_mode, rel
        assert (a.uid, a.gid, a.mtime_ns) == (st.st_uid, st.st_gid, st.st_mtime_ns), rel
        if not stat.S_ISDIR(st.st_mode):
            assert a.size == st.st_size, rel
    assert view.readlink(f"{base}/link") == "sub/small1.txt"
    hard, other = view.getattr(f"{base}/hard"), view.getattr(f"{base}/sub/small2.txt")
    assert hard.ino == other.ino and hard.nlink == other.nlink == 2
    inos = {view.getattr(f"{base}/{r}").ino for r in ["big.bin", "empty", "sub", "link"]}
    assert len(inos) == 4


def test_reads_at_any_offset(view: SnapshotView, repo_world: tuple[Cli, Path]) -> None:
    _cli, src = repo_world
    base = f"/snapshots/{view.listdir('/snapshots')[0][0]}/data"
    want = (src / "big.bin").read_bytes()
    assert _read_all(view, f"{base}/big.bin", 128 * 1024) == want
    fh = view.open(f"{base}/big.bin")
    rng = random.Random(1)
    for _ in range(200):
        off = rng.randrange(0, BIG + 10)
        size = rng.choice([1, 4096, 131072, 2 * 1024 * 1024, 5_000_000])
        assert view.read(fh, off, size) == want[off : off + size]
    view.release(fh)
    node = view.lookup(f"{base}/sparse").node
    assert node is not None and node.holes  # stored without its hole, read back with zeros
    sparse = view.getattr(f"{base}/sparse")
    assert sparse.size == 3 * 1024 * 1024 + 4 and sparse.blocks * 512 < 1024 * 1024
    for rel in ["empty", "sub/small7.txt", "hard", "sparse"]:
        assert _read_all(view, f"{base}/{rel}", 65536) == (src / rel).read_bytes(), rel
    with pytest.raises(OSError) as info:
        view.open(f"{base}/sub")
    assert info.value.errno == errno.EISDIR


def test_disk_cache_holds_ciphertext_bounded_and_private(
    repo_world: tuple[Cli, Path], tmp_path: Path
) -> None:
    cli, src = repo_world
    repo = LocalRepository.open(cli.repo, PASSWORD.encode())
    access = RepoAccess(repo)
    root = tmp_path / "cache"
    disk = DiskCache(repo.repo_id, 3 * 1024 * 1024, root=root)
    blobs = BlobSource(access, repo.codecs, disk, memory_bytes=4 * 1024 * 1024)
    view = SnapshotView(access, blobs)
    base = f"/snapshots/{view.listdir('/snapshots')[0][0]}/data"
    want = (src / "big.bin").read_bytes()
    try:
        assert _read_all(view, f"{base}/big.bin", 1 << 20) == want
        files = [p for p in disk.path.rglob("*") if p.is_file()]
        assert files and sum(p.stat().st_size for p in files) <= 3 * 1024 * 1024
        assert disk.total == sum(p.stat().st_size for p in files)
        for p in [disk.path, *disk.path.iterdir()]:
            assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600
            stored = dict(repo.read_blobs([bytes.fromhex(p.name)]))
            assert p.read_bytes() == stored[bytes.fromhex(p.name)]  # as stored: ciphertext
            assert p.read_bytes() not in want
    finally:
        blobs.close()
        access.close()


def test_damaged_cache_files_and_leftovers_of_a_killed_run(
    repo_world: tuple[Cli, Path], tmp_path: Path
) -> None:
    cli, src = repo_world
    want = (src / "big.bin").read_bytes()
    root = tmp_path / "cache"

    def read_through_new_mount() -> tuple[bytes, BlobSource]:
        repo = LocalRepository.open(cli.repo, PASSWORD.encode())
        access = RepoAccess(repo)
        blobs = BlobSource(access, repo.codecs, DiskCache(repo.repo_id, 1 << 30, root=root))
        view = SnapshotView(access, blobs)
        base = f"/snapshots/{view.listdir('/snapshots')[0][0]}/data"
        try:
            return _read_all(view, f"{base}/big.bin", 1 << 20), blobs
        finally:
            blobs.close()
            access.close()

    data, blobs = read_through_new_mount()
    assert data == want and blobs.fetched > 1
    assert blobs.disk is not None
    files = sorted(p for p in blobs.disk.path.rglob("*") if p.is_file())
    # What a run killed mid-write, a flipped bit and a truncated file leave behind.
    dead = blobs.disk.path / "tmp-999999999-abcdef"
    dead.write_bytes(b"half a blob")
    raw = bytearray(files[0].read_bytes())
    raw[len(raw) // 2] ^= 1
    files[0].write_bytes(bytes(raw))
    files[1].write_bytes(files[1].read_bytes()[:100])
    data, blobs = read_through_new_mount()
    assert data == want
    assert blobs.fetched == 2  # the two damaged blobs, fetched again; the rest from the cache
    assert not dead.exists()


def test_snapshot_list_refresh(cli: Cli, tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    (first / "f").write_text("old\n")
    cli.backup(first)
    repo = LocalRepository.open(cli.repo, PASSWORD.encode())
    access = RepoAccess(repo)
    blobs = BlobSource(access, repo.codecs)
    view = SnapshotView(access, blobs, refresh_interval=3600, listing_refresh=0)
    try:
        before = [n for n, _m, _i in view.listdir("/snapshots")]
        assert view.listdir("/tags") == []
        (first / "f").write_text("new\n")
        cli.backup(first, extra=("--tag", "two"))
        # A lookup waits for the interval; a listing of the top folders, or a snapshot name
        # not seen yet, looks again at once.
        with pytest.raises(FileNotFoundError):
            view.getattr("/tags/two")
        after = [n for n, _m, _i in view.listdir("/snapshots")]
        assert len(after) == 2 and after[0] == before[0]
        assert [n for n, _m, _i in view.listdir("/tags")] == ["two"]
        assert view.readlink("/latest") == f"snapshots/{after[1]}"
        assert _read_all(view, f"/snapshots/{after[0]}/first/f", 4096) == b"old\n"
        assert _read_all(view, f"/snapshots/{after[1]}/first/f", 4096) == b"new\n"
    finally:
        blobs.close()
        access.close()


def test_xattrs_come_from_the_node(view: SnapshotView) -> None:
    base = f"/snapshots/{view.listdir('/snapshots')[0][0]}/data"
    assert view.xattrs(f"{base}/sub/small5.txt") == {"user.demo": b"\x00value\xff"}
    assert view.xattrs(f"{base}/empty") == {}
    assert view.xattrs("/snapshots") == {}


def test_an_empty_repository(cli: Cli) -> None:
    repo = LocalRepository.open(cli.repo, PASSWORD.encode())
    access = RepoAccess(repo)
    blobs = BlobSource(access, repo.codecs)
    try:
        view = SnapshotView(access, blobs)
        assert [n for n, _m, _i in view.listdir("/")] == ["snapshots", "tags", "hosts", "ids"]
        assert view.listdir("/snapshots") == [] and view.listdir("/tags") == []
        with pytest.raises(FileNotFoundError):
            view.getattr("/latest")
    finally:
        blobs.close()
        access.close()


def test_disk_cache_bound_holds_under_concurrent_puts(tmp_path: Path) -> None:
    """Many threads filling a small cache at once: a blob evicted by another thread while its
    own file was still being written must not stay behind as a file nobody counts (the
    folder would grow past its bound). Files on disk always match what is counted."""
    import threading

    cache = DiskCache("a" * 32, 256 * 1024, root=tmp_path / "cache")
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randint(20_000, 120_000)) for _ in range(64)]

    def fill(seed: int) -> None:
        order = random.Random(seed)
        for _ in range(150):
            k = order.randrange(len(payloads))
            cache.put(bytes([k]) * 32, payloads[k])

    threads = [threading.Thread(target=fill, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    files = [p for p in cache.path.rglob("*") if p.is_file()]
    on_disk = sum(p.stat().st_size for p in files)
    assert on_disk <= 256 * 1024
    assert on_disk == cache.total
    for p in files:
        k = bytes.fromhex(p.name)[0]
        assert p.read_bytes() == payloads[k]
