"""`strongroom mount`, for real: a server, a backup by the real client, a FUSE mount read with
ordinary tools (ls, stat, find, cat, cmp) and compared with a restore.

Every mount runs in a child process with a bounded wait for it to appear, and is taken down
in teardown whatever happened: SIGTERM, then a lazy unmount and SIGKILL if it lingers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cli, strongroom_exe
from netfixtures import NetCli, Server

pytestmark = pytest.mark.skipif(
    not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")),
    reason="needs /dev/fuse and fusermount3 (Debian's fuse3)",
)

BIG = 16 * 1024 * 1024 + 777


class Mount:
    """`strongroom mount` in a child process."""

    def __init__(self, cli: Cli, mountpoint: Path, *extra: str) -> None:
        self.cli = cli
        self.path = mountpoint
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.log = mountpoint.parent / f"{mountpoint.name}-mount.log"

    def start(self, timeout: float = 30) -> Mount:
        self.path.mkdir(exist_ok=True)
        env = dict(self.cli.env)
        if isinstance(self.cli, NetCli):
            env["STRONGROOM_SERVER"] = self.cli.server.address
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [*strongroom_exe(), "mount", str(self.path), *self.extra],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                text=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.ismount(self.path):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"the mount did not appear:\n{self.log.read_text()}")

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait; a mount that lingers is unmounted lazily and the process killed."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout)
        elif self.proc is not None:
            code = self.proc.returncode
        if os.path.ismount(self.path) or _dead_mount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], timeout=15, check=False)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(15)


def _dead_mount(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == 107  # ENOTCONN: the FUSE process is gone
    return False


def _wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _make_tree(src: Path) -> None:
    (src / "docs" / "deep" / "deeper").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(BIG))
    (src / "empty").write_bytes(b"")
    for i in range(40):
        (src / "docs" / f"note{i:02}.txt").write_text(f"note {i}\n" * (i * 7 + 1))
    (src / "docs" / "deep" / "deeper" / "bottom.txt").write_text("bottom\n")
    os.symlink("docs/note01.txt", src / "link")
    os.symlink("/nowhere/at/all", src / "dangling")
    os.link(src / "docs" / "note02.txt", src / "hardlink")
    os.mkfifo(src / "fifo")
    os.chmod(src / "docs" / "note03.txt", 0o600)
    os.chmod(src / "docs" / "deep", 0o750)
    (src / "ünïcödé name.txt").write_text("unicode\n")
    (src / os.fsdecode(b"bad-\xff-name")).write_text("not utf-8\n")
    os.utime(src / "docs" / "note04.txt", ns=(1_000_000_000, 1_234_567_890_123_456_789))
    os.setxattr(src / "docs" / "note05.txt", "user.colour", b"blue")
    if shutil.which("chattr"):  # a Linux file flag a user may set: no dump
        subprocess.run(["chattr", "+d", str(src / "docs" / "note07.txt")], check=False)
    if shutil.which("setfacl"):  # a POSIX ACL, stored as system.posix_acl_access
        subprocess.run(["setfacl", "-m", "u:65534:r", str(src / "docs" / "note06.txt")], check=True)
    with open(src / "sparse.img", "wb") as fh:
        fh.write(b"start")
        fh.seek(2 * 1024 * 1024)
        fh.write(b"end")


class World:
    def __init__(self, server: Server, alice: NetCli, src: Path, restored: Path) -> None:
        self.server, self.alice, self.src, self.restored = server, alice, src, restored


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mount")
    server = Server(tmp / "server-data").start()
    try:
        alice = server.add_user("alice", tmp)
        src = tmp / "src"
        src.mkdir()
        _make_tree(src)
        alice.backup(src, extra=("--tag", "first"))
        restored = tmp / "restored"
        alice.restore(restored)
        yield World(server, alice, src, restored)
    finally:
        server.kill()


@pytest.fixture(scope="module")
def mounted(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    mount = Mount(world.alice, tmp_path_factory.mktemp("mnt") / "mp")
    try:
        yield mount.start()
    finally:
        mount.stop()


def _run(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(args, capture_output=True, check=True, timeout=60, cwd=cwd).stdout.decode(
        "utf-8", "surrogateescape"
    )


def test_layout_seen_with_ordinary_tools(mounted: Mount) -> None:
    mp = mounted.path
    assert _run("ls", str(mp)).split() == ["hosts", "ids", "latest", "snapshots", "tags"]
    (name,) = _run("ls", str(mp / "snapshots")).split()
    assert os.readlink(mp / "latest") == f"snapshots/{name}"
    assert _run("ls", str(mp / "tags" / "first")).split() == [name]
    assert (mp / "tags" / "first" / name / "src" / "empty").exists()
    assert _run("cat", str(mp / "latest" / "src" / "docs" / "deep" / "deeper" / "bottom.txt")) == (
        "bottom\n"
    )
    long = _run("ls", "-l", str(mp / "latest" / "src"))
    assert "big.bin" in long and "link -> docs/note01.txt" in long
    found = _run("find", str(mp / "latest" / "src"), "-type", "f").splitlines()
    assert len(found) == 40 + 7  # notes, bottom, big, empty, hardlink, sparse, two names
    assert _run("stat", "-c", "%s %a %F", str(mp / "latest" / "src" / "big.bin")).split() == [
        str(BIG),
        "644",
        "regular",
        "file",
    ]
    with pytest.raises(OSError) as info:
        (mp / "latest" / "src" / "new").write_text("no")
    assert info.value.errno in (30, 13)  # EROFS (EACCES on some kernels)


def test_everything_matches_a_restore(world: World, mounted: Mount) -> None:
    root = mounted.path / "latest" / "src"
    restored = world.restored / "src"
    seen = 0
    for dirpath, dirnames, filenames in os.walk(restored):
        for name in dirnames + filenames:
            r = Path(dirpath) / name
            m = root / r.relative_to(restored)
            a, b = os.lstat(r), os.lstat(m)
            rel = r.relative_to(restored)
            assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), rel
            assert stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode), rel
            assert (a.st_uid, a.st_gid) == (b.st_uid, b.st_gid), rel
            assert a.st_mtime_ns == b.st_mtime_ns, rel
            if stat.S_ISLNK(a.st_mode):
                assert os.readlink(r) == os.readlink(m), rel
            if stat.S_ISREG(a.st_mode):
                assert a.st_size == b.st_size, rel
                subprocess.run(["cmp", str(r), str(m)], check=True, timeout=60)
            seen += 1
    assert seen == 53
    hard, other = os.stat(root / "hardlink"), os.stat(root / "docs" / "note02.txt")
    assert hard.st_ino == other.st_ino and hard.st_nlink == other.st_nlink == 2
    assert os.stat(root / "docs" / "note04.txt").st_mtime_ns == 1_234_567_890_123_456_789
    assert os.getxattr(root / "docs" / "note05.txt", "user.colour") == b"blue"
    assert "user.colour" in os.listxattr(root / "docs" / "note05.txt")
    with pytest.raises(OSError):
        os.getxattr(root / "docs" / "note06.txt", "user.colour")
    sparse = os.stat(root / "sparse.img")
    assert sparse.st_size > 2 * 1024 * 1024 and sparse.st_blocks * 512 < 1024 * 1024
    if (
        shutil.which("lsattr")
        and "d" in _run("lsattr", "-d", str(world.src / "docs" / "note07.txt")).split()[0]
    ):
        for path in (restored, root):
            shown = _run("lsattr", "-d", str(path / "docs" / "note07.txt")).split()[0]
            assert "d" in shown, path
        assert "d" not in _run("lsattr", "-d", str(root / "docs" / "note08.txt")).split()[0]
    if shutil.which("getfacl"):
        acls = [
            _run("getfacl", "-n", "--omit-header", str(base / "docs" / "note06.txt"))
            for base in (restored, root)
        ]
        assert "user:65534:r--" in acls[0] and acls[0] == acls[1]


def test_new_snapshot_appears_while_a_file_is_read(
    world: World, mounted: Mount, tmp_path: Path
) -> None:
    mp = mounted.path
    (first,) = os.listdir(mp / "snapshots")
    want = hashlib.sha256((world.src / "big.bin").read_bytes()).hexdigest()
    with open(mp / "latest" / "src" / "big.bin", "rb") as reader:
        digest = hashlib.sha256(reader.read(3 * 1024 * 1024))
        # A second backup commits while the file is open and half read.
        (world.src / "docs" / "note00.txt").write_text("changed\n")
        world.alice.backup(world.src, extra=("--tag", "second"))
        _wait_for(lambda: len(os.listdir(mp / "snapshots")) == 2, 20, "the new snapshot")
        while block := reader.read(1024 * 1024):
            digest.update(block)
    assert digest.hexdigest() == want
    names = sorted(os.listdir(mp / "snapshots"))
    assert names[0] == first
    assert os.readlink(mp / "latest") == f"snapshots/{names[1]}"
    assert os.listdir(mp / "tags" / "second") == [names[1]]
    assert (mp / "latest" / "src" / "docs" / "note00.txt").read_text() == "changed\n"
    old = mp / "snapshots" / first / "src" / "docs" / "note00.txt"
    assert old.read_text() == "note 0\n"


def test_errors_are_one_line(world: World, mounted: Mount, tmp_path: Path) -> None:
    cases = [
        ((str(tmp_path / "missing"),), {}, 2, "does not exist"),
        ((str(mounted.path),), {}, 1, "already mounted"),
        ((str(tmp_path),), {"FUSE_LIBRARY_PATH": "/nonexistent/libfuse3.so"}, 1, "FUSE is not"),
        ((str(tmp_path),), {"STRONGROOM_PASSWORD": "wrong"}, 1, "wrong user name or password"),
    ]
    for args, env, code, words in cases:
        res = world.alice.run("mount", *args, env=env, check=False, timeout=60)
        assert res.returncode == code, res
        assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "Traceback" not in res.stderr
    assert not os.path.ismount(tmp_path)


def test_unmounts_cleanly_with_a_reader_inside(world: World, tmp_path: Path) -> None:
    mount = Mount(world.alice, tmp_path / "mp").start()
    sleeper = None
    try:
        inside = mount.path / "latest" / "src" / "docs"
        sleeper = subprocess.Popen(["sleep", "120"], cwd=inside)
        assert mount.proc is not None
        mount.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert mount.proc.wait(15) == 0
        assert not os.path.ismount(mount.path)
        assert "unmounted" in mount.log.read_text()
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait(15)
        mount.stop()


def test_killed_mid_read_then_mounted_again(world: World, tmp_path: Path) -> None:
    """The disk cache's writes, killed at any point: the next mount reads everything right."""
    big = Path("latest") / "src" / "big.bin"
    cache = Path(world.alice.env["STRONGROOM_CACHE_DIR"])
    mount = Mount(world.alice, tmp_path / "mp", "--cache-size", "8M").start()
    reader = None
    try:
        reader = subprocess.Popen(["cat", str(mount.path / big)], stdout=subprocess.DEVNULL)
        _wait_for(lambda: list(cache.rglob("mount-blobs/??/*")), 20, "blobs in the cache")
        mount.kill()
        reader.wait(15)  # fails with ENOTCONN or EIO once the process is gone
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
        mount.stop()
    blobs = [p for p in cache.rglob("mount-blobs/??/*") if p.is_file()]
    assert blobs and sum(p.stat().st_size for p in blobs) <= 8 * 1024 * 1024
    blobs[0].write_bytes(blobs[0].read_bytes()[:17])  # what a crash mid-write could leave
    (blobs[0].parent.parent / f"tmp-{2**22 + 1}-0").write_bytes(b"half")  # a dead writer's
    mount = Mount(world.alice, tmp_path / "mp", "--cache-size", "8M").start()
    try:
        subprocess.run(
            ["cmp", str(world.src / "big.bin"), str(mount.path / big)], check=True, timeout=120
        )
    finally:
        assert mount.stop() == 0
    assert not list(cache.rglob("mount-blobs/tmp-*"))
    assert "Traceback" not in mount.log.read_text()


def test_server_down_and_back_while_mounted(world: World, mounted: Mount) -> None:
    """Without the server what was read stays readable and the list stays; once it is back
    (a new connection is made) a snapshot made after the restart can be read."""
    known = os.listdir(mounted.path / "snapshots")
    world.server.stop()
    try:
        time.sleep(1.1)  # past the listing's refresh interval: the next listing asks
        start = time.monotonic()
        assert os.listdir(mounted.path / "snapshots") == known
        assert time.monotonic() - start < 10
        assert (mounted.path / "latest" / "src" / "docs" / "note01.txt").read_text()
    finally:
        world.server.start()
    assert "could not refresh the snapshot list" in mounted.log.read_text()
    (world.src / "after-restart.txt").write_text("still here\n")
    world.alice.backup(world.src, extra=("--tag", "third"))
    (name,) = _wait_for_list(mounted.path / "tags" / "third", 30)
    path = mounted.path / "snapshots" / name / "src" / "after-restart.txt"
    assert path.read_text() == "still here\n"
    assert "logged in again" in mounted.log.read_text()


def _wait_for_list(path: Path, timeout: float) -> list[str]:
    found: list[str] = []

    def listed() -> bool:
        found[:] = os.listdir(path) if path.exists() else []
        return bool(found)

    _wait_for(listed, timeout, f"{path} to be listed")
    return found


def test_repo_mode(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "a.txt").write_text("local\n")
    (src / "b.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    cli.backup(src)
    mount = Mount(cli, tmp_path / "mp").start()
    try:
        root = mount.path / "latest" / "data"
        assert _run("cat", str(root / "a.txt")) == "local\n"
        subprocess.run(["cmp", str(src / "b.bin"), str(root / "b.bin")], check=True, timeout=60)
        # A backup into the repository while it is mounted shows up too.
        (src / "a.txt").write_text("again\n")
        cli.backup(src)
        _wait_for(lambda: len(os.listdir(mount.path / "snapshots")) == 2, 20, "the snapshot")
        assert (mount.path / "latest" / "data" / "a.txt").read_text() == "again\n"
    finally:
        assert mount.stop() == 0
    assert "repository" in mount.log.read_text()


def test_damaged_blob_is_an_io_error(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "ok.txt").write_text("fine\n")
    cli.backup(src)
    (src / "bad.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    cli.backup(src)
    # The largest pack holds bad.bin's blobs: damage it in the middle.
    packs = [p for p in (cli.repo / "packs").rglob("*") if p.is_file()]
    newest = max(packs, key=lambda p: p.stat().st_size)
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    mount = Mount(cli, tmp_path / "mp").start()
    try:
        root = mount.path / "latest" / "data"
        res = subprocess.run(["cat", str(root / "bad.bin")], capture_output=True, timeout=60)
        assert res.returncode != 0 and b"Input/output error" in res.stderr
        assert (root / "ok.txt").read_text() == "fine\n"
    finally:
        assert mount.stop() == 0
    log = mount.log.read_text()
    assert "damaged" in log and "Traceback" not in log


def test_other_users_only_with_allow_other(world: World) -> None:
    """Without --allow-other nobody else gets in; with it, the stored modes decide."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    base = Path(tempfile.mkdtemp(prefix="strongroom-mount-"))  # reachable by everyone
    os.chmod(base, 0o755)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat"]
    try:
        for extra, readable in [((), False), (("--allow-other",), True)]:
            mount = Mount(world.alice, base / "mp", *extra).start()
            try:
                docs = mount.path / "latest" / "src" / "docs"
                public = subprocess.run([*nobody, str(docs / "note01.txt")], capture_output=True)
                private = subprocess.run([*nobody, str(docs / "note03.txt")], capture_output=True)
                assert (public.returncode == 0) is readable, public
                assert private.returncode != 0 and b"Permission denied" in private.stderr
            finally:
                assert mount.stop() == 0
    finally:
        shutil.rmtree(base)


def test_version_does_not_load_fuse() -> None:
    code = (
        "import sys\n"
        "from strongroom.cli.main import main\n"
        "sys.argv = ['strongroom', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'mfusepy' not in sys.modules and 'strongroom.mount' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
