"""Reading snapshots without restoring: listing (ls) and comparing (diff)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from . import tree
from .errors import StrongroomError
from .pathsafe import split_include
from .repository import Repository
from .tree import Node


def load_tree_raw(repo: Repository, tree_id: bytes) -> bytes:
    """A tree blob's verified plaintext."""
    codec = repo.codecs.get()
    for bid, stored in repo.read_blobs([tree_id]):
        return codec.decode(bid, stored)
    raise StrongroomError(f"tree {tree_id.hex()[:16]} is missing")


def load_tree(repo: Repository, tree_id: bytes) -> list[Node]:
    return tree.decode_tree(load_tree_raw(repo, tree_id))


def walk(repo: Repository, tree_id: bytes, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """Yield (snapshot path, node) depth-first in name order; paths start with '/'."""
    stack: list[Iterator[tuple[str, Node]]] = [
        iter([(f"{prefix}/{n.name}", n) for n in load_tree(repo, tree_id)])
    ]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        path, node = item
        yield path, node
        if node.type == tree.DIR and node.subtree is not None:
            stack.append(iter([(f"{path}/{n.name}", n) for n in load_tree(repo, node.subtree)]))


def find_subtree(repo: Repository, root: bytes, path: str) -> tuple[str, Node | None, bytes]:
    """Resolve a snapshot path to (normalised path, node, tree to list)."""
    parts = split_include(path)
    current = root
    node: Node | None = None
    for i, part in enumerate(parts):
        match = next((n for n in load_tree(repo, current) if n.name == part), None)
        if match is None:
            raise StrongroomError(f"path /{'/'.join(parts[: i + 1])} is not in the snapshot")
        node = match
        if match.type == tree.DIR and match.subtree is not None:
            current = match.subtree
        elif i != len(parts) - 1:
            raise StrongroomError(f"/{'/'.join(parts[: i + 1])} is not a folder")
    return ("/" + "/".join(parts)) if parts else "", node, current


@dataclass
class Change:
    kind: str  # "+", "-", "M", "T" (type changed)
    path: str
    node: Node


def diff(repo: Repository, old_root: bytes, new_root: bytes) -> Iterator[Change]:
    """Yield changes in path order; identical subtrees are skipped without being read."""
    stack: list[tuple[bytes | None, bytes | None, str]] = [(old_root, new_root, "")]
    while stack:
        a, b, base = stack.pop()
        if a == b:
            continue
        old = {n.name: n for n in load_tree(repo, a)} if a else {}
        new = {n.name: n for n in load_tree(repo, b)} if b else {}
        later: list[tuple[bytes | None, bytes | None, str]] = []
        for name in sorted(old.keys() | new.keys(), key=tree.name_key):
            path = f"{base}/{name}"
            o, n = old.get(name), new.get(name)
            if o is None and n is not None:
                yield Change("+", path, n)
                if n.type == tree.DIR:
                    later.append((None, n.subtree, path))
            elif n is None and o is not None:
                yield Change("-", path, o)
                if o.type == tree.DIR:
                    later.append((o.subtree, None, path))
            elif o is not None and n is not None:
                if o.type != n.type:
                    yield Change("T", path, n)
                    later.append(
                        (
                            o.subtree if o.type == tree.DIR else None,
                            n.subtree if n.type == tree.DIR else None,
                            path,
                        )
                    )
                elif n.type == tree.DIR:
                    if _meta_changed(o, n):  # not its mtime: that follows its entries
                        yield Change("M", path, n)
                    if o.subtree != n.subtree:
                        later.append((o.subtree, n.subtree, path))
                elif _content_changed(o, n):
                    yield Change("M", path, n)
        stack.extend(reversed(later))


def _content_changed(a: Node, b: Node) -> bool:
    return (
        a.content != b.content
        or a.size != b.size
        or a.holes != b.holes
        or a.mtime_ns != b.mtime_ns
        or a.target != b.target
        or _meta_changed(a, b)
    )


def _meta_changed(a: Node, b: Node) -> bool:
    """Metadata only: an xattr, ACL or flag change alone is a modification."""
    return (
        a.mode != b.mode
        or a.uid != b.uid
        or a.gid != b.gid
        or a.xattrs != b.xattrs
        or a.flags != b.flags
    )
