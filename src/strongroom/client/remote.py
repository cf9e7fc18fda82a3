"""A Repository that lives on a strongroom server: the engine's interface over the protocol.

Uploads are batched (~4 MiB per PutBlobs) and pipelined (up to 8 batches in flight, which also
bounds memory); reads are streamed in parts; a snapshot's manifest goes up in parts and the
commit is one request the server runs atomically after its blobs are durable.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .. import crypto
from ..blobs import CodecPool
from ..keys import RepoKeys, create_keyfile
from ..protocol import messages as m
from ..store import SnapshotRow
from .transport import Transport

BATCH_BYTES = 4 * 1024 * 1024
MAX_IN_FLIGHT = 8
IDS_PER_REQUEST = 16384


@dataclass(frozen=True)
class Account:
    """What the server told us at login."""

    user: str
    directory: str
    repo_id: str
    append_only: bool
    kdf: crypto.KdfParams


class RemoteRepository:
    def __init__(self, transport: Transport, keys: RepoKeys, account: Account) -> None:
        self.transport = transport
        self.keys = keys
        self.codecs = CodecPool(keys.aead(), keys.hasher())
        self.account = account
        self._batch: list[tuple[bytes, int, bytes]] = []
        self._batch_size = 0
        self._lock = threading.Lock()
        self._in_flight: deque[concurrent.futures.Future[m.Message]] = deque()
        self._sent = 0

    @property
    def repo_id(self) -> str:
        return self.account.repo_id

    @property
    def directory(self) -> str:
        return self.account.directory

    # ---- blobs ------------------------------------------------------------------------------

    def known_blob_ids(self) -> set[bytes]:
        out: set[bytes] = set()
        for part in self.transport.stream(m.ListIds()):
            assert isinstance(part, m.Ids)
            out.update(part.ids)
        return out

    def missing(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        ids = list(dict.fromkeys(blob_ids))
        futures = [
            self.transport.request(m.Have(ids[i : i + IDS_PER_REQUEST]))
            for i in range(0, len(ids), IDS_PER_REQUEST)
        ]
        out: set[bytes] = set()
        for fut in futures:
            answer = fut.result()
            assert isinstance(answer, m.Ids)
            out.update(answer.ids)
        return out

    def add_blob(self, blob_id: bytes, blob_type: int, stored: bytes) -> None:
        with self._lock:
            self._batch.append((blob_id, blob_type, stored))
            self._batch_size += len(stored) + 40
            if self._batch_size < BATCH_BYTES:
                return
            self._send_batch()
            oldest = self._in_flight.popleft() if len(self._in_flight) > MAX_IN_FLIGHT else None
        if oldest is not None:
            oldest.result()  # waits (bounded memory) and raises the server's error, e.g. quota

    def _send_batch(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_size = self._batch, [], 0
        self._sent += sum(len(b[2]) for b in batch)
        self._in_flight.append(self.transport.request(m.PutBlobs(batch)))

    def flush(self) -> None:
        with self._lock:
            self._send_batch()
            waiting, self._in_flight = list(self._in_flight), deque()
        for fut in waiting:
            fut.result()
        self.transport.call(m.Flush())

    def read_blobs(self, blob_ids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
        ids = list(dict.fromkeys(blob_ids))
        for i in range(0, len(ids), IDS_PER_REQUEST):
            for part in self.transport.stream(m.ReadBlobs(ids[i : i + IDS_PER_REQUEST])):
                assert isinstance(part, m.Blobs)
                for bid, _status, data in part.blobs:
                    yield bid, data

    def iter_all_blobs(self) -> Iterator[tuple[bytes, bool, bytes]]:
        """Every stored blob as (id, intact, bytes); the server marks checksum failures."""
        for part in self.transport.stream(m.ReadAll()):
            assert isinstance(part, m.Blobs)
            for bid, status, data in part.blobs:
                yield bid, status == m.BLOB_INTACT, data

    def storage_problems(self) -> list[str]:
        answer = self.transport.call(m.CheckStorage())
        assert isinstance(answer, m.Texts)
        return [f"server: {p}" for p in answer.items]

    def bytes_uploaded(self) -> int:
        return self._sent

    # ---- snapshots --------------------------------------------------------------------------

    def commit_snapshot(
        self,
        snap_id: str,
        time_ns: int,
        record: bytes,
        manifest: Iterable[bytes],
        series: str = "",
    ) -> None:
        self.flush()
        ids = list(set(manifest))
        parts = [
            self.transport.request(m.ManifestPart(ids[i : i + 65536]))
            for i in range(0, len(ids), 65536)
        ]
        commit = self.transport.request(m.Commit(snap_id, time_ns, record, series))
        for fut in parts:
            fut.result()
        commit.result()

    def snapshot_rows(self) -> list[SnapshotRow]:
        rows: list[SnapshotRow] = []
        for part in self.transport.stream(m.ListSnapshots()):
            assert isinstance(part, m.SnapshotRows)
            rows.extend(
                SnapshotRow(sid, t, rec, series, bool(prot))
                for sid, t, rec, series, prot in part.rows
            )
        return rows

    def snapshot_manifest(self, snap_id: str) -> set[bytes]:
        out: set[bytes] = set()
        for part in self.transport.stream(m.GetManifest(snap_id)):
            assert isinstance(part, m.Ids)
            out.update(part.ids)
        return out

    def set_protected(self, snap_id: str, protected: bool) -> bool:
        answer = self.transport.call(m.Protect(snap_id, int(protected)))
        assert isinstance(answer, m.Ok)
        return bool(answer.value)

    def prune(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Ask the server to collect this account's garbage now; returns its report."""
        answer = self.transport.call(m.Prune(int(dry_run)))
        assert isinstance(answer, m.Json)
        report: dict[str, Any] = json.loads(answer.text)
        return report

    def delete_snapshot(self, snap_id: str) -> bool:
        answer = self.transport.call(m.DeleteSnapshot(snap_id))
        assert isinstance(answer, m.Ok)
        return bool(answer.value)

    # ---- account ----------------------------------------------------------------------------

    def change_password(self, new_password: bytes) -> None:
        self.transport.call(m.SetKeyFile(new_keyfile(new_password, self.keys, self.account.kdf)))

    def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the connection may be gone
            self.transport.request(m.Bye()).result(2)
        self.transport.close()


def new_keyfile(password: bytes, keys: RepoKeys, kdf: crypto.KdfParams) -> bytes:
    """The key file for a new password: fresh salt, same keys (data stays readable)."""
    return create_keyfile(password, keys, kdf).to_json().encode()
