"""Every protocol message, its type code and its fields (see docs/PROTOCOL.md).

A message is a frozen dataclass whose `FIELDS` give the wire order and kind of each field;
`encode` and `decode` work from that table, so adding a message is one class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .codec import (
    BYTES,
    ID,
    ID_SIZE,
    IDS,
    U8,
    U16,
    U64,
    Kind,
    ProtocolError,
    Reader,
    Writer,
    list_of,
    text,
    tuple_of,
)

MAGIC = b"STRONGRM"
PROTOCOL_VERSION = 2

NAME_LIMIT = 256
PATH_LIMIT = 64 * 1024
MESSAGE_LIMIT = 4096
REPORT_LIMIT = 300


class ErrorCode:
    BAD_REQUEST = 1
    UNSUPPORTED_VERSION = 2
    NOT_LOGGED_IN = 3
    AUTH_FAILED = 4
    NOT_FOUND = 5
    QUOTA_EXCEEDED = 6
    DISK_FULL = 7
    MISSING_BLOBS = 8
    FORBIDDEN = 9
    BUSY = 10
    SERVER_ERROR = 11
    PASSWORD_CHANGE_REQUIRED = 12
    TIMEOUT = 13
    ACCOUNT_GONE = 14
    DAMAGED = 15
    RATE_LIMITED = 16  # too many commits, snapshots or failed logins: retry later
    SESSION_ENDED = 17  # the account's password, keys or append-only flag changed: log in again


class Message:
    TYPE: ClassVar[int]
    FIELDS: ClassVar[tuple[tuple[str, Kind], ...]] = ()

    def encode(self, w: Writer) -> None:
        for name, kind in self.FIELDS:
            kind.write(w, getattr(self, name))

    @classmethod
    def decode(cls, r: Reader) -> Message:
        values = {name: kind.read(r) for name, kind in cls.FIELDS}
        r.end()
        return cls(**values)


# ---- client -> server ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    TYPE = 1
    FIELDS = (("version", U16), ("client", text(NAME_LIMIT)))
    version: int
    client: str

    # The magic is checked by `decode`, so a stray connection (HTTP, a port scanner) is told
    # apart from a client of the wrong version.
    def encode(self, w: Writer) -> None:
        w.raw(MAGIC)
        super().encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Message:
        if r.raw(len(MAGIC)) != MAGIC:
            raise ProtocolError("not a strongroom client (bad magic)")
        return super().decode(r)


@dataclass(frozen=True)
class AuthParamsRequest(Message):
    TYPE = 2
    FIELDS = (("user", text(NAME_LIMIT)),)
    user: str


@dataclass(frozen=True)
class Login(Message):
    TYPE = 3
    FIELDS = (("user", text(NAME_LIMIT)), ("auth_key", BYTES))
    user: str
    auth_key: bytes


@dataclass(frozen=True)
class SetKeyFile(Message):
    """The user's own password change: a new key file (salt, KDF, wrapped keys, verifier)."""

    TYPE = 4
    FIELDS = (("keyfile", BYTES),)
    keyfile: bytes


@dataclass(frozen=True)
class ListIds(Message):
    TYPE = 5


@dataclass(frozen=True)
class Have(Message):
    """Which of these blob IDs does the server lack? Answered with `Ids` (the missing ones)."""

    TYPE = 6
    FIELDS = (("ids", IDS),)
    ids: list[bytes]


@dataclass(frozen=True)
class PutBlobs(Message):
    TYPE = 7
    FIELDS = (("blobs", list_of(tuple_of(ID, U8, BYTES), ID_SIZE + 5)),)
    blobs: list[tuple[bytes, int, bytes]]  # (blob_id, blob type, stored bytes)


@dataclass(frozen=True)
class Flush(Message):
    TYPE = 8


@dataclass(frozen=True)
class ManifestPart(Message):
    """Part of the manifest of the snapshot about to be committed on this connection."""

    TYPE = 9
    FIELDS = (("ids", IDS),)
    ids: list[bytes]


@dataclass(frozen=True)
class Commit(Message):
    TYPE = 10
    FIELDS = (
        ("snap_id", text(NAME_LIMIT)),
        ("time_ns", U64),
        ("record", BYTES),
        ("series", text(NAME_LIMIT)),
        ("root", ID),
    )
    snap_id: str
    time_ns: int
    record: bytes
    series: str  # keyed hash of host + paths: groups snapshots for retention
    root: bytes  # the root tree's ID: must be a stored tree in the manifest


@dataclass(frozen=True)
class ListSnapshots(Message):
    TYPE = 11


@dataclass(frozen=True)
class DeleteSnapshot(Message):
    TYPE = 12
    FIELDS = (("snap_id", text(NAME_LIMIT)),)
    snap_id: str


@dataclass(frozen=True)
class ReadBlobs(Message):
    """Stream these blobs back (in the server's storage order), as `Blobs` parts then `End`."""

    TYPE = 13
    FIELDS = (("ids", IDS),)
    ids: list[bytes]


@dataclass(frozen=True)
class GetManifest(Message):
    TYPE = 14
    FIELDS = (("snap_id", text(NAME_LIMIT)),)
    snap_id: str


@dataclass(frozen=True)
class ReadAll(Message):
    """Stream every stored blob, marking those whose server-side checksum fails (check)."""

    TYPE = 15


@dataclass(frozen=True)
class CheckStorage(Message):
    """Ask the server to compare its packs with its index (sizes, presence)."""

    TYPE = 16


@dataclass(frozen=True)
class Bye(Message):
    TYPE = 17


@dataclass(frozen=True)
class Protect(Message):
    """Protect a snapshot from every forget (1), or remove the protection (0)."""

    TYPE = 18
    FIELDS = (("snap_id", text(NAME_LIMIT)), ("protected", U8))
    snap_id: str
    protected: int


@dataclass(frozen=True)
class Prune(Message):
    """Run garbage collection on this user's storage now; answered with a Json report."""

    TYPE = 19
    FIELDS = (("dry_run", U8),)
    dry_run: int = 0


@dataclass(frozen=True)
class ReportFailure(Message):
    """A backup failed before it could reach the server (a scheduled run that found the
    server unreachable, a folder missing...): the admin's view shows "failed", not only
    "stale". The text is the client's one-line error, without file names."""

    TYPE = 20
    FIELDS = (("message", text(REPORT_LIMIT)),)
    message: str


# ---- server -> client ------------------------------------------------------------------------


@dataclass(frozen=True)
class Welcome(Message):
    TYPE = 64
    FIELDS = (("version", U16), ("server", text(NAME_LIMIT)))
    version: int
    server: str


@dataclass(frozen=True)
class AuthParams(Message):
    TYPE = 65
    FIELDS = (
        ("salt", BYTES),
        ("memory_kib", U64),
        ("iterations", U16),
        ("lanes", U16),
    )
    salt: bytes
    memory_kib: int
    iterations: int
    lanes: int


LOGIN_MUST_CHANGE_PASSWORD = 1
LOGIN_APPEND_ONLY = 2


@dataclass(frozen=True)
class LoginOk(Message):
    TYPE = 66
    FIELDS = (
        ("flags", U8),
        ("directory", text(PATH_LIMIT)),
        ("keyfile", BYTES),
        ("repo_id", text(NAME_LIMIT)),
    )
    flags: int
    directory: str
    keyfile: bytes  # empty until the user first chooses their own password
    repo_id: str


@dataclass(frozen=True)
class Ok(Message):
    TYPE = 67
    FIELDS = (("value", U64),)
    value: int = 0


@dataclass(frozen=True)
class Ids(Message):
    TYPE = 68
    FIELDS = (("ids", IDS),)
    ids: list[bytes]


@dataclass(frozen=True)
class Blobs(Message):
    TYPE = 69
    # (blob_id, status, stored bytes); status 0 = intact, 1 = damaged (bytes are empty)
    FIELDS = (("blobs", list_of(tuple_of(ID, U8, BYTES), ID_SIZE + 5)),)
    blobs: list[tuple[bytes, int, bytes]]


@dataclass(frozen=True)
class SnapshotRows(Message):
    TYPE = 70
    FIELDS = (
        ("rows", list_of(tuple_of(text(NAME_LIMIT), U64, BYTES, text(NAME_LIMIT), U8, U64), 29)),
    )
    # id, client's time, record, series, protected, time the server received it
    rows: list[tuple[str, int, bytes, str, int, int]]


@dataclass(frozen=True)
class End(Message):
    """Ends a streamed answer; `count` is how many items were sent."""

    TYPE = 71
    FIELDS = (("count", U64),)
    count: int


@dataclass(frozen=True)
class Error(Message):
    TYPE = 72
    FIELDS = (("code", U16), ("message", text(MESSAGE_LIMIT)))
    code: int
    message: str


@dataclass(frozen=True)
class Texts(Message):
    TYPE = 73
    FIELDS = (("items", list_of(text(MESSAGE_LIMIT), 4)),)
    items: list[str]


@dataclass(frozen=True)
class Json(Message):
    """A structured report (e.g. of a garbage collection), as a JSON object."""

    TYPE = 74
    FIELDS = (("text", text(1024 * 1024)),)
    text: str


BLOB_INTACT = 0
BLOB_DAMAGED = 1

REQUESTS: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        AuthParamsRequest,
        Login,
        SetKeyFile,
        ListIds,
        Have,
        PutBlobs,
        Flush,
        ManifestPart,
        Commit,
        ListSnapshots,
        DeleteSnapshot,
        ReadBlobs,
        GetManifest,
        ReadAll,
        CheckStorage,
        Bye,
        Protect,
        Prune,
        ReportFailure,
    )
}
RESPONSES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Welcome,
        AuthParams,
        LoginOk,
        Ok,
        Ids,
        Blobs,
        SnapshotRows,
        End,
        Error,
        Texts,
        Json,
    )
}


def encode_payload(msg: Message) -> list[bytes]:
    w = Writer()
    msg.encode(w)
    return w.parts


def decode_message(table: dict[int, type[Message]], msg_type: int, payload: bytes) -> Message:
    cls = table.get(msg_type)
    if cls is None:
        raise ProtocolError(f"unknown message type {msg_type}")
    try:
        return cls.decode(Reader(payload))
    except (TypeError, ValueError) as exc:  # e.g. a field that fails its dataclass
        raise ProtocolError(f"malformed {cls.__name__}: {exc}") from None


def describe(msg: Message) -> str:
    """A log-safe name for a message: its type only, never its fields (they may be secret)."""
    return type(msg).__name__
