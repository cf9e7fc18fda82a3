"""Frames: a 4-byte big-endian length, then a type byte, a 4-byte request ID and the payload.

`FrameDecoder` is fed whatever bytes arrive and hands back whole frames; it refuses a length
above the hard limit before buffering it, so a peer cannot make us hold more than one frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .codec import ProtocolError
from .messages import Message, encode_payload

MAX_FRAME = 32 * 1024 * 1024  # hard limit on one frame's body (type + request ID + payload)
MAX_LOGIN_FRAME = 64 * 1024  # before a login succeeds nobody needs more
_HEADER = struct.Struct("!IBI")  # body length, message type, request ID
HEADER_SIZE = _HEADER.size
_MIN_BODY = HEADER_SIZE - 4


@dataclass(frozen=True, slots=True)
class Frame:
    msg_type: int
    request_id: int
    payload: bytes


def encode_frame(msg: Message, request_id: int) -> bytes:
    parts = encode_payload(msg)
    size = _MIN_BODY + sum(len(p) for p in parts)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is over the {MAX_FRAME} byte limit")
    return b"".join([_HEADER.pack(size, msg.TYPE, request_id), *parts])


class FrameDecoder:
    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame  # may be changed between frames (e.g. raised after login)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf)

    def in_frame(self) -> bool:
        """True while part of a frame has arrived but not all of it (for slow-peer timeouts)."""
        return bool(self._buf)

    def needed(self) -> int:
        """How many more bytes complete the current frame (at least 1 when nothing is buffered)."""
        if len(self._buf) < 4:
            return HEADER_SIZE - len(self._buf)
        size: int = struct.unpack_from("!I", self._buf)[0]
        return max(4 + size - len(self._buf), 0)

    def next_frame(self) -> Frame | None:
        if len(self._buf) < 4:
            return None
        (size,) = struct.unpack_from("!I", self._buf)
        if size > self.max_frame:
            raise ProtocolError(f"frame of {size} bytes is over the {self.max_frame} byte limit")
        if size < _MIN_BODY:
            raise ProtocolError("frame is too short")
        if len(self._buf) < 4 + size:
            return None
        _size, msg_type, request_id = _HEADER.unpack_from(self._buf)
        payload = bytes(self._buf[HEADER_SIZE : 4 + size])
        del self._buf[: 4 + size]
        return Frame(msg_type, request_id, payload)
