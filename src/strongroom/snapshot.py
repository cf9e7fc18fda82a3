"""Snapshot records: encrypted descriptions of one backup, and how users name them."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import crypto
from .errors import IntegrityError, StrongroomError
from .padding import padme
from .store import SnapshotRow

SNAPSHOT_VERSION = 1
# Sealed records are padded (with spaces after the JSON, which JSON ignores) to a Padmé length,
# and to at least this many bytes, which a record of a few short paths does not reach: the
# server then cannot tell hosts, user names, paths or tags apart by their length.
RECORD_MIN_SIZE = 1024
_SEAL_OVERHEAD = crypto.NONCE_SIZE + crypto.TAG_SIZE


@dataclass
class Snapshot:
    id: str
    time_ns: int
    host: str
    username: str
    paths: list[str]
    tree: str  # hex root tree ID
    parent: str | None = None
    tags: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    # Set on copies made by `strongroom copy`: {"repo": source repository ID, "tree": source
    # root tree ID, "time_ns": when copied}. Left out of records that have none.
    origin: dict[str, Any] | None = None

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ns / 1e9, tz=UTC)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def series_of(hasher: crypto.BlobHasher, host: str, paths: list[str]) -> str:
    """Which series of backups a snapshot belongs to (same host, same paths), as a keyed hash:
    the server can group snapshots for retention without learning the host or the paths."""
    key = "\0".join([host, *sorted(paths)]).encode("utf-8", "surrogateescape")
    return hasher(b"strongroom v1 series\0" + key).hex()[:32]


def new_snapshot_id() -> str:
    return os.urandom(16).hex()


def _aad(snap_id: str) -> bytes:
    return b"strongroom v1 snapshot " + snap_id.encode("ascii")


def seal_snapshot(aead: AESGCM, snap: Snapshot) -> bytes:
    body = dict(asdict(snap), v=SNAPSHOT_VERSION)
    if body["origin"] is None:
        del body["origin"]  # records without one stay readable by older versions
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sealed = _SEAL_OVERHEAD + len(raw)
    padded = b"".join((raw, b" " * (max(RECORD_MIN_SIZE, padme(sealed)) - sealed)))
    return crypto.seal(aead, padded, _aad(snap.id))


def open_snapshot(aead: AESGCM, row: SnapshotRow) -> Snapshot:
    if not is_snapshot_id(row.snap_id):
        raise IntegrityError(f"snapshot row {row.snap_id[:8]!r} has a malformed ID")
    raw = crypto.unseal(aead, row.record, _aad(row.snap_id), f"snapshot {row.snap_id[:8]}")
    try:
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise TypeError("record is not an object")
        if obj.pop("v") != SNAPSHOT_VERSION:
            raise IntegrityError(f"snapshot {row.snap_id[:8]} has an unsupported version")
        # Fields a later version may add are ignored (the record is authenticated as a whole).
        snap = Snapshot(**{k: v for k, v in obj.items() if k in _FIELDS})
    except (ValueError, TypeError, KeyError) as exc:
        raise IntegrityError(f"snapshot {row.snap_id[:8]} is malformed") from exc
    if snap.id != row.snap_id:
        raise IntegrityError(f"snapshot {row.snap_id[:8]} was swapped with another")
    if snap.origin is not None and not isinstance(snap.origin, dict):
        raise IntegrityError(f"snapshot {row.snap_id[:8]} has a malformed origin")
    if not (isinstance(snap.tree, str) and len(snap.tree) == 64 and _is_hex(snap.tree)):
        raise IntegrityError(f"snapshot {row.snap_id[:8]} has a malformed tree ID")
    return snap


_FIELDS = frozenset(Snapshot.__dataclass_fields__)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def is_snapshot_id(text: str) -> bool:
    return isinstance(text, str) and len(text) == 32 and _is_hex(text)


def resolve(snapshots: list[Snapshot], spec: str) -> Snapshot:
    """Find a snapshot by 'latest' or a unique ID prefix."""
    if not snapshots:
        raise StrongroomError("the repository has no snapshots yet")
    if spec == "latest":
        return max(snapshots, key=lambda s: (s.time_ns, s.id))
    spec_l = spec.lower()
    if not spec_l:
        raise StrongroomError("give a snapshot ID (or 'latest')")
    matches = [s for s in snapshots if s.id.startswith(spec_l)]
    if not matches:
        raise StrongroomError(f"no snapshot matches '{spec}' (see 'strongroom snapshots')")
    if len(matches) > 1:
        raise StrongroomError(f"'{spec}' matches {len(matches)} snapshots; give more characters")
    return matches[0]
