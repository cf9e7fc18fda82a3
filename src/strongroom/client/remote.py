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
from typing import Any, Generic, TypeVar

from .. import crypto
from ..blobs import CodecPool
from ..errors import IntegrityError, StrongroomError
from ..keys import KeyFile, RepoKeys, create_keyfile
from ..protocol import messages as m
from ..store import SnapshotRow
from .transport import Transport, expect

BATCH_BYTES = 4 * 1024 * 1024
MAX_IN_FLIGHT = 8
IDS_PER_REQUEST = 16384

P = TypeVar("P", m.Ids, m.Blobs, m.SnapshotRows)


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
        # Set by login(): the key file as the server now holds it, whether this login was an
        # admin reset, and whether the key file's verifier is this login's.
        self.keyfile: KeyFile | None = None
        self.reset = False
        self.keyfile_is_login = False

    @property
    def repo_id(self) -> str:
        return self.account.repo_id

    @property
    def directory(self) -> str:
        return self.account.directory

    # ---- blobs ------------------------------------------------------------------------------

    def known_blob_ids(self) -> set[bytes]:
        return self._id_set(m.ListIds(), "the list of stored blobs")

    def missing(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        ids = list(dict.fromkeys(blob_ids))
        futures = [
            self.transport.request(m.Have(ids[i : i + IDS_PER_REQUEST]))
            for i in range(0, len(ids), IDS_PER_REQUEST)
        ]
        out: set[bytes] = set()
        for fut in futures:
            answer = expect(fut.result(), m.Ids, "a HAVE request")
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
        """Stream the stored bytes of these blobs, in the server's order.

        The server is held to exactly what was asked: each request's answer must hold every
        requested blob once, intact, and nothing else, and its End must count what was sent.
        Anything else raises IntegrityError as soon as that request's answer has ended (a blob
        sent twice or unasked for, at once), so a restore that lost blobs never exits 0 with
        missing files or zero-filled holes. Memory: one set of at most IDS_PER_REQUEST IDs.
        """
        ids = list(dict.fromkeys(blob_ids))
        for i in range(0, len(ids), IDS_PER_REQUEST):
            yield from self._read_batch(ids[i : i + IDS_PER_REQUEST])

    def _read_batch(self, batch: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        pending = set(batch)
        answer = _Answer(self.transport, m.ReadBlobs(batch), m.Blobs, "a blob read")
        for part in answer:
            for bid, status, data in part.blobs:
                if bid not in pending:
                    how = "twice" if bid in batch else "that was not requested"
                    raise IntegrityError(f"server sent a wrong answer: blob {bid.hex()[:16]} {how}")
                if status != m.BLOB_INTACT:
                    raise IntegrityError(f"server reports blob {bid.hex()[:16]} as damaged")
                pending.discard(bid)
                yield bid, data
        if pending:
            raise IntegrityError(
                f"server sent an incomplete answer: {len(pending)} of {len(batch)} requested "
                f"blobs missing, e.g. {min(pending).hex()[:16]}"
            )
        answer.check_count()

    def iter_all_blobs(self) -> Iterator[tuple[bytes, bool, bytes]]:
        """Every stored blob as (id, intact, bytes); the server marks checksum failures.

        Held to the server's own list of stored blobs (taken first, on this connection): each
        listed blob must come exactly once, so `check --read-data` cannot be told "all intact"
        about blobs it never saw. Blobs stored or condemned since that list may come as well.
        Memory: one dict entry per stored blob (as for the list itself).
        """
        seen = dict.fromkeys(self.known_blob_ids(), False)
        listed = len(seen)
        answer = _Answer(self.transport, m.ReadAll(), m.Blobs, "the full read")
        for part in answer:
            for bid, status, data in part.blobs:
                if seen.get(bid):
                    raise IntegrityError(
                        f"server sent a wrong answer: blob {bid.hex()[:16]} twice in the full read"
                    )
                if status not in (m.BLOB_INTACT, m.BLOB_DAMAGED):
                    raise IntegrityError(f"server sent blob {bid.hex()[:16]} with status {status}")
                seen[bid] = True
                yield bid, status == m.BLOB_INTACT, data
        left_out = sum(1 for was_sent in seen.values() if not was_sent)
        if left_out:
            raise IntegrityError(
                f"server sent an incomplete answer: {left_out} of its {listed} stored blobs "
                "missing from the full read"
            )
        answer.check_count()

    def storage_problems(self) -> list[str]:
        answer = expect(self.transport.call(m.CheckStorage()), m.Texts, "CHECK_STORAGE")
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
        *,
        root: bytes | None = None,
    ) -> None:
        if root is None:
            raise ValueError("a server commit names its root tree")
        self.flush()
        ids = list(set(manifest))
        parts = [
            self.transport.request(m.ManifestPart(ids[i : i + 65536]))
            for i in range(0, len(ids), 65536)
        ]
        commit = self.transport.request(m.Commit(snap_id, time_ns, record, series, root))
        for fut in parts:
            fut.result()
        commit.result()

    def snapshot_rows(self) -> list[SnapshotRow]:
        """Every snapshot row; a row listed twice or an End that miscounts is an IntegrityError.
        (Each record is authenticated with its snapshot ID when opened, so a swapped record is
        caught there. A snapshot the server leaves out cannot be told from one never made.)"""
        rows: list[SnapshotRow] = []
        seen: set[str] = set()
        answer = _Answer(self.transport, m.ListSnapshots(), m.SnapshotRows, "the snapshot list")
        for part in answer:
            for row in part.rows:
                if row[0] in seen:
                    raise IntegrityError(
                        f"server sent a wrong answer: snapshot {row[0][:8]} listed twice"
                    )
                seen.add(row[0])
                rows.append(SnapshotRow(*row[:4], bool(row[4]), *row[5:]))
        answer.check_count()
        return rows

    def snapshot_manifest(self, snap_id: str) -> set[bytes]:
        return self._id_set(m.GetManifest(snap_id), f"the manifest of snapshot {snap_id[:8]}")

    def _id_set(self, request: m.Message, what: str) -> set[bytes]:
        """A streamed list of IDs (each ID's size is enforced by the codec) as a set; an ID
        listed twice or an End that miscounts is an IntegrityError."""
        out: set[bytes] = set()
        answer = _Answer(self.transport, request, m.Ids, what)
        for part in answer:
            before = len(out)
            out.update(part.ids)
            if len(out) - before != len(part.ids):
                raise IntegrityError(f"server sent a wrong answer: an ID twice in {what}")
        answer.check_count()
        return out

    def set_protected(self, snap_id: str, protected: bool) -> bool:
        answer = expect(self.transport.call(m.Protect(snap_id, int(protected))), m.Ok, "PROTECT")
        return bool(answer.value)

    def prune(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Ask the server to collect this account's garbage now; returns its report."""
        answer = expect(self.transport.call(m.Prune(int(dry_run))), m.Json, "PRUNE")
        try:
            report: Any = json.loads(answer.text)
        except ValueError:
            report = None
        if not isinstance(report, dict):
            raise IntegrityError("server sent a wrong answer to PRUNE: not a JSON object")
        return report

    def delete_snapshot(self, snap_id: str) -> bool:
        answer = expect(self.transport.call(m.DeleteSnapshot(snap_id)), m.Ok, "DELETE_SNAPSHOT")
        return bool(answer.value)

    # ---- account ----------------------------------------------------------------------------

    def report_failure(self, message: str) -> None:
        """Tell the server a backup failed before it got there (shown to the admin)."""
        raw = message.encode("utf-8", "replace")[: m.REPORT_LIMIT]
        text = raw.decode("utf-8", "ignore")  # a character cut in half is dropped
        expect(self.transport.call(m.ReportFailure(text)), m.Ok, "REPORT_FAILURE")

    def change_password(self, new_password: bytes) -> None:
        """New salt and wrapping for the new password; the recovery wrapping is kept."""
        recovery = self.keyfile.recovery if self.keyfile else None
        self._send_keyfile(
            create_keyfile(new_password, self.keys, self.account.kdf, recovery=recovery)
        )

    def set_recovery(self, wrapped: bytes | None) -> None:
        """Replace (or with None remove) the recovery wrapping; the password's is sent back
        unchanged, which an append-only account may do (docs/PROTOCOL.md)."""
        if self.keyfile is None or not self.keyfile_is_login:
            raise StrongroomError(
                "this account's key file is not the one your password logs in with; run "
                "'strongroom passwd' first"
            )
        self._send_keyfile(self.keyfile.with_recovery(wrapped))

    def _send_keyfile(self, keyfile: KeyFile) -> None:
        answer = self.transport.call(m.SetKeyFile(keyfile.to_json().encode()), 60)
        expect(answer, m.Ok, "SET_KEYFILE")
        self.keyfile = keyfile
        self.keyfile_is_login = True

    def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the connection may be gone
            self.transport.request(m.Bye()).result(2)
        self.transport.close()


class _Answer(Generic[P]):
    """One streamed answer, held to the protocol: every part is of the expected type and the
    closing End counts exactly the items received (call `check_count` after iterating).

    Iterating stops at End; an Error or a lost connection raises from the transport. A part of
    another type raises IntegrityError at once (never an assert: the server is not trusted).
    """

    def __init__(self, transport: Transport, request: m.Message, part: type[P], what: str) -> None:
        self._stream = transport.stream(request, end=True)
        self._part: type[P] = part
        self.what = what
        self.received = 0
        self.end_count: int | None = None

    def __iter__(self) -> Iterator[P]:
        for msg in self._stream:
            if isinstance(msg, m.End):
                self.end_count = msg.count
                return
            if not isinstance(msg, self._part):
                raise IntegrityError(
                    f"server sent a wrong answer: {m.describe(msg)} in {self.what}"
                )
            self.received += _items(msg)
            yield msg

    def check_count(self) -> None:
        if self.end_count != self.received:
            raise IntegrityError(
                f"server sent an inconsistent answer: {self.what} announced {self.end_count} "
                f"item(s) but held {self.received}"
            )


def _items(part: m.Ids | m.Blobs | m.SnapshotRows) -> int:
    if isinstance(part, m.Ids):
        return len(part.ids)
    if isinstance(part, m.Blobs):
        return len(part.blobs)
    return len(part.rows)
