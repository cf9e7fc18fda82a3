"""The archiver's stages on their own: scanner order, encoded entries, parent-tree prefetching."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import crypto, tree
from strongroom.archiver.blob_saver import BlobSaver
from strongroom.archiver.parent import ParentTrees
from strongroom.archiver.scanner import Scanner, signature
from strongroom.blobs import BlobType
from strongroom.errors import StrongroomError
from strongroom.fsmeta import entry_from_stat, node_from_stat, node_type
from strongroom.repository import LocalRepository
from strongroom.tree import ContentRef, Node

FAST_KDF = crypto.KdfParams(memory_kib=1024, iterations=1)


def make_tree(root: Path) -> None:
    (root / "b" / "deep" / "er").mkdir(parents=True)
    (root / "a").mkdir()
    (root / "a" / "f.txt").write_text("x")
    (root / "b" / "g").write_bytes(b"y" * 10)
    (root / "b" / "deep" / "h").write_bytes(b"")
    (root / "link").symlink_to("a/f.txt")
    os.link(root / "b" / "g", root / "b" / "g2")
    os.mkfifo(root / "fifo")


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks, FIFOs and hard links")
def test_scanner_lists_folders_before_their_subfolders_in_entry_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    scanner = Scanner([str(src)])
    try:
        assert [i[0] for i in scanner.root.items] == ["src"]
        order = []
        todo = [full for _n, full in reversed(scanner.root.subdirs)]
        while todo:
            path = todo.pop()
            listing = scanner.next(path)
            order.append(os.path.relpath(path, tmp_path))
            assert listing.own_sig == signature(listing.items)
            todo.extend(full for _n, full in reversed(listing.subdirs))
        assert order == ["src", "src/a", "src/b", "src/b/deep", "src/b/deep/er"]
        with pytest.raises(RuntimeError, match="scanner"):
            scanner.next(str(src / "nothing"))
    finally:
        scanner.stop()


def test_scanner_refuses_missing_and_clashing_roots(tmp_path: Path) -> None:
    with pytest.raises(StrongroomError, match="no such file"):
        Scanner([str(tmp_path / "missing")])
    (tmp_path / "x" / "same").mkdir(parents=True)
    (tmp_path / "y" / "same").mkdir(parents=True)
    with pytest.raises(StrongroomError, match="share the name"):
        Scanner([str(tmp_path / "x" / "same"), str(tmp_path / "y" / "same")])


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks, FIFOs and hard links")
def test_entries_from_stat_encode_exactly_as_nodes(tmp_path: Path) -> None:
    make_tree(tmp_path)
    nodes, entries = [], []
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        for name in dirnames + filenames:
            st_ = os.lstat(os.path.join(dirpath, name))
            kind = node_type(st_)
            assert kind is not None
            node, entry = node_from_stat(name, kind, st_), entry_from_stat(name, kind, st_)
            if kind == tree.DIR:
                node.subtree = entry["subtree"] = b"\1" * 32
                entry["subtree"] = node.subtree.hex()
            if kind == tree.SYMLINK:
                node.target = entry["target"] = "a/f.txt"
            assert entry == node.encode()
            assert list(entry) == list(node.encode())  # same key order: canonical JSON
            nodes.append(node)
            entries.append(entry)
    unique = {tree.name_key(n.name): i for i, n in enumerate(nodes)}
    keep = sorted(unique.values())
    assert tree.encode_entries([entries[i] for i in keep]) == tree.encode_tree(
        [nodes[i] for i in keep]
    )


names = st.binary(min_size=1, max_size=12).map(os.fsdecode).filter(lambda n: "/" not in n)
ids = st.binary(min_size=32, max_size=32)


@settings(max_examples=100, deadline=None)
@given(st.lists(names, min_size=1, max_size=8, unique_by=tree.name_key), ids)
def test_decode_entries_round_trips_encode_entries(unique: list[str], blob: bytes) -> None:
    nodes = [
        Node(name=n, type=tree.FILE, mode=0o644, size=3, content=[ContentRef(blob, 0, 3)])
        for n in unique
    ]
    raw = tree.encode_tree(nodes)
    entries = tree.decode_entries(raw)
    assert tree.encode_entries(list(entries.values())) == raw
    assert all(tree.entry_refs(e) == [blob] for e in entries.values())


def test_encode_entries_refuses_duplicate_names() -> None:
    e = {"ctime_ns": 0, "name": "a", "type": "fifo"}
    with pytest.raises(ValueError, match="duplicate"):
        tree.encode_entries([e, dict(e)])


def test_parent_trees_prefetched_or_not_give_the_same_trees(tmp_path: Path) -> None:
    repo = LocalRepository.init(tmp_path / "repo", b"pw", FAST_KDF)
    try:
        saver = BlobSaver(repo, set())
        raws = [
            tree.encode_tree([Node(name=f"n{i}", type=tree.FIFO, mtime_ns=i)]) for i in range(200)
        ]
        tids = [saver.save(BlobType.TREE, raw) for raw in raws]
        repo.flush()
        trees = ParentTrees(repo)
        trees.prefetch(tids[:150])
        # Asked for at once, while the loader may still hold them: no tree is lost or swapped.
        assert [trees.get(t).raw for t in tids] == raws
        assert trees.entries(None, print) == {}
        warnings: list[str] = []
        assert trees.entries(b"\7" * 32, warnings.append) == {}
        assert "unreadable" in warnings[0]
        trees.close()
    finally:
        repo.close()


json_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_fast_json_gives_the_canonical_bytes(doc: object) -> None:
    # orjson where it can, `json` otherwise: the bytes must always be those of `json`.
    canonical = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()
    assert tree.dumps(doc) == canonical
    assert tree.loads(canonical) == json.loads(canonical)


def test_fast_json_agrees_on_every_ascii_character() -> None:
    for code in range(128):
        doc = {"name": f"{chr(code)}x{chr(code)}", "n": [code, -code]}
        assert tree.dumps(doc) == json.dumps(doc, separators=(",", ":")).encode()
    surrogate = {"name": "\udc80\udcff"}  # a non-UTF-8 file name byte
    raw = tree.dumps(surrogate)
    assert raw == b'{"name":"\\udc80\\udcff"}'
    assert tree.loads(raw) == surrogate
