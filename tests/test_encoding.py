"""Property tests for the formats restore trusts least: trees, names, snapshot records."""

from __future__ import annotations

import json
import ntpath
import os
import posixpath

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from strongroom import snapshot, tree
from strongroom.errors import IntegrityError, StrongroomError
from strongroom.keys import RepoKeys
from strongroom.pathsafe import is_safe_name, split_include
from strongroom.store import SnapshotRow
from strongroom.tree import ContentRef, Node

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- trees -----------------------------------------------------------------------------------

# Names as the archiver makes them: filesystem bytes decoded with surrogateescape.
fs_names = st.binary(min_size=1, max_size=24).map(os.fsdecode)
ids = st.binary(min_size=32, max_size=32)
u64 = st.integers(min_value=0, max_value=2**64)
any_int = st.integers(min_value=-(2**63), max_value=2**64)
refs = st.builds(ContentRef, ids, u64, u64)


@st.composite
def nodes(draw: st.DrawFn, name: st.SearchStrategy[str] = fs_names) -> Node:
    kind = draw(st.sampled_from(sorted(tree.TYPES)))
    common = {
        "name": draw(name),
        "type": kind,
        "mode": draw(any_int),
        "mtime_ns": draw(any_int),
        "ctime_ns": draw(any_int),
        "inode": draw(u64),
        "uid": draw(u64),
        "gid": draw(u64),
        "hardlink": draw(st.none() | st.text(max_size=20)),
    }
    if kind == tree.FILE:
        return Node(**common, size=draw(u64), content=draw(st.lists(refs, max_size=5)))
    if kind == tree.DIR:
        return Node(**common, subtree=draw(ids))
    if kind == tree.SYMLINK:
        return Node(**common, target=draw(fs_names | st.text()))
    return Node(**common, device=draw(u64))


def unique_by_fs_name(ns: list[Node]) -> list[Node]:
    seen: dict[bytes, Node] = {}
    for n in ns:
        seen.setdefault(tree.name_key(n.name), n)
    return list(seen.values())


node_lists = st.lists(nodes(), max_size=12).map(unique_by_fs_name)


@FAST
@given(node_lists)
def test_tree_round_trip(ns: list[Node]) -> None:
    raw = tree.encode_tree(ns)
    back = tree.decode_tree(raw)
    assert back == sorted(ns, key=lambda n: tree.name_key(n.name))
    assert raw.isascii()
    assert tree.encode_tree(back) == raw  # canonical: re-encoding changes nothing


@FAST
@given(st.data(), node_lists)
def test_tree_encoding_is_order_independent(data: st.DataObject, ns: list[Node]) -> None:
    shuffled = data.draw(st.permutations(ns))
    assert tree.encode_tree(shuffled) == tree.encode_tree(ns)


def test_non_utf8_names_survive_byte_for_byte() -> None:
    raw_names = [b"\xff\xfe", b"caf\xc3\xa9", b"caf\xe9", b"\x80", b"a\xed\xa0\x80b"]
    ns = [Node(name=os.fsdecode(b), type=tree.FIFO) for b in raw_names]
    back = tree.decode_tree(tree.encode_tree(ns))
    assert sorted(os.fsencode(n.name) for n in back) == sorted(raw_names)


def test_encode_refuses_duplicate_names() -> None:
    with pytest.raises(ValueError):
        tree.encode_tree([Node(name="a", type=tree.FIFO), Node(name="a", type=tree.SOCKET)])


def test_encode_refuses_names_that_are_the_same_on_disk() -> None:
    """'é' and '\\udcc3\\udca9' differ as str but are both b'\\xc3\\xa9' on a POSIX disk: the
    encoding would depend on input order, and restore would write one path twice."""
    if os.name == "nt":
        pytest.skip("Windows names are UTF-16")
    pair = [Node(name="é", type=tree.FIFO), Node(name="\udcc3\udca9", type=tree.SOCKET)]
    with pytest.raises(ValueError):
        tree.encode_tree(pair)
    with pytest.raises(ValueError):
        tree.encode_tree(pair[::-1])


def _decode_only_integrity_errors(raw: bytes) -> None:
    try:
        result = tree.decode_tree(raw)
    except IntegrityError:
        return
    for node in result:  # whatever decodes is well-typed
        assert isinstance(node.name, str)
        assert node.type in tree.TYPES
        assert all(r.offset >= 0 and r.length >= 0 for r in node.content)
        assert all(type(r.offset) is int and type(r.length) is int for r in node.content)
        if node.type == tree.DIR:
            assert node.subtree is not None and len(node.subtree) == 32


@FAST
@given(st.binary(max_size=300))
@example(b"[" * 100_000)
@example(b'{"v":1,"entries":' + b"[" * 100_000)
@example(b'{"v":1,"entries":[{"name":"a","type":"file","size":' + b"9" * 5000 + b"}]}")
@example(
    b'{"v":1,"entries":[{"name":"a","type":"file","content":[["' + b"0" * 64 + b'",true,1]]}]}'
)
@example(b'{"v":1,"entries":[{"name":"a","type":"dir"}]}')
@example(b'{"v":1,"entries":[{"name":"a","type":"symlink"}]}')
@example(b'{"v":1,"entries":[{"name":"a","type":"file","mode":1e999}]}')
@example(b'{"v":1,"entries":[{"name":"a","type":"file","mode":NaN}]}')
@example(b"\xef\xbb\xbf{}")
@example(b"\xff\xfe\x00\x00")
def test_decode_arbitrary_bytes(raw: bytes) -> None:
    _decode_only_integrity_errors(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)
entry_like = st.fixed_dictionaries(
    {"name": st.text(max_size=5) | json_values, "type": st.sampled_from(sorted(tree.TYPES))},
    optional={
        k: json_values | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
        for k in [
            *("mode", "size", "content", "subtree", "target", "device", "hardlink", "uid"),
            *("xattrs", "flags", "holes"),
        ]
    },
)


@FAST
@given(st.lists(entry_like | json_values, max_size=4), st.sampled_from([1, 1.0, True, 2, "1"]))
def test_decode_structured_garbage(entries: list[object], version: object) -> None:
    raw = json.dumps({"v": version, "entries": entries}).encode()
    _decode_only_integrity_errors(raw)


@FAST
@given(node_lists.filter(bool), st.data())
def test_decode_truncated_or_mutated(ns: list[Node], data: st.DataObject) -> None:
    raw = tree.encode_tree(ns)
    cut = data.draw(st.integers(0, len(raw) - 1))
    _decode_only_integrity_errors(raw[:cut])
    pos = data.draw(st.integers(0, len(raw) - 1))
    byte = data.draw(st.integers(0, 255))
    _decode_only_integrity_errors(raw[:pos] + bytes([byte]) + raw[pos + 1 :])
    insert = data.draw(st.binary(min_size=1, max_size=8))
    _decode_only_integrity_errors(raw[:pos] + insert + raw[pos:])


# ---- names -----------------------------------------------------------------------------------

tricky_chars = st.sampled_from([*"./\\:\0 ab.C$¹\u202e", "\udcff", "\ud800", "..", "CON"])
names = (
    st.text(st.characters(codec=None, exclude_categories=[]), max_size=12)
    | st.lists(tricky_chars, max_size=8).map("".join)
    | st.binary(max_size=12).map(os.fsdecode)
)

UNSAFE_EVERYWHERE = [
    "",
    ".",
    "..",
    "../x",
    "../../etc/x",
    "/abs",
    "a/b",
    "/",
    "x\0",
    "\0",
]
UNSAFE_ON_WINDOWS = [
    "..\\x",
    "C:\\x",
    "C:x",
    "C:",
    "\\x",
    "\\\\server\\share",
    "a:stream",
    "...",
    ".. ",
    "x.",
    "x ",
    "CON",
    "con",
    "Con.txt",
    "NUL.tar.gz",
    "aux",
    "COM1",
    "lpt9.log",
    "CON .txt",
    "COM¹",
    "LPT³.txt",
    "CONIN$",
    "conout$",
]


@pytest.mark.parametrize("name", UNSAFE_EVERYWHERE)
def test_unsafe_names(name: str) -> None:
    assert not is_safe_name(name, windows=False)
    assert not is_safe_name(name, windows=True)
    assert not is_safe_name(name)


@pytest.mark.parametrize("name", UNSAFE_ON_WINDOWS)
def test_unsafe_windows_names(name: str) -> None:
    assert not is_safe_name(name, windows=True)


@pytest.mark.parametrize("name", ["a", "..a", "a..b", ".hidden", "CONSOLE", "COM10", "con_x", "é"])
def test_safe_names(name: str) -> None:
    assert is_safe_name(name, windows=False)
    assert is_safe_name(name, windows=True)


def test_names_the_filesystem_cannot_encode_are_unsafe() -> None:
    if os.name == "nt":
        pytest.skip("Windows names are UTF-16: lone surrogates are representable")
    assert not is_safe_name("\ud800", windows=False)
    assert is_safe_name(os.fsdecode(b"\xff"), windows=False)


POSIX_BASE = "/srv/restore/target"
WINDOWS_BASES = ["C:\\Users\\me\\target", "\\\\server\\share\\target", "D:\\"]


@settings(max_examples=300, deadline=None)
@given(names)
def test_safe_name_stays_inside_base(name: str) -> None:
    if is_safe_name(name, windows=False):
        joined = posixpath.normpath(posixpath.join(POSIX_BASE, name))
        assert posixpath.dirname(joined) == POSIX_BASE
        assert posixpath.basename(joined) == name
    if is_safe_name(name, windows=True):
        assert is_safe_name(name, windows=False)
        assert ntpath.splitdrive(name)[0] == ""
        assert not ntpath.isabs(name)
        # Windows drops trailing dots and spaces; a safe name has none to drop.
        assert name.rstrip(" .") == name
        for base in WINDOWS_BASES:
            joined = ntpath.normpath(ntpath.join(base, name))
            assert ntpath.dirname(joined) == ntpath.normpath(base)
            assert ntpath.basename(joined) == name
            assert joined.startswith(ntpath.normpath(base))


@FAST
@given(names | st.lists(tricky_chars | st.sampled_from(["/", "\\"]), max_size=10).map("".join))
def test_split_include(path: str) -> None:
    parts = split_include(path)
    for p in parts:
        assert p not in ("", ".")
        assert "/" not in p and "\\" not in p
    assert split_include("/".join(parts)) == parts
    assert split_include("\\".join(parts)) == parts
    assert split_include(path.replace("\\", "/")) == parts
    assert split_include("./" + path + "/") == parts


def test_split_include_examples() -> None:
    assert split_include("home/me/docs") == ("home", "me", "docs")
    assert split_include("/home//me/./docs/") == ("home", "me", "docs")
    assert split_include("home\\me\\docs") == ("home", "me", "docs")
    assert split_include("") == ()


# ---- snapshot records ------------------------------------------------------------------------

snap_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
snapshots = st.builds(
    snapshot.Snapshot,
    id=snap_ids,
    time_ns=st.integers(0, 2**63),
    host=st.text(max_size=20),
    username=st.text(max_size=20),
    paths=st.lists(fs_names, max_size=3),
    tree=st.binary(min_size=32, max_size=32).map(bytes.hex),
    parent=st.none() | snap_ids,
    tags=st.lists(st.text(max_size=8), max_size=3),
    excludes=st.lists(st.text(max_size=8), max_size=3),
    stats=st.dictionaries(st.text(max_size=8), st.integers(0, 2**64), max_size=4),
)
AEAD = RepoKeys.generate().aead()
OTHER_AEAD = RepoKeys.generate().aead()


@FAST
@given(snapshots)
def test_snapshot_record_round_trip(snap: snapshot.Snapshot) -> None:
    record = snapshot.seal_snapshot(AEAD, snap)
    assert snapshot.open_snapshot(AEAD, SnapshotRow(snap.id, snap.time_ns, record)) == snap


@FAST
@given(snapshots, snap_ids)
def test_snapshot_record_under_wrong_id_fails(snap: snapshot.Snapshot, other: str) -> None:
    assume(other != snap.id)
    record = snapshot.seal_snapshot(AEAD, snap)
    with pytest.raises(IntegrityError):
        snapshot.open_snapshot(AEAD, SnapshotRow(other, snap.time_ns, record))
    with pytest.raises(IntegrityError):
        snapshot.open_snapshot(OTHER_AEAD, SnapshotRow(snap.id, snap.time_ns, record))


@FAST
@given(snapshots, st.data())
def test_snapshot_record_tampering_fails(snap: snapshot.Snapshot, data: st.DataObject) -> None:
    record = bytearray(snapshot.seal_snapshot(AEAD, snap))
    pos = data.draw(st.integers(0, len(record) - 1))
    record[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(IntegrityError):
        snapshot.open_snapshot(AEAD, SnapshotRow(snap.id, snap.time_ns, bytes(record)))


def test_snapshot_swapped_by_server_is_detected() -> None:
    """Same key, valid record, but filed under another snapshot's ID by the server."""
    a = snapshot.Snapshot(snapshot.new_snapshot_id(), 1, "h", "u", ["/p"], "00" * 32)
    b = snapshot.Snapshot(snapshot.new_snapshot_id(), 2, "h", "u", ["/p"], "11" * 32)
    rec_a = snapshot.seal_snapshot(AEAD, a)
    with pytest.raises(IntegrityError):
        snapshot.open_snapshot(AEAD, SnapshotRow(b.id, b.time_ns, rec_a))


def _snap(snap_id: str, time_ns: int = 0) -> snapshot.Snapshot:
    return snapshot.Snapshot(snap_id, time_ns, "h", "u", [], "00" * 32)


@FAST
@given(st.lists(st.tuples(snap_ids, st.integers(0, 10)), min_size=1, max_size=8), st.data())
def test_resolve_prefixes(items: list[tuple[str, int]], data: st.DataObject) -> None:
    snaps = list({i: _snap(i, t) for i, t in items}.values())
    chosen = data.draw(st.sampled_from(snaps))
    n = data.draw(st.integers(1, len(chosen.id)))
    prefix = chosen.id[:n]
    owners = [s for s in snaps if s.id.startswith(prefix)]
    spec = data.draw(st.sampled_from([prefix, prefix.upper()]))
    if len(owners) == 1:
        assert snapshot.resolve(snaps, spec) is chosen
    else:
        with pytest.raises(StrongroomError, match="give more characters"):
            snapshot.resolve(snaps, spec)
    assert snapshot.resolve(snaps, chosen.id) is chosen
    latest = snapshot.resolve(snaps, "latest")
    assert latest.time_ns == max(s.time_ns for s in snaps)
    assert latest.id == max(s.id for s in snaps if s.time_ns == latest.time_ns)


@pytest.mark.parametrize("spec", ["zz", "latest2", "LATEST ", "g", "0" * 33])
def test_resolve_no_match(spec: str) -> None:
    snaps = [_snap("ab" * 16), _snap("cd" * 16)]
    with pytest.raises(StrongroomError, match="no snapshot matches"):
        snapshot.resolve(snaps, spec)


def test_resolve_empty_repository() -> None:
    with pytest.raises(StrongroomError, match="no snapshots"):
        snapshot.resolve([], "latest")
