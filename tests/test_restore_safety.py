"""Restore never writes outside --target, whatever the repository (a hostile server) holds.

Each test forges a snapshot for real: it opens a repository made by the CLI in-process, stores
hand-made tree blobs (through `tree.encode_tree`, or as raw JSON for what the encoder refuses),
commits a snapshot record, and then runs the real `strongroom restore` into a target inside a
sandbox. The sandbox outside the target must be byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import PASSWORD, Cli, Result, strongroom_exe, tree_state
from strongroom import restorer, snapshot, tree
from strongroom.blobs import BlobType
from strongroom.cli.main import cli as strongroom_cli
from strongroom.errors import IntegrityError
from strongroom.pathsafe import is_safe_name
from strongroom.repository import LocalRepository, load_snapshots
from strongroom.restorer import Restorer
from strongroom.tree import ContentRef, Node

SECRET = b"outside secret, must never change\n"


class Forge:
    """Writes hand-made blobs and a snapshot into a repository, as a malicious server could."""

    def __init__(self, cli: Cli) -> None:
        self.repo = LocalRepository.open(cli.repo, PASSWORD.encode(), writer=True)
        self.ids: list[bytes] = []

    def blob(self, raw: bytes, blob_type: BlobType) -> bytes:
        blob_id = self.repo.keys.hasher()(raw)
        self.repo.add_blob(blob_id, blob_type, self.repo.codecs.get().encode(blob_id, raw))
        self.ids.append(blob_id)
        return blob_id

    def data(self, raw: bytes) -> ContentRef:
        return ContentRef(self.blob(raw, BlobType.DATA), 0, len(raw))

    def tree(self, nodes: list[Node]) -> bytes:
        return self.blob(tree.encode_tree(nodes), BlobType.TREE)

    def raw_tree(self, entries: list[dict[str, Any]]) -> bytes:
        """A tree encode_tree would refuse (duplicates, bad names), in the same JSON format."""
        doc = {"v": tree.TREE_VERSION, "entries": entries}
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        return self.blob(raw, BlobType.TREE)

    def commit(self, root: bytes) -> str:
        self.repo.flush()
        snap = snapshot.Snapshot(
            id=snapshot.new_snapshot_id(),
            time_ns=time.time_ns(),
            host="forged",
            username="mallory",
            paths=["/forged"],
            tree=root.hex(),
        )
        record = snapshot.seal_snapshot(self.repo.keys.aead(), snap)
        self.repo.commit_snapshot(snap.id, snap.time_ns, record, self.ids)
        self.repo.close()
        return snap.id


def file_node(name: str, *refs: ContentRef, hardlink: str | None = None) -> Node:
    return Node(
        name=name,
        type=tree.FILE,
        mode=0o644,
        mtime_ns=1_600_000_000_000_000_000,
        size=sum(r.length for r in refs),
        content=list(refs),
        hardlink=hardlink,
    )


def dir_node(name: str, subtree: bytes) -> Node:
    return Node(name=name, type=tree.DIR, mode=0o755, subtree=subtree)


def link_node(name: str, target: str) -> Node:
    return Node(name=name, type=tree.SYMLINK, mode=0o777, target=target)


class Sandbox:
    """sandbox/outside holds sentinels; the target is sandbox/a/b/target, so '../..' stays here."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "sandbox"
        self.outside = self.root / "outside"
        self.target = self.root / "a" / "b" / "target"
        (self.outside / "sub").mkdir(parents=True)
        self.target.mkdir(parents=True)  # made now, so its parent's mtime is part of the baseline
        self.secret = self.outside / "secret.txt"
        self.secret.write_bytes(SECRET)
        (self.outside / "sub" / "x").write_bytes(b"sub sentinel")
        (self.root / "a" / "x").write_bytes(b"a sentinel")
        (self.root / "etc").mkdir()
        (self.root / "etc" / "x").write_bytes(b"etc sentinel")
        self.before: dict[str, tuple[Any, ...]] | None = None

    def state(self) -> dict[str, tuple[Any, ...]]:
        """Everything in the sandbox except the target's contents, including link counts and
        owners (restore runs as root in CI and chowns what it writes)."""
        out: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.target:
                dirnames[:] = []
                continue
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                if p == self.target:
                    continue
                st = p.lstat()
                key = os.fsdecode(p.relative_to(self.root))
                owner = (st.st_uid, st.st_gid)
                if stat.S_ISLNK(st.st_mode):
                    out[key] = ("link", os.readlink(p), owner)
                elif stat.S_ISDIR(st.st_mode):
                    out[key] = ("dir", st.st_mode, st.st_mtime_ns, st.st_ino, owner)
                else:
                    content = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
                    out[key] = ("file", st.st_mode, st.st_mtime_ns, st.st_nlink, content, owner)
        return out

    def freeze(self) -> None:
        self.before = self.state()

    def assert_untouched(self) -> None:
        assert self.before is not None
        assert self.state() == self.before
        assert self.secret.read_bytes() == SECRET
        assert self.secret.stat().st_nlink == 1
        self.assert_contained()

    def assert_contained(self) -> None:
        """Nothing but symlinks themselves may resolve outside the target; no shared inodes."""
        if self.target.is_symlink() or not self.target.exists():
            return
        real_target = os.path.realpath(self.target)
        inodes: dict[int, int] = {}
        for dirpath, dirnames, filenames in os.walk(self.target):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    continue
                real = os.path.realpath(p)
                assert real.startswith(real_target + os.sep), f"{p} resolves to {real}"
                if stat.S_ISREG(st.st_mode):
                    inodes[st.st_ino] = inodes.get(st.st_ino, 0) + 1
                    assert inodes[st.st_ino] <= st.st_nlink
        for dirpath, _dirs, filenames in os.walk(self.target):
            for name in filenames:
                st = (Path(dirpath) / name).lstat()
                if stat.S_ISREG(st.st_mode):
                    # every link of every restored file is inside the target
                    assert inodes[st.st_ino] == st.st_nlink, f"{name} has a link outside"


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository made by the real `strongroom init`, copied for each test (saves time)."""
    c = Cli(tmp_path_factory.mktemp("template"))
    c.init()
    return c.repo


# Runs `strongroom` with restore forced onto its full-path fallback (what platforms without
# dir_fd support, i.e. Windows, use); everything else is the real program.
_PATHS_LAUNCHER = (
    "import sys; import strongroom.restorer as r; r.DIR_FD_SUPPORTED = False; "
    f"sys.argv = ['strongroom', *sys.argv[{1 + len(strongroom_exe())}:]]; "
    "from strongroom.cli.main import main; main()"
)


class PathsCli(Cli):
    PREFIX = (sys.executable, "-c", _PATHS_LAUNCHER)


@pytest.fixture(params=["dir_fd", "paths"])
def cli(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    template_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    """Each hostile-snapshot test runs against both ways restore can work: through folder
    descriptors, and by full paths (in this process too, for tests that run restore here)."""
    if request.param == "paths":
        monkeypatch.setattr(restorer, "DIR_FD_SUPPORTED", False)
        c: Cli = PathsCli(tmp_path)
    else:
        c = Cli(tmp_path)
    shutil.copytree(template_repo, c.repo)
    return c


@pytest.fixture
def fd_cli(tmp_path: Path, template_repo: Path) -> Cli:
    """Restore through folder descriptors: the mode that withstands a local user's races."""
    assert restorer.DIR_FD_SUPPORTED, "this platform should support dir_fd"
    c = Cli(tmp_path)
    shutil.copytree(template_repo, c.repo)
    return c


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def restore(cli: Cli, sandbox: Sandbox, snap_id: str, *extra: str) -> Result:
    sandbox.freeze()
    res = cli.run("restore", snap_id, "--target", str(sandbox.target), *extra, check=False)
    assert "Traceback" not in res.stderr
    assert "internal error" not in res.stderr
    sandbox.assert_untouched()
    return res


def test_forged_benign_snapshot_restores_exactly(cli: Cli, sandbox: Sandbox) -> None:
    """Control: the forging path itself is sound, so the hostile cases test restore alone."""
    f = Forge(cli)
    hello = f.data(b"hello world\n")
    sub = f.tree([file_node("inner.txt", hello), link_node("up", "../top.txt")])
    big = f.data(b"0123456789" * 1000)
    root = f.tree(
        [
            file_node("top.txt", hello, ContentRef(big.blob_id, 5, 20)),
            dir_node("sub", sub),
            file_node("h1", big, hardlink="1:99"),
            file_node("h2", big, hardlink="1:99"),
        ]
    )
    res = restore(cli, sandbox, f.commit(root))
    assert res.returncode == 0, res.stderr
    t = sandbox.target
    assert (t / "top.txt").read_bytes() == b"hello world\n" + (b"0123456789" * 3)[5:25]
    assert (t / "sub" / "inner.txt").read_bytes() == b"hello world\n"
    assert os.readlink(t / "sub" / "up") == "../top.txt"
    assert (t / "h1").stat().st_ino == (t / "h2").stat().st_ino
    assert (t / "h1").read_bytes() == b"0123456789" * 1000


UNSAFE_NAMES = [
    "..",
    ".",
    "",
    "../x",
    "../../x",
    "../../etc/x",
    "../../../outside/secret.txt",
    "../../../etc/x",
    "a/b",
    "sub/x",
    "/etc/x",
    "x\0y",
    "..\0",
]


def test_traversal_and_slash_names_are_skipped(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    pwned = f.data(b"PWNED")
    inner = f.tree([file_node("x", pwned), file_node("secret.txt", pwned)])
    absolute = [str(sandbox.secret), str(sandbox.root / "a" / "x"), str(sandbox.outside)]
    entries = [file_node(n, pwned).encode() for n in [*UNSAFE_NAMES, *absolute]]
    # directories with hostile names whose contents would land outside if the name were used
    entries += [dir_node(n, inner).encode() for n in ["..", "../..", "../../outside", "/"]]
    entries += [dir_node(str(sandbox.outside), inner).encode()]
    entries.append(file_node("ok.txt", f.data(b"fine")).encode())
    res = restore(cli, sandbox, f.commit(f.raw_tree(entries)))
    assert res.returncode == 3, res.stderr
    assert "unsafe or duplicate name" in res.stderr
    assert os.listdir(sandbox.target) == ["ok.txt"]
    assert (sandbox.target / "ok.txt").read_bytes() == b"fine"


def test_unsafe_names_deep_in_the_tree(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    pwned = f.data(b"PWNED")
    # from target/d1/d2, five levels up is the sandbox itself
    hostile = ["../../../../../x", "../../../../../outside/secret.txt", "../../../../../etc/x"]
    leaf = f.raw_tree([file_node(n, pwned).encode() for n in hostile])
    mid = f.tree([dir_node("d2", leaf)])
    root = f.tree([dir_node("d1", mid)])
    res = restore(cli, sandbox, f.commit(root))
    assert res.returncode == 3, res.stderr
    assert os.listdir(sandbox.target / "d1" / "d2") == []


def test_windows_style_names(cli: Cli, sandbox: Sandbox) -> None:
    names = ["..\\x", "..\\..\\etc\\x", "C:\\x", "C:x", "\\\\server\\share\\x", "x:stream", "..."]
    for n in names:
        assert not is_safe_name(n, windows=True), n
    f = Forge(cli)
    pwned = f.data(b"PWNED")
    res = restore(cli, sandbox, f.commit(f.tree([file_node(n, pwned) for n in names])))
    assert res.returncode in (0, 3), res.stderr
    # On POSIX these are ordinary single names: whatever was restored sits directly in target.
    for name in os.listdir(sandbox.target):
        assert name in names
        assert (sandbox.target / name).read_bytes() == b"PWNED"


def test_names_with_unencodable_surrogates_are_skipped(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    pwned = f.data(b"PWNED")
    entries = [file_node(n, pwned).encode() for n in ["\ud800", "a\udfff", "ok"]]
    res = restore(cli, sandbox, f.commit(f.raw_tree(entries)))
    assert res.returncode == 3, res.stderr
    assert os.listdir(sandbox.target) == ["ok"]


@pytest.mark.parametrize("symlink_first", [True, False])
def test_symlink_then_same_name_directory(cli: Cli, sandbox: Sandbox, symlink_first: bool) -> None:
    """`evil` -> outside, then a directory also named `evil` with a file, then `evil/x`."""
    f = Forge(cli)
    pwned = f.data(b"PWNED")
    inner = f.tree([file_node("secret.txt", pwned), file_node("x", pwned)])
    link = link_node("evil", str(sandbox.outside)).encode()
    folder = dir_node("evil", inner).encode()
    entries = [link, folder] if symlink_first else [folder, link]
    entries += [file_node("evil/x", pwned).encode(), file_node("evil/secret.txt", pwned).encode()]
    res = restore(cli, sandbox, f.commit(f.raw_tree(entries)))
    assert res.returncode == 3, res.stderr
    evil = sandbox.target / "evil"
    if symlink_first:
        assert evil.is_symlink()
        assert os.readlink(evil) == str(sandbox.outside)
    else:
        assert not evil.is_symlink()
        assert (evil / "secret.txt").read_bytes() == b"PWNED"


def test_symlink_and_file_sharing_a_filesystem_name(cli: Cli, sandbox: Sandbox) -> None:
    """'é' and '\\udcc3\\udca9' are different strings but the same name on disk."""
    f = Forge(cli)
    pwned = f.data(b"PWNED")
    inner = f.tree([file_node("secret.txt", pwned)])
    entries = [
        link_node("\udcc3\udca9", str(sandbox.outside)).encode(),
        dir_node("é", inner).encode(),
        link_node("f\udcc3\udca9", str(sandbox.secret)).encode(),
        file_node("fé", pwned).encode(),
    ]
    res = restore(cli, sandbox, f.commit(f.raw_tree(entries)))
    assert res.returncode == 3, res.stderr
    assert "duplicate" in res.stderr
    # the first of each pair won; nothing was written through the links
    assert (sandbox.target / "é").is_symlink()
    assert (sandbox.target / "fé").is_symlink()


def test_two_files_sharing_a_filesystem_name_are_not_mixed(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    long_ref = f.data(b"A" * 5000)
    short_ref = f.data(b"B" * 10)
    entries = [file_node("é", short_ref).encode(), file_node("\udcc3\udca9", long_ref).encode()]
    res = restore(cli, sandbox, f.commit(f.raw_tree(entries)))
    assert res.returncode == 3, res.stderr
    assert (sandbox.target / "é").read_bytes() == b"B" * 10


def test_symlink_and_hard_links_stay_inside(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    data = f.data(b"linked content")
    pwned = f.data(b"PWNED")
    key = "7:1234"
    inner = f.tree([file_node("secret.txt", pwned, hardlink=key)])
    entries = [
        # a symlink to the outside secret carrying the hardlink key of the files below
        {**link_node("a", str(sandbox.secret)).encode(), "hardlink": key},
        # a duplicate of the symlink's name claiming to be the first file of the link group
        file_node("a", pwned, hardlink=key).encode(),
        file_node("b", data, hardlink=key).encode(),
        file_node("c", data, hardlink=key).encode(),
        # a directory hidden behind a symlink name, holding another member of the group
        link_node("d", str(sandbox.outside)).encode(),
        dir_node("d", inner).encode(),
        dir_node("e", inner).encode(),
        file_node("e/secret.txt", pwned, hardlink=key).encode(),
    ]
    res = restore(cli, sandbox, f.commit(f.raw_tree(entries)))
    assert res.returncode == 3, res.stderr
    t = sandbox.target
    assert os.readlink(t / "a") == str(sandbox.secret)
    assert (t / "b").read_bytes() == b"linked content"
    ino = (t / "b").stat().st_ino
    assert (t / "c").stat().st_ino == ino
    assert (t / "e" / "secret.txt").stat().st_ino == ino
    assert (t / "d").is_symlink()


def test_content_reference_outside_its_blob(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    ref = f.data(b"short blob")
    beyond = ContentRef(ref.blob_id, 0, ref.length + 10)
    res = restore(cli, sandbox, f.commit(f.tree([file_node("f", beyond)])))
    assert res.returncode == 1
    assert "content reference outside its blob" in res.stderr


def test_content_offset_outside_its_blob(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    ref = f.data(b"short blob")
    nodes = [
        file_node("f", ContentRef(ref.blob_id, 2**40, 1)),
        file_node("g", ContentRef(ref.blob_id, 2**62, 2**62)),
    ]
    res = restore(cli, sandbox, f.commit(f.tree(nodes)))
    assert res.returncode == 1
    assert "content reference outside its blob" in res.stderr


def test_content_reference_to_missing_blob(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    ghost = ContentRef(f.repo.keys.hasher()(b"never stored"), 0, 12)
    res = restore(cli, sandbox, f.commit(f.tree([file_node("f", ghost)])))
    assert res.returncode == 1
    assert "missing" in res.stderr


def test_tree_blob_encrypted_under_another_id(cli: Cli, sandbox: Sandbox) -> None:
    """A blob whose plaintext does not hash to its ID is refused even though it decrypts."""
    f = Forge(cli)
    pwned = f.data(b"PWNED")
    real = tree.encode_tree([file_node("ok", pwned)])
    fake = tree.encode_tree([file_node("other", pwned)])
    root = f.repo.keys.hasher()(real)
    f.repo.add_blob(root, BlobType.TREE, f.repo.codecs.get().encode(root, fake))
    f.ids.append(root)
    res = restore(cli, sandbox, f.commit(root))
    assert res.returncode == 1
    assert "does not match its ID" in res.stderr
    assert not (sandbox.target / "other").exists()


@pytest.mark.parametrize("which", ["tree", "data"])
def test_server_swaps_stored_blobs(cli: Cli, sandbox: Sandbox, which: str) -> None:
    """The index row of one blob is pointed at another blob's stored bytes."""
    f = Forge(cli)
    good = f.data(b"good data")
    evil = f.data(b"evil data")
    other_tree = f.tree([file_node("evil", evil)])
    root = f.tree([file_node("good", good)])
    snap_id = f.commit(root)
    victim, donor = (root, other_tree) if which == "tree" else (good.blob_id, evil.blob_id)
    db = sqlite3.connect(cli.repo / "index.sqlite")
    with db:
        donor_row = db.execute(
            "SELECT pack, offset, length, checksum FROM blobs WHERE blob_id=?", (donor,)
        ).fetchone()
        db.execute(
            "UPDATE blobs SET pack=?, offset=?, length=?, checksum=? WHERE blob_id=?",
            (*donor_row, victim),
        )
    db.close()
    res = restore(cli, sandbox, snap_id)
    assert res.returncode == 1
    assert "failed authentication" in res.stderr
    assert not (sandbox.target / "evil").exists()
    if (sandbox.target / "good").exists():
        assert (sandbox.target / "good").read_bytes() in (b"", b"good data")


def test_flipped_byte_in_pack_is_detected(cli: Cli, sandbox: Sandbox) -> None:
    """A pack damaged on the server's disk (checksum updated too) is refused, not restored."""
    f = Forge(cli)
    root = f.tree([file_node("f", f.data(b"important data" * 100))])
    snap_id = f.commit(root)
    packs = [p for p in (cli.repo / "packs").rglob("*") if p.is_file()]
    assert len(packs) == 1
    raw = bytearray(packs[0].read_bytes())
    raw[len(raw) // 2] ^= 0x40
    packs[0].write_bytes(bytes(raw))
    res = restore(cli, sandbox, snap_id)
    assert res.returncode == 1
    assert "damaged" in res.stderr


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_preexisting_symlink_in_target_is_not_followed(
    cli: Cli, sandbox: Sandbox, kind: str
) -> None:
    f = Forge(cli)
    pwned = f.data(b"PWNED")
    if kind == "dir":
        os.symlink(sandbox.outside, sandbox.target / "docs")
        root = f.tree([dir_node("docs", f.tree([file_node("secret.txt", pwned)]))])
    else:
        os.symlink(sandbox.secret, sandbox.target / "docs")
        root = f.tree([file_node("docs", pwned)])
    res = restore(cli, sandbox, f.commit(root))
    assert res.returncode == 1
    assert "docs" in res.stderr
    assert (sandbox.target / "docs").is_symlink()


def test_preexisting_symlink_deeper_in_target(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    pwned = f.data(b"PWNED")
    (sandbox.target / "a").mkdir()
    os.symlink(sandbox.outside / "sub", sandbox.target / "a" / "b")
    b = f.tree([file_node("x", pwned)])
    root = f.tree([dir_node("a", f.tree([dir_node("b", b)]))])
    res = restore(cli, sandbox, f.commit(root))
    assert res.returncode == 1


def test_target_that_is_a_symlink_is_resolved_once(cli: Cli, tmp_path: Path) -> None:
    """The target is the user's choice and may be a link to another disk: it is resolved once,
    and the snapshot's own entries still cannot climb out of the resolved folder."""
    f = Forge(cli)
    root = f.tree(
        [
            file_node("inside.txt", f.data(b"restored")),
            link_node("evil", "../elsewhere"),
        ]
    )
    snap_id = f.commit(root)
    real = tmp_path / "disk" / "real-target"
    real.mkdir(parents=True)
    (tmp_path / "disk" / "elsewhere").mkdir()
    link = tmp_path / "link-target"
    os.symlink(real, link)
    res = cli.run("restore", snap_id, "--target", str(link), check=False)
    assert res.returncode == 0, res.stderr
    assert (real / "inside.txt").read_bytes() == b"restored"
    assert os.readlink(real / "evil") == "../elsewhere"
    assert list((tmp_path / "disk" / "elsewhere").iterdir()) == []


def test_include_with_dotdot_does_not_escape(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    pwned = f.data(b"PWNED")
    root = f.tree([dir_node("d", f.tree([file_node("secret.txt", pwned)]))])
    snap_id = f.commit(root)
    for inc in ["../../../outside", "..", "d/../..", "/../outside/secret.txt"]:
        res = restore(cli, sandbox, snap_id, "--include", inc)
        assert res.returncode == 1, (inc, res.stdout, res.stderr)
        assert "nothing in the snapshot matches" in res.stderr


def test_special_files_with_hostile_names(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    entries: list[dict[str, Any]] = [
        Node(name="../fifo", type=tree.FIFO, mode=0o644).encode(),
        Node(name="../../dev", type=tree.CHARDEV, mode=0o644, device=0x0103).encode(),
        link_node("../../outside/link", "/etc/passwd").encode(),
        Node(name="fifo", type=tree.FIFO, mode=0o600).encode(),
    ]
    res = restore(cli, sandbox, f.commit(f.raw_tree(entries)))
    assert res.returncode == 3, res.stderr
    names = os.listdir(sandbox.target)
    if hasattr(os, "mkfifo"):
        assert names == ["fifo"]
        assert stat.S_ISFIFO((sandbox.target / "fifo").lstat().st_mode)


# ---- completeness: every planned blob arrives exactly once ---------------------------------------

BlobStream = Iterator[tuple[bytes, bytes]]
ReadBlobs = Callable[[LocalRepository, Iterable[bytes]], BlobStream]


def tamper_reads(
    monkeypatch: pytest.MonkeyPatch, tamper: Callable[[list[bytes], BlobStream], BlobStream]
) -> None:
    """Every repository opened in this process answers read_blobs through `tamper`: what a
    server that ends its stream early, repeats itself or sends extra blobs looks like."""
    original: ReadBlobs = LocalRepository.read_blobs

    def read_blobs(self: LocalRepository, blob_ids: Iterable[bytes]) -> BlobStream:
        asked = list(blob_ids)
        return tamper(asked, original(self, asked))

    monkeypatch.setattr(LocalRepository, "read_blobs", read_blobs)


def restore_in_process(cli: Cli, sandbox: Sandbox, snap_id: str, *extra: str) -> Result:
    """The real `strongroom restore` command, run in this process so a test can interfere."""
    sandbox.freeze()
    args = ["restore", snap_id, "--target", str(sandbox.target), *extra]
    res = CliRunner().invoke(strongroom_cli, args, env=cli.env)
    assert not isinstance(res.exception, AssertionError), res.exception
    out = Result(res.exit_code, res.stdout, res.stderr)
    assert "Traceback" not in out.stderr
    assert "internal error" not in out.stderr, out.stderr
    sandbox.assert_untouched()
    return out


def small_tree(f: Forge) -> tuple[str, set[bytes], set[bytes]]:
    """A snapshot with two folders and three files; returns its ID, data IDs and subtree IDs."""
    one, two, three = f.data(b"one" * 50), f.data(b"two" * 50), f.data(b"three" * 50)
    inner = f.tree([file_node("b.txt", two), file_node("c.txt", three)])
    root = f.tree([file_node("a.txt", one), dir_node("sub", inner), dir_node("empty", f.tree([]))])
    data_ids = {one.blob_id, two.blob_id, three.blob_id}
    return f.commit(root), data_ids, {inner}


@pytest.mark.parametrize("phase", ["data", "tree"])
def test_blob_never_received_fails_restore(
    cli: Cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    """A repository read that silently yields one blob fewer is an error, never exit code 0."""
    snap_id, data_ids, tree_ids = small_tree(Forge(cli))
    victims = data_ids if phase == "data" else tree_ids

    def drop_one(asked: list[bytes], stream: BlobStream) -> BlobStream:
        dropped = False
        for bid, stored in stream:
            if bid in victims and not dropped:
                dropped = True
                continue
            yield bid, stored

    tamper_reads(monkeypatch, drop_one)
    res = restore_in_process(cli, sandbox, snap_id)
    assert res.returncode == 1, res.stderr
    assert "restore incomplete: 1 blob(s) were not received from the repository" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_blob_received_twice_fails_restore(
    cli: Cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap_id, data_ids, _trees = small_tree(Forge(cli))

    def repeat_one(asked: list[bytes], stream: BlobStream) -> BlobStream:
        for bid, stored in stream:
            yield bid, stored
            if bid in data_ids:
                yield bid, stored

    tamper_reads(monkeypatch, repeat_one)
    res = restore_in_process(cli, sandbox, snap_id)
    assert res.returncode == 1, res.stderr
    assert "twice" in res.stderr


def test_blob_not_asked_for_fails_restore(
    cli: Cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid, decryptable blob of the same repository that the restore did not request."""
    f = Forge(cli)
    stray = f.data(b"not part of the snapshot")
    snap_id, data_ids, _trees = small_tree(f)
    repo = LocalRepository.open(cli.repo, PASSWORD.encode())
    stray_stored = next(iter(repo.read_blobs([stray.blob_id])))
    repo.close()

    def add_stray(asked: list[bytes], stream: BlobStream) -> BlobStream:
        yield from stream
        if data_ids & set(asked):
            yield stray_stored

    tamper_reads(monkeypatch, add_stray)
    res = restore_in_process(cli, sandbox, snap_id)
    assert res.returncode == 1, res.stderr
    assert "not asked for" in res.stderr


@pytest.mark.parametrize(
    ("tamper", "message"),
    [("drop", "restore incomplete"), ("repeat", "twice"), ("extra", "not asked for")],
)
def test_restorer_raises_integrity_error_for_any_repository(
    cli: Cli, tmp_path: Path, tamper: str, message: str
) -> None:
    """The check lives in the restorer, so it holds for any Repository implementation."""
    f = Forge(cli)
    stray = f.data(b"a valid blob of this repository, not in the snapshot")
    snap_id, data_ids, _trees = small_tree(f)
    repo = LocalRepository.open(cli.repo, PASSWORD.encode())
    original = repo.read_blobs
    extra = next(iter(original([stray.blob_id])))

    def read_blobs(blob_ids: Iterable[bytes]) -> BlobStream:
        items = list(original(blob_ids))
        if not data_ids & {bid for bid, _s in items}:
            yield from items
            return
        if tamper == "drop":
            items = items[1:]
        elif tamper == "repeat":
            items = [*items, items[0]]
        else:
            items = [*items, extra]
        yield from items

    repo.read_blobs = read_blobs  # type: ignore[method-assign]
    snap = next(s for s in load_snapshots(repo) if s.id == snap_id)
    try:
        with pytest.raises(IntegrityError, match=message):
            Restorer(repo).restore(snap, str(tmp_path / "out"))
    finally:
        repo.close()


# ---- a local user swaps a folder for a link while the restore runs -------------------------------

SWAPPED_UID = 4242  # the snapshot's owner of every file: a chown through the link would show


def owned_file(name: str, *refs: ContentRef) -> Node:
    node = file_node(name, *refs)
    node.uid = node.gid = SWAPPED_UID
    return node


def swap_for_link(sandbox: Sandbox, how: str) -> None:
    """What a local user who can write target/a does: target/a/b becomes a link to outside."""
    b = sandbox.target / "a" / "b"
    if how == "moved":
        os.rename(b, sandbox.target / "a" / "b.moved")
    else:
        shutil.rmtree(b)
    os.symlink(sandbox.outside, b)


def wait_for_piece(path: Path, pos: int, piece: bytes) -> None:
    deadline = time.monotonic() + 30
    while path.read_bytes()[pos : pos + len(piece)] != piece:
        assert time.monotonic() < deadline, "the first piece was never written"
        time.sleep(0.001)


@pytest.mark.parametrize("cache", [256, 1])  # the default, and a miss on every reopen
@pytest.mark.parametrize("how", ["moved", "removed"])
@pytest.mark.parametrize("when", ["before_writes", "between_blobs"])
def test_folder_swapped_for_link_during_restore(
    fd_cli: Cli,
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    cache: int,
    how: str,
    when: str,
) -> None:
    """Restore over an existing tree: target/a/b is checked by the planning walk, then replaced
    by a link to a folder outside, before the writes or between the two blobs of one file.
    Nothing may be written or chowned outside, and the restore must fail."""
    cli = fd_cli
    f = Forge(cli)
    first, second = f.data(b"1" * 5000), f.data(b"2" * 5000)
    single = f.data(b"single piece")
    sub = f.tree([owned_file("x", single)])
    b = f.tree(
        [
            owned_file("secret.txt", first, second),  # outside/secret.txt through the link
            owned_file("new.txt", single),
            dir_node("sub", sub),  # outside/sub/x through the link
        ]
    )
    snap_id = f.commit(f.tree([dir_node("a", f.tree([dir_node("b", b)]))]))
    (sandbox.target / "a" / "b").mkdir(parents=True)  # the existing tree restore goes over
    monkeypatch.setattr(restorer, "_DIR_FD_CACHE", cache, raising=False)
    data_ids = {first.blob_id, second.blob_id, single.blob_id}
    big_file = sandbox.target / "a" / "b" / "secret.txt"

    def swap_during_writes(asked: list[bytes], stream: BlobStream) -> BlobStream:
        if not data_ids & set(asked):
            yield from stream  # planning: reading trees
            return
        if when == "before_writes":
            swap_for_link(sandbox, how)
            yield from stream
            return
        swapped = False
        for bid, stored in stream:
            yield bid, stored
            if not swapped and bid in (first.blob_id, second.blob_id):
                # the restore has written this piece of secret.txt into target/a/b: swap now
                piece, pos = (b"1" * 5000, 0) if bid == first.blob_id else (b"2" * 5000, 5000)
                wait_for_piece(big_file, pos, piece)
                swap_for_link(sandbox, how)
                swapped = True

    tamper_reads(monkeypatch, swap_during_writes)
    res = restore_in_process(cli, sandbox, snap_id)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert f"{sandbox.target / 'a' / 'b'} was moved or replaced" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    # restore_in_process checked that the sandbox outside the target is unchanged, owners too
    assert (sandbox.target / "a" / "b").is_symlink()


def test_fallback_mode_is_chosen_when_dir_fd_is_missing(
    fd_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What PathsCli relies on: the platform check is read when a Restorer is made."""
    repo = LocalRepository.open(fd_cli.repo, PASSWORD.encode())
    try:
        assert Restorer(repo).uses_dir_fds
        monkeypatch.setattr(restorer, "DIR_FD_SUPPORTED", False)
        assert not Restorer(repo).uses_dir_fds
    finally:
        repo.close()


@pytest.mark.parametrize("cache", [1, 3])
def test_tiny_descriptor_cache_restores_exactly_and_leaks_nothing(
    fd_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: int
) -> None:
    """Far more folders than cached descriptors, files of many blobs, several writer threads:
    folders are re-opened from their ancestors all the time, and every descriptor is closed."""
    src = tmp_path / "src"
    for i in range(12):
        deep = src / f"d{i}" / "x" / f"y{i % 3}"
        deep.mkdir(parents=True)
        (deep / "f").write_bytes(f"file {i}".encode() * (i + 1))
        (src / f"d{i}" / "top").write_bytes(os.urandom(1000 * i))
    (src / "d3" / "x" / "big").write_bytes(os.urandom(5_000_000))  # many blobs
    (src / "d7" / "big").write_bytes(os.urandom(3_000_000))
    os.symlink("../d1/top", src / "d2" / "link")
    os.mkfifo(src / "d4" / "pipe")
    fd_cli.backup(src)
    monkeypatch.setattr(restorer, "_DIR_FD_CACHE", cache)
    target = tmp_path / "out"
    open_before = len(os.listdir("/proc/self/fd"))
    res = CliRunner().invoke(
        strongroom_cli, ["restore", "latest", "-t", str(target)], env=fd_cli.env
    )
    assert res.exit_code == 0, res.output
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert tree_state(target / "src") == tree_state(src)


# ---- existing folders owned by someone else --------------------------------------------------

FOREIGN_UID = 12345
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root"
)


@needs_root
@pytest.mark.parametrize("where", ["top", "deep", "target"])
def test_existing_folder_of_another_user_is_refused_unless_allowed(
    cli: Cli, sandbox: Sandbox, where: str
) -> None:
    """Root restoring over a tree of other users' folders: any of them could swap its folder
    for a link during the restore, so restore stops unless told that this is expected."""
    f = Forge(cli)
    pwned = f.data(b"restored")
    inner = f.tree([file_node("f.txt", pwned)])
    root = f.tree([dir_node("home", f.tree([dir_node("bob", inner)])), file_node("g.txt", pwned)])
    snap_id = f.commit(root)
    bob = sandbox.target / "home" / "bob"
    bob.mkdir(parents=True)
    foreign = {"top": bob.parent, "deep": bob, "target": sandbox.target}[where]
    os.chown(foreign, FOREIGN_UID, FOREIGN_UID)

    res = restore(cli, sandbox, snap_id)
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert f"{foreign} already exists and is owned by another user (uid {FOREIGN_UID})" in lines[0]
    assert "--allow-foreign-owners" in lines[0]
    assert os.listdir(bob) == []  # refused while planning: nothing was written
    assert os.stat(foreign).st_uid == FOREIGN_UID

    res = restore(cli, sandbox, snap_id, "--allow-foreign-owners")
    assert res.returncode == 0, res.stderr
    assert (bob / "f.txt").read_bytes() == b"restored"
    assert (sandbox.target / "g.txt").read_bytes() == b"restored"


@needs_root
def test_existing_folders_of_the_restoring_user_are_fine(cli: Cli, sandbox: Sandbox) -> None:
    f = Forge(cli)
    pwned = f.data(b"restored")
    snap_id = f.commit(f.tree([dir_node("d", f.tree([file_node("f.txt", pwned)]))]))
    (sandbox.target / "d").mkdir()
    res = restore(cli, sandbox, snap_id)
    assert res.returncode == 0, res.stderr
    assert (sandbox.target / "d" / "f.txt").read_bytes() == b"restored"


def test_restore_help_documents_allow_foreign_owners(cli: Cli) -> None:
    text = cli.run("restore", "--help").stdout
    assert "--allow-foreign-owners" in text
    assert "owned by another user" in " ".join(text.split())


# Root without the capabilities that bypass file permissions: modes are enforced as for a user.
NO_DAC_OVERRIDE = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


@needs_root
def test_restore_again_over_a_folder_without_read_permission(cli: Cli, tmp_path: Path) -> None:
    """Folders are looked up with O_PATH descriptors, which need no read permission: restoring
    again over a restored mode-0311 folder works as it did by path."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "f").write_bytes(b"inside")
    (src / "d").chmod(0o311)
    cli.backup(src)

    class Capless(type(cli)):  # type: ignore[misc]
        PREFIX = (*NO_DAC_OVERRIDE, *type(cli).PREFIX)

    capless = Capless(tmp_path)
    capless.env = cli.env
    target = tmp_path / "out"
    for attempt in range(2):
        res = capless.run("restore", "latest", "--target", str(target), check=False)
        assert res.returncode == 0, (attempt, res.stderr)
        assert "warning" not in res.stderr, (attempt, res.stderr)
    assert tree_state(target / "src") == tree_state(src)


def owners_of(root: Path) -> dict[Path, tuple[int, int]]:
    return {p.relative_to(root): (p.lstat().st_uid, p.lstat().st_gid) for p in root.rglob("*")}


def test_round_trip_and_restore_again_in_both_modes(cli: Cli, tmp_path: Path) -> None:
    """The descriptor code and the full-path fallback restore the same tree exactly, twice."""
    src = tmp_path / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep")
    (src / "a" / "empty").write_bytes(b"")
    (src / "a" / "big").write_bytes(os.urandom(3_000_000))
    os.link(src / "a" / "big", src / "a" / "b" / "big-link")
    os.symlink("../a/b", src / "a" / "up")
    os.mkfifo(src / "a" / "pipe")
    (src / "a" / "ro").write_bytes(b"read only")
    (src / "a" / "ro").chmod(0o444)
    (src / "a" / "b").chmod(0o555)
    os.utime(src / "a", ns=(10**18, 10**18))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(src / "a" / "b" / "c" / "deep.txt", 1234, 5678)
        os.chown(src / "a" / "up", 4321, 8765, follow_symlinks=False)
    try:
        cli.backup(src)
        target = tmp_path / "out"
        for attempt in range(2):
            res = cli.run("restore", "latest", "--target", str(target), check=False)
            assert res.returncode == 0, (attempt, res.stderr)
            assert tree_state(target / "src") == tree_state(src), attempt
            assert owners_of(target / "src") == owners_of(src), attempt
            restored = target / "src" / "a"
            assert (restored / "big").stat().st_ino == (restored / "b" / "big-link").stat().st_ino
    finally:
        (src / "a" / "b").chmod(0o755)
