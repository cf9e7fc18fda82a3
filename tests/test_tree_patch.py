"""replace_subtrees must give byte-for-byte what encode_tree gives for the same nodes."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import tree
from strongroom.tree import ContentRef, Node

names = st.binary(min_size=1, max_size=12).map(os.fsdecode).filter(lambda n: "/" not in n)
ids = st.binary(min_size=32, max_size=32)


@st.composite
def folders(draw: st.DrawFn) -> list[Node]:
    unique = draw(st.lists(names, min_size=1, max_size=8, unique_by=tree.name_key))
    nodes = []
    for name in unique:
        if draw(st.booleans()):
            nodes.append(Node(name=name, type=tree.DIR, mode=0o755, subtree=draw(ids)))
        else:
            refs = [ContentRef(draw(ids), 0, draw(st.integers(0, 2**20)))]
            nodes.append(Node(name=name, type=tree.FILE, mode=0o644, size=1, content=refs))
    return nodes


@settings(max_examples=200, deadline=None)
@given(folders(), st.data())
def test_replace_subtrees_matches_a_fresh_encoding(nodes: list[Node], data: st.DataObject) -> None:
    raw = tree.encode_tree(nodes)
    new_ids = {n.name: data.draw(ids) for n in nodes if n.type == tree.DIR}
    for n in nodes:
        if n.type == tree.DIR:
            n.subtree = new_ids[n.name]
    assert tree.replace_subtrees(raw, new_ids) == tree.encode_tree(nodes)


def test_replace_subtrees_refuses_a_different_set_of_folders() -> None:
    nodes = [Node(name="a", type=tree.DIR, subtree=b"\1" * 32)]
    raw = tree.encode_tree(nodes)
    assert tree.replace_subtrees(raw, {"b": b"\2" * 32}) is None
    assert tree.replace_subtrees(raw, {}) is None
