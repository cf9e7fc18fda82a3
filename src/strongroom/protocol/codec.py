"""Binary field encoding for protocol messages: big-endian integers and length-prefixed data.

Decoding never trusts a length: every count and size is checked against the bytes that are
actually left before anything is allocated, so a hostile frame cannot make the server reserve
memory it did not send.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

ID_SIZE = 32

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class ProtocolError(Exception):
    """The peer sent something that is not valid protocol; the connection cannot go on."""


class Reader:
    __slots__ = ("_buf", "_pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self._buf = memoryview(data)
        self._pos = 0

    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, n: int) -> memoryview:
        if n < 0 or n > self.remaining():
            raise ProtocolError("message is truncated")
        view = self._buf[self._pos : self._pos + n]
        self._pos += n
        return view

    def _unpack(self, st: struct.Struct) -> int:
        value: int = st.unpack(self._take(st.size))[0]
        return value

    def u8(self) -> int:
        return self._unpack(_U8)

    def u16(self) -> int:
        return self._unpack(_U16)

    def u32(self) -> int:
        return self._unpack(_U32)

    def u64(self) -> int:
        return self._unpack(_U64)

    def raw(self, n: int) -> bytes:
        return bytes(self._take(n))

    def blob(self) -> bytes:
        return self.raw(self.u32())

    def text(self, limit: int) -> str:
        n = self.u32()
        if n > limit:
            raise ProtocolError(f"text field longer than {limit} bytes")
        try:
            return self.raw(n).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("text field is not valid UTF-8") from None

    def count(self, min_item_size: int) -> int:
        n = self.u32()
        if n * max(min_item_size, 1) > self.remaining():
            raise ProtocolError("list is longer than the message")
        return n

    def end(self) -> None:
        if self.remaining():
            raise ProtocolError("message has trailing bytes")


class Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self.parts.append(_U8.pack(v))

    def u16(self, v: int) -> None:
        self.parts.append(_U16.pack(v))

    def u32(self, v: int) -> None:
        self.parts.append(_U32.pack(v))

    def u64(self, v: int) -> None:
        self.parts.append(_U64.pack(v))

    def raw(self, data: bytes) -> None:
        self.parts.append(data)

    def blob(self, data: bytes) -> None:
        self.parts.append(_U32.pack(len(data)))
        self.parts.append(data)

    def text(self, s: str) -> None:
        self.blob(s.encode("utf-8"))


# ---- field kinds: each knows how to write and read one value ----------------------------------


class Kind:
    def write(self, w: Writer, value: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, r: Reader) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class _U8Kind(Kind):
    def write(self, w: Writer, value: int) -> None:
        w.u8(value)

    def read(self, r: Reader) -> int:
        return r.u8()


class _U16Kind(Kind):
    def write(self, w: Writer, value: int) -> None:
        w.u16(value)

    def read(self, r: Reader) -> int:
        return r.u16()


class _U32Kind(Kind):
    def write(self, w: Writer, value: int) -> None:
        w.u32(value)

    def read(self, r: Reader) -> int:
        return r.u32()


class _U64Kind(Kind):
    def write(self, w: Writer, value: int) -> None:
        w.u64(value)

    def read(self, r: Reader) -> int:
        return r.u64()


class _BytesKind(Kind):
    def write(self, w: Writer, value: bytes) -> None:
        w.blob(value)

    def read(self, r: Reader) -> bytes:
        return r.blob()


class _FixedKind(Kind):
    def __init__(self, size: int) -> None:
        self.size = size

    def write(self, w: Writer, value: bytes) -> None:
        if len(value) != self.size:
            raise ValueError(f"expected {self.size} bytes, got {len(value)}")
        w.raw(value)

    def read(self, r: Reader) -> bytes:
        return r.raw(self.size)


class _TextKind(Kind):
    def __init__(self, limit: int) -> None:
        self.limit = limit

    def write(self, w: Writer, value: str) -> None:
        data = value.encode("utf-8")
        if len(data) > self.limit:
            raise ValueError(f"text longer than {self.limit} bytes")
        w.blob(data)

    def read(self, r: Reader) -> str:
        return r.text(self.limit)


class _ListKind(Kind):
    def __init__(self, item: Kind, min_size: int) -> None:
        self.item = item
        self.min_size = min_size

    def write(self, w: Writer, value: Sequence[Any]) -> None:
        w.u32(len(value))
        for v in value:
            self.item.write(w, v)

    def read(self, r: Reader) -> list[Any]:
        return [self.item.read(r) for _ in range(r.count(self.min_size))]


class _TupleKind(Kind):
    def __init__(self, *items: Kind) -> None:
        self.items = items

    def write(self, w: Writer, value: Sequence[Any]) -> None:
        if len(value) != len(self.items):
            raise ValueError("tuple has the wrong length")
        for kind, v in zip(self.items, value, strict=True):
            kind.write(w, v)

    def read(self, r: Reader) -> tuple[Any, ...]:
        return tuple(kind.read(r) for kind in self.items)


class _IdListKind(Kind):
    """A list of 32-byte IDs, encoded as one count and one run of bytes (fast both ways)."""

    def write(self, w: Writer, value: Sequence[bytes]) -> None:
        for v in value:
            if len(v) != ID_SIZE:
                raise ValueError("IDs are 32 bytes")
        w.u32(len(value))
        w.raw(b"".join(value))

    def read(self, r: Reader) -> list[bytes]:
        n = r.count(ID_SIZE)
        raw = r.raw(n * ID_SIZE)
        return [raw[i : i + ID_SIZE] for i in range(0, len(raw), ID_SIZE)]


U8: Kind = _U8Kind()
U16: Kind = _U16Kind()
U32: Kind = _U32Kind()
U64: Kind = _U64Kind()
BYTES: Kind = _BytesKind()
ID: Kind = _FixedKind(ID_SIZE)
IDS: Kind = _IdListKind()


def text(limit: int) -> Kind:
    return _TextKind(limit)


def list_of(item: Kind, min_size: int) -> Kind:
    return _ListKind(item, min_size)


def tuple_of(*items: Kind) -> Kind:
    return _TupleKind(*items)
