"""How `ls -l` and `ls --json` show a node's extended attributes, ACLs, flags and holes."""

from __future__ import annotations

import base64
from typing import Any

from .. import tree
from ..fsattrs import acl_text, flag_string
from . import format as fmt
from .errors import display

_ACLS = {"system.posix_acl_access": "acl", "system.posix_acl_default": "default acl"}


def has_acl(node: tree.Node) -> bool:
    return any(pair[0] in _ACLS for pair in node.xattrs)


def long_suffix(node: tree.Node) -> str:
    """'  [flags ia; acl user::rw-,...; xattrs user.a; sparse: 1.0 MiB of data]', or ''."""
    parts = []
    if node.flags:
        parts.append(f"flags {flag_string(node.flags)}")
    others = []
    for name, value in node.xattr_values():
        label = _ACLS.get(name)
        text = acl_text(value) if label else None
        if label and text is not None:
            parts.append(f"{label} {text}")
        else:
            others.append(display(name))
    if others:
        parts.append("xattrs " + ", ".join(others))
    if node.holes:
        data = node.size - sum(length for _start, length in node.holes)
        parts.append(f"sparse: {fmt.size(data)} of data")
    return f"  [{'; '.join(parts)}]" if parts else ""


def json_fields(node: tree.Node) -> dict[str, Any]:
    """Keys added to an `ls --json` line, only those the node has."""
    out: dict[str, Any] = {}
    if node.flags:
        out["flags"] = flag_string(node.flags)
    if node.xattrs:
        values = node.xattr_values()
        out["xattrs"] = {display(n): base64.b64encode(v).decode("ascii") for n, v in values}
        acls = {n.rsplit("_", 1)[1]: acl_text(v) for n, v in values if n in _ACLS}
        if acls:
            out["acl"] = acls
    if node.holes:
        out["holes"] = [[start, length] for start, length in node.holes]
    return out
