"""Tree blobs: one directory listing, encoded deterministically.

Determinism is what makes an unchanged directory produce the same tree ID, so incremental
backups upload nothing for it. Encoding: canonical JSON (sorted keys, no whitespace), entries
sorted by the name's filesystem bytes. Names are stored as str decoded with the filesystem
encoding and surrogateescape, so non-UTF-8 names survive byte for byte (json escapes lone
surrogates as \\udcXX).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import IntegrityError
from .fsattrs import decode_pairs
from .sparse import valid as sparse_valid

try:  # a compiled JSON codec for the trees of the backup's hot path; `json` is the fallback
    import msgspec as _msgspec

    _ENCODE = _msgspec.json.Encoder().encode
    _DECODE = _msgspec.json.Decoder().decode
except ImportError:  # pragma: no cover - the tests compare both encoders
    _msgspec = None  # type: ignore[assignment]

# Version 1 trees are what every version of strongroom reads. A tree with a sparse file is
# written as version 2: its entries' content skips the holes, which an older reader would
# restore as a shorter, shifted file, so it must refuse the tree instead. Every other new
# key (xattrs, flags) is optional and may be ignored, so those trees stay version 1.
TREE_VERSION = 1
TREE_VERSION_SPARSE = 2
VERSIONS = frozenset({TREE_VERSION, TREE_VERSION_SPARSE})

# Entry types
FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
FIFO = "fifo"
SOCKET = "socket"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
TYPES = frozenset({FILE, DIR, SYMLINK, FIFO, SOCKET, CHARDEV, BLOCKDEV})


class ContentRef(NamedTuple):
    """A slice of a blob: the whole blob when offset == 0 and length == the blob's size."""

    blob_id: bytes
    offset: int
    length: int

    def encode(self) -> list[Any]:
        return [self.blob_id.hex(), self.offset, self.length]

    @staticmethod
    def decode(raw: Any) -> ContentRef:
        if not (isinstance(raw, list) and len(raw) == 3):
            raise IntegrityError("tree has a malformed content reference")
        blob_hex, offset, length = raw
        offset, length = _int(offset), _int(length)
        if offset < 0 or length < 0:
            raise IntegrityError("tree has a malformed content reference")
        return ContentRef(_unhex(blob_hex), offset, length)


@dataclass(slots=True)
class Node:
    """One directory entry with the metadata we back up and restore."""

    name: str
    type: str
    mode: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0  # with inode: how an unchanged file is recognised without reading it
    inode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    content: list[ContentRef] = field(default_factory=list)
    subtree: bytes | None = None  # tree ID for directories
    target: str | None = None  # symlink target
    device: int = 0  # rdev for device nodes
    hardlink: str | None = None  # "dev:ino" shared by entries that are hard links of each other
    # Extended attributes as stored: [[name, base64 value], ...] sorted by the name's bytes.
    xattrs: list[list[str]] = field(default_factory=list)
    flags: int = 0  # Linux file flags (chattr), only those a user may set
    holes: list[tuple[int, int]] = field(default_factory=list)  # (offset, length), sorted

    def xattr_values(self) -> list[tuple[str, bytes]]:
        return decode_pairs(self.xattrs) or []

    def encode(self) -> dict[str, Any]:
        # Keys are inserted in sorted order so the encoder need not sort them (speed) and
        # the output is canonical.
        out: dict[str, Any] = {}
        if self.type == FILE:
            out["content"] = [[r.blob_id.hex(), r.offset, r.length] for r in self.content]
        out["ctime_ns"] = self.ctime_ns
        if self.device:
            out["device"] = self.device
        if self.flags:
            out["flags"] = self.flags
        out["gid"] = self.gid
        if self.hardlink is not None:
            out["hardlink"] = self.hardlink
        if self.holes:
            out["holes"] = [[start, length] for start, length in self.holes]
        out["inode"] = self.inode
        out["mode"] = self.mode
        out["mtime_ns"] = self.mtime_ns
        out["name"] = self.name
        if self.type == FILE:
            out["size"] = self.size
        if self.subtree is not None:
            out["subtree"] = self.subtree.hex()
        if self.target is not None:
            out["target"] = self.target
        out["type"] = self.type
        out["uid"] = self.uid
        if self.xattrs:
            out["xattrs"] = self.xattrs
        return out

    @staticmethod
    def decode(raw: Any) -> Node:
        if not isinstance(raw, dict):
            raise IntegrityError("tree entry is not an object")
        try:
            node = Node(
                name=_str(raw["name"]),
                type=_str(raw["type"]),
                mode=_int(raw.get("mode", 0)),
                mtime_ns=_int(raw.get("mtime_ns", 0)),
                ctime_ns=_int(raw.get("ctime_ns", 0)),
                inode=_int(raw.get("inode", 0)),
                uid=_int(raw.get("uid", 0)),
                gid=_int(raw.get("gid", 0)),
                size=_int(raw.get("size", 0)),
                content=[ContentRef.decode(r) for r in _list(raw.get("content", []))],
                subtree=_unhex(raw["subtree"]) if "subtree" in raw else None,
                target=_str(raw["target"]) if "target" in raw else None,
                device=_int(raw.get("device", 0)),
                hardlink=_str(raw["hardlink"]) if "hardlink" in raw else None,
                flags=_int(raw.get("flags", 0)),
            )
        except KeyError as exc:
            raise IntegrityError(f"tree entry lacks {exc}") from None
        if "xattrs" in raw:
            if decode_pairs(raw["xattrs"]) is None:
                raise IntegrityError("tree entry has malformed extended attributes")
            node.xattrs = raw["xattrs"]
        if "holes" in raw:
            node.holes = [_extent(h) for h in _list(raw["holes"])]
            if node.type != FILE or not sparse_valid(node.holes, node.size):
                raise IntegrityError("tree entry has malformed holes")
        if node.type not in TYPES:
            raise IntegrityError("tree entry has an unknown type")
        if node.type == DIR and node.subtree is None:
            raise IntegrityError("directory entry has no subtree")
        if node.type == SYMLINK and node.target is None:
            raise IntegrityError("symlink entry has no target")
        return node


def name_key(name: str) -> bytes:
    return os.fsencode(name) if os.name != "nt" else name.encode("utf-8", "surrogatepass")


def encode_tree(nodes: list[Node]) -> bytes:
    ordered = sorted(nodes, key=lambda n: name_key(n.name))
    for prev, cur in itertools.pairwise(ordered):
        if name_key(prev.name) == name_key(cur.name):  # same on disk, so same name
            raise ValueError(f"duplicate name in tree: {cur.name!r}")
    entries = [n.encode() for n in ordered]
    return dumps({"entries": entries, "v": version_for(entries)})


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def dumps(doc: Any) -> bytes:
    """Canonical JSON: what `json` gives with compact separators and ensure_ascii.

    msgspec (compiled) is about 10x faster and gives the same bytes whenever its output is
    printable ASCII (it writes DEL and non-ASCII characters raw, where `json` escapes them, and
    refuses lone surrogates); anything else goes through `json`. tests/test_archiver_stages.py
    checks that both agree.
    """
    if _msgspec is not None:
        try:
            out = _ENCODE(doc)
        except (TypeError, ValueError, _msgspec.EncodeError):  # UnicodeEncodeError: surrogates
            pass
        else:
            if out.isascii() and b"\x7f" not in out:
                return out
    return _ENCODER.encode(doc).encode()


def loads(raw: bytes) -> Any:
    """`json.loads`, through msgspec when it can (it refuses lone surrogates: then `json`)."""
    if _msgspec is not None:
        try:
            return _DECODE(raw)
        except _msgspec.DecodeError:
            pass
    return json.loads(raw)


# The backup's hot path works on entries in their encoded form (`Node.encode()` dicts, keys in
# canonical order) instead of Node objects: an unchanged file of a changed folder is then
# copied from the parent's tree without being decoded into a Node and encoded again.
Entry = dict[str, Any]


def encode_entries(entries: list[Entry]) -> bytes:
    """What `encode_tree` gives for the nodes these `Node.encode()` dicts describe."""
    names = [e["name"] for e in entries]
    if os.name == "nt" or (_UTF8_NAMES and not _ESCAPED_BYTE.search("".join(names))):
        # Without escaped bytes, code point order is the order of the encoded names (UTF-8
        # keeps it), and equal names are equal bytes: sort by the names themselves.
        order = sorted(range(len(entries)), key=names.__getitem__)
        keys: list[str] | list[bytes] = [names[i] for i in order]
    else:
        order = sorted(range(len(entries)), key=lambda i: name_key(names[i]))
        keys = [name_key(names[i]) for i in order]
    for i in range(1, len(keys)):
        if keys[i] == keys[i - 1]:
            raise ValueError(f"duplicate name in tree: {names[order[i]]!r}")
    ordered = [entries[i] for i in order]
    return dumps({"entries": ordered, "v": version_for(ordered)})


def version_for(entries: list[Entry]) -> int:
    """The lowest tree version that describes these entries (see TREE_VERSION)."""
    return TREE_VERSION_SPARSE if any("holes" in e for e in entries) else TREE_VERSION


# Optional keys that travel with a file's content, and the attributes of any entry: both are
# copied from the parent snapshot's entry when that is reused.
CONTENT_KEYS = ("content", "holes", "size", "target")
ATTR_KEYS = ("flags", "xattrs")


def put(entry: Entry, key: str, value: Any) -> None:
    """Set a key of an encoded entry, keeping the sorted key order the encoder relies on."""
    if key in entry or not entry or key > next(reversed(entry)):
        entry[key] = value
        return
    entry[key] = value
    items = sorted(entry.items())
    entry.clear()
    entry.update(items)


def copy_keys(dst: Entry, src: Entry, keys: tuple[str, ...]) -> None:
    """Those of `keys` that `src` has, into `dst` (in canonical order)."""
    for key in keys:
        if key in src:
            put(dst, key, src[key])


# A byte that was not valid UTF-8 in a POSIX file name (os.fsdecode's surrogateescape).
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_UTF8_NAMES = sys.getfilesystemencoding().lower().replace("-", "") == "utf8"


def decode_entries(raw: bytes) -> dict[str, Entry]:
    """A tree's entries by name, as encoded dicts: only the checks the backup relies on (the
    blob is authenticated; `decode_tree` is the full validation)."""
    try:
        doc = loads(raw)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError("tree blob is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("v") not in VERSIONS:
        raise IntegrityError("tree blob has an unsupported version")
    out: dict[str, Entry] = {}
    for e in _list(doc.get("entries")):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise IntegrityError("tree entry is not an object")
        if e.get("type") not in TYPES:
            raise IntegrityError("tree entry has an unknown type")
        out[e["name"]] = e
    return out


def entry_subtree(entry: Entry) -> bytes | None:
    """An encoded folder entry's subtree ID (None if it has none or a malformed one)."""
    raw = entry.get("subtree")
    if not isinstance(raw, str) or len(raw) != 64:
        return None
    try:
        return bytes.fromhex(raw)
    except ValueError:
        return None


def entry_refs(entry: Entry) -> list[bytes]:
    """The blob IDs an encoded file entry's content references (checked)."""
    out = []
    for ref in _list(entry.get("content", [])):
        out.append(ContentRef.decode(ref).blob_id)
    return out


def replace_subtrees(raw: bytes, subtrees: dict[str, bytes]) -> bytes | None:
    """The same tree with new subtree IDs for its folders, encoded exactly as encode_tree would.

    Returns None unless the tree's folders are exactly the names in `subtrees`. The key order of
    the decoded objects is the canonical one, so re-encoding them stays canonical.
    """
    try:
        doc = loads(raw)
        entries = doc["entries"]
        dirs = [e for e in entries if e.get("type") == DIR]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IntegrityError("tree blob is malformed") from None
    if len(dirs) != len(subtrees) or doc.get("v") not in VERSIONS:
        return None
    for e in dirs:
        new = subtrees.get(e.get("name"))
        if new is None:
            return None
        e["subtree"] = new.hex()
    return dumps(doc)


def decode_tree(raw: bytes) -> list[Node]:
    try:
        doc = loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise IntegrityError("tree blob is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("v") not in VERSIONS:
        raise IntegrityError("tree blob has an unsupported version")
    return [Node.decode(e) for e in _list(doc.get("entries"))]


def _unhex(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise IntegrityError("tree has a malformed blob ID")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise IntegrityError("tree has a malformed blob ID") from None


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise IntegrityError("tree has a malformed number")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise IntegrityError("tree has a malformed string")
    return value


def _extent(value: Any) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2):
        raise IntegrityError("tree entry has malformed holes")
    return _int(value[0]), _int(value[1])


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise IntegrityError("tree has a malformed list")
    return value
