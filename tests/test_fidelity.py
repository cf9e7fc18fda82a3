"""Backup then restore reproduces the source exactly: contents, types, modes, times, links, names.

Every test drives the real `strongroom` program (see conftest.Cli) and compares the restored
tree with the source using `full_state`, which is stricter than conftest.tree_state: it also
covers the root folder itself, symlink times, owners and which paths are hard links of each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli, Result, strongroom_exe, tree_state
from strongroom.bundler import SMALL_FILE_LIMIT
from strongroom.chunker import MAX_SIZE, MIN_SIZE

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------------------------
# helpers


def full_state(root: Path | bytes) -> dict[bytes, Any]:
    """Everything restore must reproduce, keyed by path relative to root's parent folder."""
    root_b = os.fsencode(root)
    parent = os.path.dirname(root_b.rstrip(b"/"))
    out: dict[bytes, Any] = {}
    by_inode: dict[int, list[bytes]] = {}

    def add(path: bytes) -> None:
        st = os.lstat(path)
        rel = os.path.relpath(path, parent)
        kind = stat.S_IFMT(st.st_mode)
        entry: tuple[Any, ...] = (
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_mtime_ns,
            st.st_uid,
            st.st_gid,
        )
        if stat.S_ISLNK(st.st_mode):
            entry += (os.readlink(path),)
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
            entry += (st.st_size, h.hexdigest())
            if st.st_nlink > 1:
                by_inode.setdefault(st.st_ino, []).append(rel)
        out[rel] = entry

    add(root_b)
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            add(os.path.join(dirpath, name))
    out[b"<hardlink groups>"] = sorted(sorted(g) for g in by_inode.values())
    return out


def assert_same(source: Path, restored: Path) -> None:
    want, got = full_state(source), full_state(restored)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing, f"not restored: {missing[:10]}"
    assert not extra, f"restored but not in the source: {extra[:10]}"
    diffs = [(k, want[k], got[k]) for k in want if want[k] != got[k]]
    assert not diffs, f"differences (path, source, restored): {diffs[:5]}"


def check_read_data(cli: Cli) -> None:
    res = cli.run("check", "--read-data")
    assert "no errors" in res.stdout


def roundtrip(cli: Cli, src: Path, tmp_path: Path, name: str = "out") -> dict[str, Any]:
    """Back up src, restore the snapshot into a fresh folder, compare, and check the repo."""
    result = cli.backup(src)
    assert result["warnings"] == []
    target = tmp_path / name
    cli.restore(target)
    assert_same(src, target / src.name)
    check_read_data(cli)
    return result


def rand(n: int) -> bytes:
    return os.urandom(n)


# --------------------------------------------------------------------------------------------
# One "zoo" source tree, backed up once and restored once into an existing empty folder: each
# part below is one kind of difficulty, and each test compares its part. Sharing one backup
# keeps the suite fast; every part is still compared in full.

SIZES = {
    "empty": 0,
    "one": 1,
    "small_below": SMALL_FILE_LIMIT - 1,
    "small_at": SMALL_FILE_LIMIT,
    "small_above": SMALL_FILE_LIMIT + 1,
    "min_below": MIN_SIZE - 1,
    "min_at": MIN_SIZE,
    "min_above": MIN_SIZE + 1,
    "max_below": MAX_SIZE - 1,
    "max_at": MAX_SIZE,
    "max_above": MAX_SIZE + 1,
    "several_chunks": 3 * MAX_SIZE + 17,
}
# Zeros never produce a content-defined cut: FastCDC cuts at exactly MAX_SIZE, so these files
# end on (or one byte past, or one short of) a chunk boundary.
ZERO_SIZES = {
    "zeros_two_chunks": 2 * MAX_SIZE,
    "zeros_two_chunks_plus_one": 2 * MAX_SIZE + 1,
    "zeros_two_chunks_minus_one": 2 * MAX_SIZE - 1,
}
UNUSUAL_NAMES = [
    b"\xff\xfe",
    b"latin1-caf\xe9",
    b"new\nline",
    b"carriage\rreturn",
    b"tab\there",
    b"esc\x1b[31mred",
    b" leading and trailing spaces ",
    "ümlaut-日本語-🎉".encode(),
    b"-dash-first",
    b"back\\slash",
    b"'quotes\" and *?[glob]",
    b"\x01control\x1f",
    b".hidden",
    b"..dots",
    b"x" * 255,
]
DEPTH = 150


def build_sizes(d: Path) -> None:
    d.mkdir()
    for name, size in SIZES.items():
        (d / name).write_bytes(rand(size))
    for name, size in ZERO_SIZES.items():
        (d / name).write_bytes(bytes(size))
    # More small files than fit in one ~1 MiB bundle, so several bundles are sealed.
    (d / "many_small").mkdir()
    for i in range(40):
        (d / "many_small" / f"s{i:02d}").write_bytes(rand(40_000 + i))
    # Identical content under many names must restore as independent, full copies.
    (d / "same").mkdir()
    small, big = rand(1000), rand(MIN_SIZE * 2 + 12345)
    for i in range(4):
        (d / "same" / f"small{i}").write_bytes(small)
        (d / "same" / f"big{i}").write_bytes(big)


def build_modes(d: Path) -> None:
    (d / "empty").mkdir(parents=True)
    (d / "nested" / "empty" / "deeper").mkdir(parents=True)
    (d / "readonly_dir").mkdir()
    (d / "readonly_dir" / "inside").write_bytes(b"in a read-only folder")
    (d / "sticky").mkdir()
    (d / "open777").mkdir()
    (d / "open777" / "f").write_bytes(b"in a 777 folder")
    files = {"m751": 0o751, "m640": 0o640, "m604": 0o604, "m444": 0o444, "m2755": 0o2755}
    files.update(m1644=0o1644, m777=0o777, m666=0o666)  # wider than the umask allows
    if IS_ROOT:
        files["m000"] = 0o000  # unreadable for anyone but root; see the unreadable test
    for i, (name, mode) in enumerate(files.items()):
        p = d / name
        p.write_bytes(name.encode() * (i + 1))
        p.chmod(mode)
    times = {
        "m751": 1_234_567_890_123_456_789,  # every nanosecond digit counts
        "m640": 1,  # one nanosecond after the epoch
        "m604": -1_500_000_000_987_654_321,  # before 1970
        "m444": 4_102_444_800_000_000_001,  # after 2100
        "m2755": 0,
    }
    for name, ns in times.items():
        os.utime(d / name, ns=(ns, ns))
    # Folder modes and times last, children first, as a user's tree would have them.
    (d / "readonly_dir").chmod(0o555)
    (d / "sticky").chmod(0o1777)
    (d / "nested" / "empty").chmod(0o700)
    (d / "open777").chmod(0o777)
    folders = ["empty", "nested/empty/deeper", "nested/empty", "nested", "readonly_dir", "sticky"]
    for i, sub in enumerate([*folders, "."]):
        ns = 1_000_000_000_000_000_007 + i * 1_111_111_111
        os.utime(d / sub, ns=(ns, ns))


def build_owners(d: Path) -> None:
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_bytes(b"owned")
    os.symlink("f", d / "sub" / "l")
    if IS_ROOT:
        os.chown(d / "sub" / "f", 1234, 5678)
        os.chown(d / "sub" / "l", 4321, 8765, follow_symlinks=False)
        os.chown(d / "sub", 1111, 2222)


def build_symlinks(d: Path, outside: Path) -> dict[str, str]:
    outside.mkdir()
    (outside / "secret").write_bytes(b"must not be backed up through the link")
    (outside / "sub").mkdir()
    (outside / "sub" / "deep").write_bytes(b"nor this")
    (d / "d").mkdir(parents=True)
    (d / "d" / "file").write_bytes(b"target")
    links = {
        "to_outside_dir": str(outside),
        "to_outside_file": str(outside / "secret"),
        "dangling": "/nonexistent/nowhere",
        "dangling_relative": "../missing",
        "relative_file": "d/file",
        "to_dir_inside": "d",
        "loop_a": "loop_b",
        "loop_b": "loop_a",
        "self": "self",
        "odd target with spaces\nand newline": "x y\nz",
    }
    for name, target in links.items():
        os.symlink(target, d / name)
    os.symlink(b"\xff\xfe-not-utf8", os.path.join(os.fsencode(d), b"bytes_target"))
    for i, name in enumerate(links):
        ns = 1_600_000_000_000_000_001 + i
        os.utime(d / name, ns=(ns, ns), follow_symlinks=False)
    os.utime(d, ns=(1_500_000_000_123_456_789,) * 2)
    return links


def build_hardlinks(d: Path) -> None:
    (d / "a").mkdir(parents=True)
    (d / "b" / "c").mkdir(parents=True)
    (d / "a" / "big").write_bytes(rand(SMALL_FILE_LIMIT * 3))
    os.link(d / "a" / "big", d / "b" / "big_link")
    os.link(d / "a" / "big", d / "b" / "c" / "big_link2")
    (d / "a" / "small").write_bytes(b"small and linked")
    os.link(d / "a" / "small", d / "small_link")
    (d / "a" / "empty").write_bytes(b"")
    os.link(d / "a" / "empty", d / "b" / "empty_link")
    (d / "a" / "ro").write_bytes(b"read-only hard link")
    (d / "a" / "ro").chmod(0o444)
    os.link(d / "a" / "ro", d / "b" / "ro_link")
    (d / "lonely").write_bytes(b"not linked")
    for p in (d / "a", d / "b", d / "b" / "c", d):
        os.utime(p, ns=(1_700_000_000_000_000_003,) * 2)


def build_names(d: Path) -> None:
    d.mkdir()
    d_b = os.fsencode(d)
    for i, name in enumerate(UNUSUAL_NAMES):
        with open(os.path.join(d_b, name), "wb") as fh:
            fh.write(name * (i + 1))
    # A folder with an odd (but UTF-8) name; non-UTF-8 folder names: see test_non_utf8_folder.
    os.mkdir(os.path.join(d_b, b"dir \xc3\xa9\nname"))
    with open(os.path.join(d_b, b"dir \xc3\xa9\nname", b"inner \xfe"), "wb") as fh:
        fh.write(b"inner")
    os.symlink(b"\xff\xfe", os.path.join(d_b, b"link\xfe"))


def build_deep(d: Path) -> Path:
    bottom = d
    for i in range(DEPTH):
        bottom = bottom / f"level{i:03d}"
    bottom.mkdir(parents=True)
    (bottom / "bottom").write_bytes(b"at the bottom")
    (d / "level000" / "top").write_bytes(b"near the top")
    return bottom


def build_specials(d: Path) -> None:
    d.mkdir()
    (d / "file").write_bytes(b"beside a fifo and a socket")
    os.mkfifo(d / "pipe", 0o640)
    os.utime(d / "pipe", ns=(1_650_000_000_000_000_009,) * 2)
    os.mkfifo(d / "pipe666")
    os.chmod(d / "pipe666", 0o666)  # wider than the umask allows
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(d / "sock"))  # the socket file stays after close
    sock.close()


@dataclass
class Zoo:
    cli: Cli
    base: Path
    src: Path
    out: Path  # the restored copy of src
    backup: dict[str, Any]
    restore: Result
    links: dict[str, str]
    deep_bottom: Path

    def part(self, name: str) -> tuple[Path, Path]:
        return self.src / name, self.out / name


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    base = tmp_path_factory.mktemp("zoo")
    cli = Cli(base)
    cli.init()
    src = base / "src"
    src.mkdir()
    build_sizes(src / "sizes")
    build_modes(src / "modes")
    build_owners(src / "owners")
    links = build_symlinks(src / "symlinks", base / "outside")
    build_hardlinks(src / "hardlinks")
    build_names(src / "names")
    bottom = build_deep(src / "deep")
    build_specials(src / "specials")
    # A backup that opened the FIFO would block forever: the timeout turns that into a failure.
    res = cli.run("backup", str(src), "--json", timeout=120)
    target = base / "existing_empty"
    target.mkdir()
    restored = cli.run("restore", "latest", "--target", str(target), check=False)
    return Zoo(cli, base, src, target / "src", res.json(), restored, links, bottom)


def test_zoo_backup_and_restore_succeed(zoo: Zoo) -> None:
    assert zoo.backup["warnings"] == []
    # Restoring into an existing empty folder works; the socket is only a note, not a failure.
    assert zoo.restore.returncode == 0, zoo.restore.stderr
    assert "Traceback" not in zoo.restore.stderr
    assert os.listdir(zoo.out.parent) == ["src"]
    check_read_data(zoo.cli)


def test_file_sizes_around_every_limit(zoo: Zoo) -> None:
    assert_same(*zoo.part("sizes"))
    listing = zoo.cli.run("ls", "--json", "latest", "/src/sizes").stdout.splitlines()
    sizes = {Path(e["path"]).name: e["size"] for e in map(json.loads, listing)}
    for name, size in {**SIZES, **ZERO_SIZES}.items():
        assert sizes[name] == size, name


def test_empty_folders_odd_modes_and_times(zoo: Zoo) -> None:
    assert_same(*zoo.part("modes"))


def test_owners(zoo: Zoo) -> None:
    assert_same(*zoo.part("owners"))
    if IS_ROOT:
        assert (zoo.out / "owners" / "sub" / "f").stat().st_uid == 1234


def test_symlinks_are_stored_never_followed(zoo: Zoo) -> None:
    src, out = zoo.part("symlinks")
    assert_same(src, out)
    listing = zoo.cli.run("ls", "latest", "/src/symlinks").stdout.splitlines()
    assert len(listing) == len(zoo.links) + 3  # the links, bytes_target, d and d/file
    assert "/src/symlinks/to_outside_dir" in listing
    assert not any("secret" in line or "deep" in line for line in listing)
    assert os.readlink(out / "to_outside_dir") == str(zoo.base / "outside")
    assert (zoo.base / "outside" / "secret").exists()


def test_hard_links_restored_as_links(zoo: Zoo) -> None:
    src, out = zoo.part("hardlinks")
    assert_same(src, out)  # compares which paths share an inode
    assert (out / "a" / "big").stat().st_ino == (out / "b" / "c" / "big_link2").stat().st_ino
    assert (out / "a" / "big").stat().st_nlink == 3
    assert (out / "lonely").stat().st_nlink == 1


def test_hard_link_restored_alone_with_include(zoo: Zoo) -> None:
    """Restoring only the second of two linked paths must still write its content."""
    target = zoo.base / "only_b"
    zoo.cli.restore(target, "latest", "--include", "src/hardlinks/b/c")
    got = target / "src" / "hardlinks" / "b" / "c" / "big_link2"
    assert got.read_bytes() == (zoo.src / "hardlinks" / "a" / "big").read_bytes()
    assert not (target / "src" / "hardlinks" / "a").exists()


def test_unusual_names(zoo: Zoo) -> None:
    assert_same(*zoo.part("names"))
    # ls shows such names escaped on one line each, never raw control bytes.
    out = zoo.cli.run("ls", "latest", "/src/names").stdout
    assert len(out.splitlines()) == len(UNUSUAL_NAMES) + 3  # + dir, dir/inner, link
    assert "/src/names/\\xff\\xfe\n" in out
    assert "new\\nline" in out
    assert not any(ch in out for ch in "\r\t\x01\x1b\x1f"), "raw control characters in ls"


def test_deep_nesting(zoo: Zoo) -> None:
    assert_same(*zoo.part("deep"))
    target = zoo.base / "deep_only"
    zoo.cli.restore(target, "latest", "--include", str(zoo.deep_bottom.relative_to(zoo.base)))
    got = target / zoo.deep_bottom.relative_to(zoo.base) / "bottom"
    assert got.read_bytes() == b"at the bottom"
    assert not (target / "src" / "deep" / "level000" / "top").exists()


def test_fifo_restored_and_socket_skipped(zoo: Zoo) -> None:
    src, out = zoo.part("specials")
    assert stat.S_ISFIFO(os.lstat(out / "pipe").st_mode)
    sock = out / "sock"
    assert not os.path.lexists(sock) or stat.S_ISSOCK(os.lstat(sock).st_mode)
    if not os.path.lexists(sock):
        assert "sock" in zoo.restore.stderr  # skipped with a note
    os.unlink(src / "sock")
    if os.path.lexists(sock):
        os.unlink(sock)
    os.utime(src, ns=(1,) * 2)  # the unlinks changed the folder times; compare the rest
    os.utime(out, ns=(1,) * 2)
    assert_same(src, out)


def test_restore_include_sub_path(zoo: Zoo) -> None:
    cli = zoo.cli
    target = zoo.base / "include_one"
    cli.restore(target, "latest", "--include", "src/owners")
    assert_same(zoo.src / "owners", target / "src" / "owners")
    assert os.listdir(target / "src") == ["owners"]

    target = zoo.base / "include_two"
    cli.restore(
        target, "latest", "-i", "/src/modes/nested/empty/deeper", "--include", "src/sizes/one"
    )
    got = set(tree_state(target))
    assert got == {
        b"src",
        b"src/modes",
        b"src/modes/nested",
        b"src/modes/nested/empty",
        b"src/modes/nested/empty/deeper",
        b"src/sizes",
        b"src/sizes/one",
    }
    assert_same(zoo.src / "modes/nested/empty/deeper", target / "src/modes/nested/empty/deeper")
    assert_same(zoo.src / "sizes/one", target / "src/sizes/one")

    res = cli.run("restore", "latest", "-t", str(zoo.base / "none"), "-i", "src/no", check=False)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_restore_never_writes_through_existing_symlink(zoo: Zoo) -> None:
    victim = zoo.base / "victim"
    victim.mkdir()
    target = zoo.base / "trap"
    target.mkdir()
    os.symlink(victim, target / "src")
    res = zoo.cli.run("restore", "latest", "--target", str(target), check=False)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert os.listdir(victim) == []


def test_restore_into_a_link_to_a_folder(zoo: Zoo) -> None:
    """The target may be a symlink to a folder (e.g. on another disk): restore goes there."""
    real = zoo.base / "real_target"
    real.mkdir()
    link = zoo.base / "link_target"
    os.symlink(real, link)
    zoo.cli.restore(link, "latest", "--include", "src/sizes/one")
    assert (real / "src" / "sizes" / "one").read_bytes() == (zoo.src / "sizes" / "one").read_bytes()


def test_non_utf8_folder_name(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    folder = os.path.join(os.fsencode(src), b"dir\xff")
    os.mkdir(folder)
    with open(os.path.join(folder, b"f\xfe"), "wb") as fh:
        fh.write(b"in a non-UTF-8 folder")
    roundtrip(cli, src, tmp_path)
    assert cli.backup(src)["unchanged"] == 1


# --------------------------------------------------------------------------------------------
# files that change, cannot be read, or are not files


def _open_by(pid: int, path: Path) -> bool:
    """True if process pid has path open (Linux /proc; False where that cannot be known)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def test_file_growing_while_being_read(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "steady").write_bytes(b"steady content")
    growing = src / "growing.log"
    initial = 24 << 20
    growing.write_bytes(rand(initial))
    block = rand(256 << 10)
    appended = 0

    # Append while the backup has the file open (seen in /proc), so the read races the writer.
    proc = subprocess.Popen(
        [*strongroom_exe(), "backup", str(src), "--json"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with open(growing, "ab", buffering=0) as fh:
            while proc.poll() is None and appended < (32 << 20):
                if _open_by(proc.pid, growing):
                    fh.write(block)
                    appended += len(block)
                else:
                    time.sleep(0.0005)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, 3), stderr
    assert "Traceback" not in stderr
    r1 = json.loads(stdout)
    assert (proc.returncode == 3) == bool(r1["warnings"])
    final = growing.read_bytes()
    assert len(final) == initial + appended

    cli.restore(tmp_path / "out1", r1["snapshot"])
    got = (tmp_path / "out1" / "src" / "growing.log").read_bytes()
    assert len(got) >= initial
    # Either it was reported as changing, or what was stored is what the file held at one time.
    assert final.startswith(got), "stored content must be bytes the file really held"
    if r1["warnings"]:
        assert any("growing.log" in w for w in r1["warnings"]), r1["warnings"]

    # The next backup must read it again and store what it is now.
    r2 = cli.backup(src)
    assert r2["warnings"] == []
    if appended:
        assert r2["modified"] == 1
        assert r2["unchanged"] == 1
        assert r2["bytes_read"] >= len(final)
    cli.restore(tmp_path / "out2", r2["snapshot"])
    assert (tmp_path / "out2" / "src" / "growing.log").read_bytes() == final
    check_read_data(cli)


class NobodyCli(Cli):
    """Runs strongroom as user nobody, so that mode 000 really is unreadable even for root."""

    PREFIX = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.env["HOME"] = str(tmp)
        self.env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")  # one nobody may write
        self.cwd = self.repo.parent  # a folder nobody may enter


@pytest.fixture
def unprivileged(tmp_path: Path) -> Iterator[tuple[Cli, Path]]:
    """A Cli whose program cannot read mode-000 files, and a folder it may write in."""
    if not IS_ROOT:
        c = Cli(tmp_path)
        c.init()
        yield c, tmp_path
        return
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    probe = subprocess.run(
        [*NobodyCli.PREFIX, *strongroom_exe(), "--version"], capture_output=True, check=False
    )
    if probe.returncode != 0:  # e.g. the checkout lies below a folder only root may enter
        pytest.skip("user nobody cannot run this checkout's strongroom")
    base = Path(tempfile.mkdtemp(prefix="strongroom-nobody-", dir="/tmp"))
    try:
        base.chmod(0o777)
        c = NobodyCli(base)
        c.init()
        yield c, base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unreadable_files_and_folders(unprivileged: tuple[Cli, Path]) -> None:
    cli, base = unprivileged
    src = base / "src"
    (src / "ok_dir").mkdir(parents=True)
    (src / "ok_dir" / "fine").write_bytes(b"fine")
    (src / "readable").write_bytes(b"readable" * 100)
    (src / "big_readable").write_bytes(rand(SMALL_FILE_LIMIT * 2))
    (src / "secret").write_bytes(b"no access")
    (src / "big_secret").write_bytes(rand(SMALL_FILE_LIMIT * 2))
    (src / "locked_dir").mkdir()
    (src / "locked_dir" / "hidden").write_bytes(b"inside a locked folder")
    for p in (src / "secret", src / "big_secret", src / "locked_dir"):
        p.chmod(0o000)
    try:
        for attempt in range(2):  # the second backup must not trust a cache that skipped them
            res = cli.run("backup", str(src), "--json", check=False)
            assert res.returncode == 3, (attempt, res.stdout, res.stderr)
            assert "Traceback" not in res.stderr
            r = res.json()
            text = "\n".join(r["warnings"])
            for name in ("secret", "big_secret", "locked_dir"):
                assert f"/src/{name}" in text, (attempt, name, r["warnings"])
            assert len(r["warnings"]) == 3, r["warnings"]
            listing = cli.run("ls", "latest").stdout.splitlines()
            for present in ("/src/readable", "/src/big_readable", "/src/ok_dir/fine"):
                assert present in listing
            assert "/src/secret" not in listing
            assert "/src/big_secret" not in listing
            assert "/src/locked_dir/hidden" not in listing
        check_read_data(cli)
        target = base / f"out{attempt}"
        cli.restore(target)
        assert (target / "src" / "readable").read_bytes() == b"readable" * 100
        assert (target / "src" / "big_readable").read_bytes() == (src / "big_readable").read_bytes()
        assert (target / "src" / "ok_dir" / "fine").read_bytes() == b"fine"
    finally:
        for p in (src / "secret", src / "big_secret", src / "locked_dir"):
            p.chmod(0o755 if p.is_dir() else 0o644)

    # Readable again: the next backup picks them up and exits 0.
    r = cli.backup(src)
    assert r["warnings"] == []
    assert r["added"] == 3
    assert r["removed"] == 0
    target = base / "final"
    cli.restore(target)
    assert (target / "src" / "locked_dir" / "hidden").read_bytes() == b"inside a locked folder"
    assert (target / "src" / "big_secret").read_bytes() == (src / "big_secret").read_bytes()


# --------------------------------------------------------------------------------------------
# restore options and incremental snapshots


def make_tree(src: Path) -> None:
    (src / "docs" / "old").mkdir(parents=True)
    (src / "docs" / "a.txt").write_bytes(b"alpha")
    (src / "docs" / "old" / "b.txt").write_bytes(b"beta")
    (src / "docs" / "big").write_bytes(rand(MIN_SIZE * 3))
    (src / "music").mkdir()
    (src / "music" / "song").write_bytes(rand(5000))
    (src / "top").write_bytes(b"top level")
    for d in ("docs/old", "docs", "music"):
        os.utime(src / d, ns=(1_600_000_000_555_555_555,) * 2)


def test_incremental_snapshots_each_restore_exactly(cli: Cli, tmp_path: Path) -> None:
    """The cache's fast paths must still produce trees that restore to what was there."""
    src = tmp_path / "src"
    make_tree(src)
    states = []
    snaps = []

    def snap() -> None:
        snaps.append(cli.backup(src)["snapshot"])
        states.append(full_state(src))

    snap()
    (src / "docs" / "old" / "b.txt").write_bytes(b"beta, changed")  # same folder, deep change
    (src / "music" / "song").chmod(0o600)  # metadata only
    os.utime(src / "top", ns=(1_000_000_000_000_000_001,) * 2)  # time only
    snap()
    (src / "docs" / "old").chmod(0o750)  # a folder's own mode, nothing inside changes
    os.utime(src / "docs" / "old", ns=(1_111_111_111_111_111_111,) * 2)
    shutil.rmtree(src / "music")
    (src / "music").write_bytes(b"now a file")  # folder replaced by a file
    snap()
    snap()  # nothing changed
    for i, (snap_id, want) in enumerate(zip(snaps, states, strict=True)):
        target = tmp_path / f"out{i}"
        cli.restore(target, snap_id)
        assert full_state(target / "src") == want, f"snapshot {i}"
    check_read_data(cli)
