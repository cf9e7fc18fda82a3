"""Everything a file is, restored: extended attributes (every namespace), POSIX ACLs (defaults on
folders too), file capabilities, Linux file flags and sparse files.

A "tricky tree" is made with the system's own tools (setfacl, setcap, chattr), backed up and
restored by the real program, locally and over the network, and compared attribute by attribute
with the original: xattrs read with os.getxattr, flags with lsattr, holes with SEEK_DATA.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Cli, strongroom_exe
from netfixtures import NetCli
from strongroom import sparse, tree
from strongroom.bundler import SMALL_FILE_LIMIT
from strongroom.errors import IntegrityError
from strongroom.sparse import MIN_HOLE, HoleMap, data_extents
from test_crash import run_killed
from test_fidelity import IS_ROOT, NobodyCli, assert_same

pytestmark = pytest.mark.skipif(
    not hasattr(os, "setxattr") or not hasattr(os, "SEEK_DATA"), reason="Linux only"
)

MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# helpers


def tool(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def have(name: str) -> bool:
    return shutil.which(name) is not None


def flag_letters(path: Path) -> str:
    """lsattr's letters that strongroom keeps (the filesystem's own 'e', 'I', ... left out)."""
    out = subprocess.run(
        ["lsattr", "-d", str(path)], capture_output=True, text=True, check=False
    ).stdout
    if not out:
        return ""
    return "".join(sorted(c for c in out.split()[0] if c in "suScCiadAmjtDTxP"))


def try_flag(path: Path, letter: str) -> bool:
    """Set a flag with chattr; False if this filesystem (or this user) cannot."""
    res = subprocess.run(["chattr", f"+{letter}", str(path)], capture_output=True, check=False)
    return res.returncode == 0 and letter in flag_letters(path)


def clear_flags(root: Path) -> None:
    """Immutable and append-only entries would stop the test's clean-up."""
    if root.exists() and have("chattr"):
        subprocess.run(["chattr", "-R", "-i", "-a", str(root)], capture_output=True, check=False)


def xattrs(path: Path) -> dict[str, bytes]:
    names = os.listxattr(path, follow_symlinks=False)
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def data_map(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of the data regions SEEK_DATA/SEEK_HOLE report, holes >= MIN_HOLE."""
    size = path.stat().st_size
    holes = []
    with open(path, "rb") as fh:
        fd = fh.fileno()
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data = size
            if data - pos >= MIN_HOLE:
                holes.append((pos, data - pos))
            if data >= size:
                break
            pos = os.lseek(fd, data, os.SEEK_HOLE)
    return data_extents(holes, size)


def attr_state(root: Path) -> dict[str, Any]:
    """Per path below root's parent: xattrs, flags, and for sparse files their data map."""
    out: dict[str, Any] = {}
    paths = [root, *sorted(root.rglob("*"))]
    for p in paths:
        st = p.lstat()
        rel = str(p.relative_to(root.parent))
        entry: dict[str, Any] = {"xattrs": xattrs(p)}
        if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            entry["flags"] = flag_letters(p)
        if stat.S_ISREG(st.st_mode) and st.st_blocks * 512 < st.st_size:
            entry["data"] = data_map(p)
        out[rel] = entry
    return out


def assert_attrs_same(source: Path, restored: Path) -> None:
    want, got = attr_state(source), attr_state(restored)
    assert want.keys() == got.keys()
    diffs = [(k, want[k], got[k]) for k in want if want[k] != got[k]]
    assert not diffs, f"attributes differ (path, source, restored): {diffs[:3]}"


def largest_xattr(path: Path) -> int:
    """The largest user.* value this filesystem takes (ext4 without ea_inode: one block)."""
    for size in (65536, 16384, 3500):
        try:
            os.setxattr(path, "user.probe", b"\0" * size)
        except OSError:
            continue
        os.removexattr(path, "user.probe")
        return size
    return 0


@dataclass
class Tricky:
    src: Path
    flags: str  # the flags this filesystem took ("" if none)
    caps: bool  # security.capability set
    big_xattr: int


def make_tricky(base: Path) -> Tricky:
    src = base / "src"
    (src / "shared" / "inner").mkdir(parents=True)
    (src / "plain").mkdir()
    small = src / "small.txt"
    small.write_bytes(b"small file with attributes\n")
    big = src / "plain" / "big.bin"
    big.write_bytes(os.urandom(SMALL_FILE_LIMIT * 3))  # read by the large-file reader
    size = largest_xattr(small)
    os.setxattr(small, "user.comment", "naïve text".encode())
    os.setxattr(small, "user.binary", bytes(range(256)))
    os.setxattr(small, "user.empty", b"")
    os.setxattr(small, "user.big", os.urandom(size))
    os.setxattr(big, "user.origin", b"\x00\xff\x00 binary \x01")
    os.setxattr(src / "plain", "user.folder", b"on a folder")
    (src / "shared" / "inner" / "note.txt").write_text("inside a folder with a default ACL\n")
    if have("setfacl"):
        tool("setfacl", "-m", "u:1000:r--,g:100:rw-", str(small))
        tool("setfacl", "-m", "u:1000:rwx,g:100:r-x", str(src / "shared"))
        tool("setfacl", "-d", "-m", "u:1000:rwx,g:100:r-x,o::---", str(src / "shared"))
    caps = False
    if IS_ROOT:
        os.setxattr(big, "trusted.note", b"root only")
        os.symlink("small.txt", src / "link")
        os.setxattr(
            src / "link", "trusted.on_link", b"a link's own attribute", follow_symlinks=False
        )
        os.mkfifo(src / "fifo")
        os.setxattr(src / "fifo", "trusted.on_fifo", b"fifo", follow_symlinks=False)
        ping = src / "ping-like"
        ping.write_bytes(b"#!/bin/sh\necho pretend to be ping\n")
        ping.chmod(0o755)
        if have("setcap"):
            tool("setcap", "cap_net_raw+ep", str(ping))
            caps = "security.capability" in os.listxattr(ping)
    sparse = src / "disk.img"
    with open(sparse, "wb") as fh:
        fh.write(os.urandom(300 * 1024))  # data, then a hole, data, and a trailing hole
        fh.seek(32 * MiB)
        fh.write(os.urandom(MiB))
        fh.truncate(64 * MiB)
    flags = ""
    if have("chattr"):
        for path, letter in ((src / "frozen", "i"), (src / "journal.log", "a"), (src, "d")):
            if not path.exists():
                path.write_text(f"flag {letter}\n")
            if try_flag(path, letter):
                flags += letter
    return Tricky(src, flags, caps, size)


@pytest.fixture(scope="module")
def tricky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tricky]:
    base = tmp_path_factory.mktemp("tricky")
    try:
        yield make_tricky(base)
    finally:
        clear_flags(base)


@pytest.fixture
def unflag(tmp_path: Path) -> Iterator[None]:
    yield
    clear_flags(tmp_path)


def check_tricky_restore(cli: Cli, t: Tricky, target: Path) -> None:
    res = cli.restore(target)
    assert "warning" not in res.stderr, res.stderr
    restored = target / t.src.name
    assert_same(t.src, restored)
    assert_attrs_same(t.src, restored)
    got = xattrs(restored / "small.txt")
    assert got["user.binary"] == bytes(range(256))
    assert got["user.empty"] == b""
    assert len(got["user.big"]) == t.big_xattr > 0
    if have("setfacl"):
        assert "system.posix_acl_default" in xattrs(restored / "shared")
        acl = subprocess.run(
            ["getfacl", "-cdn", str(restored / "shared")], capture_output=True, text=True
        ).stdout
        assert "user:1000:rwx" in acl
    if t.caps:
        caps = subprocess.run(
            ["getcap", str(restored / "ping-like")], capture_output=True, text=True
        ).stdout
        assert "cap_net_raw" in caps
    img = restored / "disk.img"
    assert img.stat().st_size == 64 * MiB
    assert img.stat().st_blocks * 512 < 4 * MiB  # holes stayed holes


# --------------------------------------------------------------------------------------------
# round trips


def test_tricky_tree_round_trip_with_repo(
    cli: Cli, tricky: Tricky, tmp_path: Path, unflag: None
) -> None:
    first = cli.backup(tricky.src)
    assert first["warnings"] == []
    assert first["bytes_read"] < 8 * MiB  # the sparse file's 64 MiB were not read
    check_tricky_restore(cli, tricky, tmp_path / "out")
    again = cli.backup(tricky.src)  # nothing changed: nothing is read, attributes kept
    assert (again["added"], again["modified"], again["bytes_read"]) == (0, 0, 0)
    # Into the same target again: what the first restore made immutable is replaced too.
    check_tricky_restore(cli, tricky, tmp_path / "out")

    long = cli.run("ls", "-l", "latest").stdout.splitlines()
    line = {row.split("  [")[0].split()[-1]: row for row in long}
    assert "xattrs user.big, user.binary, user.comment, user.empty" in line["/src/small.txt"]
    assert "sparse: 1.3 MiB of data" in line["/src/disk.img"]
    if have("setfacl"):
        assert line["/src/shared"].startswith("drwx")
        assert line["/src/shared"].split()[0].endswith("+")
        assert "default acl user::rwx,user:1000:rwx" in line["/src/shared"]
    if "i" in tricky.flags:
        assert "[flags i]" in line["/src/frozen"]
    lines = cli.run("ls", "--json", "latest").stdout.splitlines()
    rows = {r["path"]: r for r in map(json.loads, lines)}
    assert rows["/src/plain/big.bin"]["xattrs"]["user.origin"] == "AP8AIGJpbmFyeSAB"
    holes = [[300 * 1024, 32 * MiB - 300 * 1024], [33 * MiB, 31 * MiB]]
    assert rows["/src/disk.img"]["holes"] == holes
    if have("setfacl"):
        assert rows["/src/shared"]["acl"]["default"].startswith("user::rwx,user:1000:rwx")
    if "a" in tricky.flags:
        assert rows["/src/journal.log"]["flags"] == "a"
    assert "flags" not in rows["/src/plain/big.bin"]


def test_tricky_tree_round_trip_over_the_network(
    alice: NetCli, tricky: Tricky, tmp_path: Path, unflag: None
) -> None:
    first = alice.backup(tricky.src)
    assert first["warnings"] == []
    check_tricky_restore(alice, tricky, tmp_path / "out")


# --------------------------------------------------------------------------------------------
# change detection and diff


def test_attribute_only_changes_are_modified(cli: Cli, tmp_path: Path, unflag: None) -> None:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    f = src / "dir" / "file.txt"
    f.write_text("same content all along\n")
    (src / "other.txt").write_text("never touched\n")
    first = cli.backup(src)
    snaps = [first["snapshot"]]

    def backup() -> dict[str, Any]:
        res = cli.backup(src)
        snaps.append(res["snapshot"])
        return dict(res)

    def diff() -> list[str]:
        return cli.run("diff", snaps[-2], snaps[-1]).stdout.splitlines()

    os.setxattr(f, "user.tag", b"new")
    res = backup()
    assert (res["modified"], res["unchanged"]) == (1, 1), res
    assert diff() == [
        "M    /src/dir/file.txt",
        "",
        "0 added, 0 removed, 1 modified, 0 changed type",
    ]

    os.setxattr(f, "user.tag", b"other")  # same name, new value
    assert backup()["modified"] == 1
    assert diff()[0] == "M    /src/dir/file.txt"

    os.setxattr(src / "dir", "user.on_dir", b"1")  # a folder's own attributes
    res = backup()
    assert diff() == ["M    /src/dir/", "", "0 added, 0 removed, 1 modified, 0 changed type"]
    # A default ACL on the folder and a flag on the file (where the filesystem has flags).
    changed = []
    if have("setfacl"):
        tool("setfacl", "-d", "-m", "u:1000:r-x", str(src / "dir"))
        changed.append("M    /src/dir/")
    if have("chattr") and try_flag(f, "d"):
        changed.append("M    /src/dir/file.txt")
    if changed:
        res = backup()
        assert res["modified"] == int("M    /src/dir/file.txt" in changed)  # files only
        assert diff()[: len(changed)] == changed
    res = backup()
    assert (res["modified"], res["added"], res["bytes_read"]) == (0, 0, 0)
    out = tmp_path / "out"
    cli.restore(out)
    assert_attrs_same(src, out / "src")


def test_older_snapshots_without_attributes_are_completed(cli: Cli, tmp_path: Path) -> None:
    """A parent made by a version that recorded no attributes: the next backup reads them
    for files whose content it keeps (the local cache says whether the parent recorded them)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("content\n")
    (src / "big.bin").write_bytes(os.urandom(SMALL_FILE_LIMIT * 2))
    os.setxattr(src / "d" / "f.txt", "user.kept", b"small")
    os.setxattr(src / "big.bin", "user.kept", b"large")
    os.setxattr(src / "d", "user.kept", b"folder")
    # "An older version": Python without xattr calls, so nothing is recorded...
    old = tmp_path / "old-python"
    old.mkdir()
    (old / "sitecustomize.py").write_text(
        "import os\nfor n in ('listxattr', 'getxattr', 'setxattr'):\n    delattr(os, n)\n"
    )
    res = cli.run("backup", str(src), "--json", env={"PYTHONPATH": str(old)})
    assert json.loads(res.stdout)["warnings"] == []
    assert "user.kept" not in cli.run("ls", "--json", "latest").stdout
    # ... and its cache has no mark that attributes were recorded.
    (db,) = cli.cache.rglob("*.sqlite")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM meta WHERE name='attrs'")
    conn.close()
    res2 = cli.backup(src)
    assert (res2["unchanged"], res2["bytes_read"]) == (2, 0)  # contents kept, not read
    rows = [json.loads(line) for line in cli.run("ls", "--json", "latest").stdout.splitlines()]
    kept = {r["path"]: r["xattrs"]["user.kept"] for r in rows if "xattrs" in r}
    assert kept == {"/src/d": "Zm9sZGVy", "/src/d/f.txt": "c21hbGw=", "/src/big.bin": "bGFyZ2U="}


# --------------------------------------------------------------------------------------------
# sparse files


def test_sparse_10_gib_file_with_1_mib_of_data(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "vm.img"
    data = os.urandom(MiB)
    with open(big, "wb") as fh:
        fh.truncate(10 * 1024 * MiB)
        fh.seek(5 * 1024 * MiB)
        fh.write(data)
    res = cli.backup(src)
    assert res["bytes_read"] == MiB
    assert res["bytes_scanned"] == 10 * 1024 * MiB
    assert res["bytes_uploaded"] < 2 * MiB
    out = tmp_path / "out"
    cli.restore(out)
    got = out / "src" / "vm.img"
    st = got.stat()
    assert st.st_size == 10 * 1024 * MiB
    assert st.st_blocks * 512 <= 2 * MiB, st.st_blocks  # ~1 MiB on disk, not 10 GiB
    assert data_map(got) == [(5 * 1024 * MiB, MiB)]
    with open(got, "rb") as fh:
        fh.seek(5 * 1024 * MiB)
        assert fh.read(MiB) == data
        fh.seek(5 * 1024 * MiB - 10)
        assert fh.read(10) == b"\0" * 10
    assert "[sparse: 1.0 MiB of data]" in cli.run("ls", "-l", "latest", "src/vm.img").stdout
    # Unchanged: kept from the parent (nothing read); its data moved: read again.
    assert cli.backup(src)["bytes_read"] == 0
    with open(big, "r+b") as fh:
        fh.seek(0)
        fh.write(b"head")
    res = cli.backup(src)
    assert res["modified"] == 1 and res["bytes_read"] < 2 * MiB
    (row,) = cli.run("ls", "--json", "latest", "src/vm.img").stdout.splitlines()
    assert 0 < json.loads(row)["holes"][0][0] <= MIN_HOLE  # a block of data at the start now


def test_kill_during_restore_of_attributes_and_holes(cli: Cli, tmp_path: Path) -> None:
    """An interrupted restore of sparse files and attributes, run again, completes them."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        f = src / f"sparse{i}.img"
        with open(f, "wb") as fh:
            fh.write(os.urandom(3 * MiB))
            fh.seek(64 * MiB)
            fh.write(os.urandom(MiB))
        os.setxattr(f, "user.n", str(i).encode())
    for i in range(100):
        p = src / f"small{i}.txt"
        p.write_text(f"file {i}\n")
        os.setxattr(p, "user.n", str(i).encode())
    cli.backup(src)
    target = tmp_path / "target"
    for delay in (0.4, 0.8):
        run = run_killed(cli, "restore", "latest", "--target", str(target), after_start=delay)
        assert run.killed or run.completed, run.describe()
    cli.restore(target)
    assert_same(src, target / "src")
    assert_attrs_same(src, target / "src")


# --------------------------------------------------------------------------------------------
# what cannot be restored: a warning, never a failed restore


def test_flags_the_target_filesystem_lacks_are_a_warning(
    cli: Cli, tmp_path: Path, unflag: None
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "synced.txt"
    f.write_text("synchronous writes\n")
    if not have("chattr") or not try_flag(f, "S"):
        pytest.skip("this filesystem has no 'S' flag to back up")
    os.setxattr(f, "user.kept", b"still restored")
    cli.backup(src)
    shm = Path("/dev/shm")
    probe = shm / f"strongroom-flag-probe-{os.getpid()}"
    probe.write_text("")
    try:
        tmpfs_has_s = try_flag(probe, "S")
    finally:
        clear_flags(probe)
        probe.unlink()
    if tmpfs_has_s:
        pytest.skip("/dev/shm takes the 'S' flag here: no filesystem without it to restore to")
    target = Path(tempfile.mkdtemp(prefix="strongroom-noflags-", dir=shm))
    try:
        res = cli.run("restore", "latest", "--target", str(target), check=False)
        assert res.returncode == 3, res.stderr
        assert "Traceback" not in res.stderr
        wanted = "synced.txt: file flags 'S' not restored (the target's filesystem does not support"
        assert any(wanted in line for line in res.stderr.splitlines()), res.stderr
        restored = target / "src" / "synced.txt"
        assert restored.read_text() == "synchronous writes\n"
        assert os.getxattr(restored, "user.kept") == b"still restored"
    finally:
        shutil.rmtree(target, ignore_errors=True)


@pytest.fixture
def nobody_base() -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("needs root to make a tree that an ordinary user cannot fully restore")
    if not have("setpriv"):
        pytest.skip("no setpriv to run as user nobody")
    probe = subprocess.run(
        [*NobodyCli.PREFIX, *strongroom_exe(), "--version"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("user nobody cannot run this checkout's strongroom")
    base = Path(tempfile.mkdtemp(prefix="strongroom-nobody-", dir="/tmp"))
    base.chmod(0o777)
    for sub in ("root", "user"):
        (base / sub).mkdir(mode=0o777)
        (base / sub).chmod(0o777)
    try:
        yield base
    finally:
        clear_flags(base)
        shutil.rmtree(base, ignore_errors=True)


def test_unprivileged_restore_warns_for_what_it_may_not_set(
    tricky: Tricky, nobody_base: Path
) -> None:
    """root's snapshot (trusted.*, capabilities, immutable) restored by user nobody: the user
    attributes and ACLs are restored, each namespace it may not set is one summed-up warning."""
    root = Cli(nobody_base / "root")
    root.init()
    root.backup(tricky.src)
    subprocess.run(["chown", "-R", "nobody:nogroup", str(root.repo)], check=True)
    nobody = NobodyCli(nobody_base / "user")
    nobody.env["STRONGROOM_REPO"] = str(root.repo)
    target = nobody_base / "user" / "out"
    res = nobody.run("restore", "latest", "--target", str(target), check=False)
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    text = res.stdout + res.stderr
    assert "extended attribute trusted.note not restored" in text
    assert "extended attribute trusted.on_link not restored" in text
    if tricky.caps:
        assert "extended attribute security.capability not restored" in text
    if "i" in tricky.flags:
        assert "frozen: file flags 'i' not restored (Operation not permitted: needs more" in text
    restored = target / "src"
    small = xattrs(restored / "small.txt")
    assert small["user.binary"] == bytes(range(256))
    if have("setfacl"):
        assert "system.posix_acl_default" in xattrs(restored / "shared")
    assert (restored / "disk.img").stat().st_blocks * 512 < 4 * MiB
    assert "trusted.note" not in xattrs(restored / "plain" / "big.bin")


def test_unprivileged_backup_warns_for_attributes_it_may_not_read(nobody_base: Path) -> None:
    """listxattr shows user nobody a folder's user.* names, but reading them needs read access
    to the folder: a warning, the rest is backed up, and the next backup tries again."""
    src = nobody_base / "src"
    (src / "locked").mkdir(parents=True)
    (src / "open.txt").write_text("readable\n")
    os.setxattr(src / "open.txt", "user.ok", b"yes")
    os.setxattr(src / "locked", "user.secret", b"not for nobody")
    os.setxattr(src / "open.txt", "trusted.hidden", b"nobody never sees this name")
    (src / "locked").chmod(0o711)
    os.chown(src, 65534, 65534)
    os.chown(src / "open.txt", 65534, 65534)
    nobody = NobodyCli(nobody_base / "user")
    nobody.init()
    for _attempt in range(2):
        res = nobody.run("backup", str(src), "--json", check=False)
        assert res.returncode == 3, res.stderr
        warnings = json.loads(res.stdout)["warnings"]
        wanted = "/src/locked: cannot read extended attribute user.secret (Permission denied)"
        assert any(w.endswith(f"{wanted}; not stored") for w in warnings), warnings
    rows = [json.loads(line) for line in nobody.run("ls", "--json", "latest").stdout.splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert by_path["/src/open.txt"]["xattrs"] == {"user.ok": "eWVz"}
    assert "xattrs" not in by_path["/src/locked"]


# --------------------------------------------------------------------------------------------
# the encoding


def test_tree_encoding_of_attributes_and_holes() -> None:
    node = tree.Node(
        name="f",
        type=tree.FILE,
        size=3 * MIN_HOLE,
        content=[tree.ContentRef(b"\1" * 32, 0, MIN_HOLE)],
        holes=[(MIN_HOLE, 2 * MIN_HOLE)],
        flags=0x10,
        xattrs=[["user.a", "AP8="], ["user.b", ""]],
    )
    plain = tree.Node(name="g", type=tree.FILE)
    raw = tree.encode_tree([node, plain])
    doc = json.loads(raw)
    assert doc["v"] == 2  # holes: readers that do not know them must refuse it
    assert list(doc["entries"][0]) == sorted(doc["entries"][0])
    assert "xattrs" not in doc["entries"][1] and "holes" not in doc["entries"][1]
    assert tree.decode_tree(raw) == [node, plain]
    assert node.xattr_values() == [("user.a", b"\0\xff"), ("user.b", b"")]
    assert json.loads(tree.encode_tree([plain]))["v"] == 1  # unchanged for everything else
    entries = [node.encode(), plain.encode()]
    assert tree.encode_entries(entries) == raw
    for bad in (
        {"holes": [[0, 0]]},
        {"holes": [[0, 10 * MIN_HOLE]]},
        {"holes": [[MIN_HOLE, 10], [MIN_HOLE + 5, 10]]},
        {"xattrs": [["user.a", "not base64!"]]},
        {"xattrs": [["", "AA=="]]},
        {"xattrs": {"user.a": "AA=="}},
        {"xattrs": [["user.a\0b", "AA=="]]},
        {"xattrs": [["u" * 256, "AA=="]]},
        {"flags": "ia"},
    ):
        broken = {**node.encode(), **bad}
        with pytest.raises(IntegrityError):
            tree.decode_tree(json.dumps({"v": 2, "entries": [broken]}).encode())


def test_put_keeps_canonical_key_order() -> None:
    entry = tree.Node(name="x", type=tree.FILE).encode()
    tree.put(entry, "flags", 0x10)
    tree.put(entry, "holes", [[0, MIN_HOLE]])
    tree.put(entry, "xattrs", [["user.a", ""]])
    assert list(entry) == sorted(entry)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 50)), max_size=6), st.data())
def test_hole_map_places_every_byte(runs: list[tuple[int, int]], data: st.DataObject) -> None:
    """Pieces of the data stream land where they were read from, around the holes."""
    holes: list[tuple[int, int]] = []
    stream: list[int] = []
    pos = 0
    for gap, length in runs:
        if gap:
            holes.append((pos, gap))
        pos += gap
        stream.extend(range(pos, pos + length))
        pos += length
    hm = HoleMap(holes)
    start = data.draw(st.integers(0, max(0, len(stream) - 1)))
    length = data.draw(st.integers(0, len(stream) - start))
    placed = [off + i for off, _s, n in hm.place(start, length) for i in range(n)]
    assert placed == stream[start : start + length]


@pytest.mark.parametrize("preadv", [True, False], ids=["preadv", "pread"])
def test_data_reader_reads_only_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preadv: bool
) -> None:
    if not preadv:
        monkeypatch.setattr(sparse, "_PREADV", None)  # as on macOS
    f = tmp_path / "sparse"
    a, b = os.urandom(100_000), os.urandom(70_000)
    with open(f, "wb") as fh:
        fh.write(a)
        fh.seek(4 * MiB)
        fh.write(b)
        fh.truncate(6 * MiB)
    with open(f, "rb") as fh:
        gaps = sparse.holes(fh.fileno(), 6 * MiB)
        assert gaps and all(length >= MIN_HOLE for _s, length in gaps)
        reader = sparse.DataReader(fh.fileno(), data_extents(gaps, 6 * MiB))
        buf = bytearray(64 * 1024)
        out = bytearray()
        while n := reader.readinto(memoryview(buf)):
            out += buf[:n]
    # What is read is the data regions (whole blocks), the holes are skipped.
    assert out.startswith(a) and b in out and len(out) < MiB
