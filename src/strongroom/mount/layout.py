"""The top of the mounted tree: which name each snapshot gets, and the folders that group them.

    snapshots/<time>/...          one folder per snapshot, its backed-up paths inside
    latest -> snapshots/<time>    the newest snapshot
    tags/<tag>/<time> -> ../../snapshots/<time>
    hosts/<host>/<time> -> ../../snapshots/<time>
    ids/<snapshot ID> -> ../snapshots/<time>

A snapshot's name is its local time with the UTC offset (`2026-12-03T19:09:17+01:00`, as restic
names them), so names sort in time order and do not repeat when the clocks go back. Two
snapshots in the same second: the older one (by time in ns, then ID) keeps the plain name, the
others get `-<short ID>`, so a name, once given, stays with its snapshot as new ones arrive.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import blake3

from ..snapshot import Snapshot

GROUPS = ("tags", "hosts")
TOP = ("snapshots", "latest", "tags", "hosts", "ids")
NAME_MAX = 255  # bytes, as most Linux file systems allow


def time_name(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns // 1_000_000_000).astimezone().isoformat()


def component(text: str) -> str:
    """A tag or host name as one safe path component: '%', '/' and NUL percent-escaped, '.',
    '..' and '' escaped, and over-long names shortened with a hash (still unique)."""
    out = text.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    if out in ("", ".", ".."):
        out = out.replace(".", "%2E") or "%"
    if len(os.fsencode(out)) > NAME_MAX:
        digest = blake3.blake3(os.fsencode(out)).hexdigest()[:16]
        keep = out[: NAME_MAX - 17]
        while len(os.fsencode(keep)) > NAME_MAX - 17:  # multi-byte characters
            keep = keep[:-1]
        out = f"{keep}~{digest}"
    return out


@dataclass
class Layout:
    """The names of one list of snapshots, and the groups they fall into."""

    by_name: dict[str, Snapshot] = field(default_factory=dict)
    name_of: dict[str, str] = field(default_factory=dict)  # snapshot ID -> name
    groups: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # tags/hosts
    latest: str | None = None

    @staticmethod
    def build(snapshots: Iterable[Snapshot]) -> Layout:
        out = Layout(groups={g: defaultdict(list) for g in GROUPS})
        for snap in sorted(snapshots, key=lambda s: (s.time_ns, s.id)):
            name = time_name(snap.time_ns)
            if name in out.by_name:
                name = f"{name}-{snap.short_id}"
                if name in out.by_name:  # the same short ID too: the full one is unique
                    name = f"{time_name(snap.time_ns)}-{snap.id}"
            out.by_name[name] = snap
            out.name_of[snap.id] = name
            out.latest = name
            for tag in dict.fromkeys(snap.tags):
                out.groups["tags"][component(tag)].append(name)
            out.groups["hosts"][component(snap.host)].append(name)
        out.groups = {g: dict(members) for g, members in out.groups.items()}
        return out
