"""The sans-IO protocol on its own: frames, message codecs and the server's phase rules.

No sockets here. Every message type is round-tripped with generated field values through
`encode_frame` -> `FrameDecoder` (fed in random pieces) -> `decode_message`; hostile input
(random bytes, truncated or mutated frames, wrong type codes, absurd counts and lengths) may
only ever raise `ProtocolError`, and never makes the decoder allocate more than it was sent.
"""

from __future__ import annotations

import itertools
import struct
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.protocol import codec
from strongroom.protocol import messages as m
from strongroom.protocol.codec import ID_SIZE, ProtocolError
from strongroom.protocol.framing import (
    HEADER_SIZE,
    MAX_FRAME,
    MAX_LOGIN_FRAME,
    Frame,
    FrameDecoder,
    encode_frame,
)
from strongroom.protocol.state import Phase, ServerState

ALL: dict[int, type[m.Message]] = {**m.REQUESTS, **m.RESPONSES}
TABLES = {"requests": m.REQUESTS, "responses": m.RESPONSES}

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- strategies built from each message's FIELDS table ---------------------------------------


def _bounded_text(limit: int) -> st.SearchStrategy[str]:
    # At most 4 UTF-8 bytes per character; keep it small so examples stay fast.
    return st.text(max_size=min(limit // 4, 40))


def kind_strategy(kind: codec.Kind) -> st.SearchStrategy[Any]:
    if kind is codec.U8:
        return st.integers(0, 2**8 - 1)
    if kind is codec.U16:
        return st.integers(0, 2**16 - 1)
    if kind is codec.U32:
        return st.integers(0, 2**32 - 1)
    if kind is codec.U64:
        return st.integers(0, 2**64 - 1)
    if kind is codec.BYTES:
        return st.binary(max_size=300)
    if kind is codec.ID:
        return st.binary(min_size=ID_SIZE, max_size=ID_SIZE)
    if kind is codec.IDS:
        return st.lists(st.binary(min_size=ID_SIZE, max_size=ID_SIZE), max_size=6)
    if isinstance(kind, codec._TextKind):
        return _bounded_text(kind.limit)
    if isinstance(kind, codec._ListKind):
        return st.lists(kind_strategy(kind.item), max_size=5)
    if isinstance(kind, codec._TupleKind):
        return st.tuples(*(kind_strategy(k) for k in kind.items))
    raise AssertionError(f"no strategy for field kind {kind!r}")  # a new kind: add it here


def message_strategy(cls: type[m.Message]) -> st.SearchStrategy[m.Message]:
    return st.builds(cls, **{name: kind_strategy(kind) for name, kind in cls.FIELDS})


any_message = st.sampled_from(sorted(ALL.values(), key=lambda c: c.TYPE)).flatmap(message_strategy)
request_ids = st.integers(0, 2**32 - 1)


def table_for(msg: m.Message) -> dict[int, type[m.Message]]:
    return m.REQUESTS if type(msg).TYPE in m.REQUESTS else m.RESPONSES


def payload_of(msg: m.Message) -> bytes:
    return b"".join(m.encode_payload(msg))


def decode_only_protocol_errors(
    table: dict[int, type[m.Message]], msg_type: int, payload: bytes
) -> m.Message | None:
    """Decode; a ProtocolError is fine, any other exception fails the test (by propagating)."""
    try:
        return m.decode_message(table, msg_type, payload)
    except ProtocolError:
        return None


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[Frame]:
    dec = FrameDecoder()
    frames: list[Frame] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        dec.feed(data[a:b])
        while (frame := dec.next_frame()) is not None:
            frames.append(frame)
    assert dec.buffered() == 0
    assert not dec.in_frame()
    return frames


# ---- round trips -----------------------------------------------------------------------------


def test_every_type_is_covered() -> None:
    assert set(m.REQUESTS).isdisjoint(m.RESPONSES)
    for table in (m.REQUESTS, m.RESPONSES):
        for code, cls in table.items():
            assert code == cls.TYPE
            message_strategy(cls)  # raises for a field kind the strategies do not know


@pytest.mark.parametrize(
    "cls", sorted(ALL.values(), key=lambda c: c.TYPE), ids=lambda c: c.__name__
)
@FAST
@given(data=st.data())
def test_round_trip_each_type(cls: type[m.Message], data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    rid = data.draw(request_ids)
    wire = encode_frame(msg, rid)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
    (frame,) = feed_in_pieces(wire, cuts)
    assert frame.msg_type == cls.TYPE
    assert frame.request_id == rid
    assert struct.unpack("!I", wire[:4])[0] == len(wire) - 4
    assert m.decode_message(table_for(msg), frame.msg_type, frame.payload) == msg


@settings(max_examples=80, deadline=None)
@given(
    msgs=st.lists(st.tuples(any_message, request_ids), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_round_trip_stream_of_frames(msgs: list[tuple[m.Message, int]], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(msg, rid) for msg, rid in msgs)
    frames = feed_in_pieces(wire, cuts)
    assert len(frames) == len(msgs)
    for frame, (msg, rid) in zip(frames, msgs, strict=True):
        assert frame.request_id == rid
        assert m.decode_message(table_for(msg), frame.msg_type, frame.payload) == msg


def test_byte_by_byte_feed() -> None:
    wire = encode_frame(m.Hello(m.PROTOCOL_VERSION, "x"), 7) + encode_frame(m.Bye(), 8)
    dec = FrameDecoder()
    got = []
    for i in range(len(wire)):
        dec.feed(wire[i : i + 1])
        assert dec.needed() >= 0
        while (frame := dec.next_frame()) is not None:
            got.append(frame)
    assert [f.request_id for f in got] == [7, 8]
    assert dec.needed() == HEADER_SIZE  # idle again: a whole header is the least it needs


# ---- hostile input: only ProtocolError, ever -------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(msg_type=st.integers(0, 255), payload=st.binary(max_size=400))
def test_random_payloads_only_raise_protocol_error(msg_type: int, payload: bytes) -> None:
    for table in (m.REQUESTS, m.RESPONSES):
        decode_only_protocol_errors(table, msg_type, payload)


@FAST
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_random_stream_only_raises_protocol_error(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for a, b in itertools.pairwise(points):
            dec.feed(data[a:b])
            while (frame := dec.next_frame()) is not None:
                assert len(frame.payload) <= len(data)
                for table in (m.REQUESTS, m.RESPONSES):
                    decode_only_protocol_errors(table, frame.msg_type, frame.payload)
    except ProtocolError:
        pass
    assert dec.buffered() <= len(data)


@FAST
@given(msg=any_message, data=st.data())
def test_truncated_payloads_are_refused(msg: m.Message, data: st.DataObject) -> None:
    payload = payload_of(msg)
    if not payload:
        return
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(ProtocolError):
        m.decode_message(table_for(msg), type(msg).TYPE, payload[:cut])
    # ...and trailing bytes are refused as well.
    with pytest.raises(ProtocolError):
        m.decode_message(table_for(msg), type(msg).TYPE, payload + b"\0")


@FAST
@given(msg=any_message, data=st.data())
def test_truncated_frames_never_complete(msg: m.Message, data: st.DataObject) -> None:
    wire = encode_frame(msg, 1)
    cut = data.draw(st.integers(0, len(wire) - 1))
    dec = FrameDecoder()
    dec.feed(wire[:cut])
    assert dec.next_frame() is None  # waits for the rest; never a half frame
    assert dec.needed() == len(wire) - cut or cut < 4
    assert dec.in_frame() == (cut > 0)


@settings(max_examples=200, deadline=None)
@given(msg=any_message, data=st.data())
def test_mutated_frames_only_raise_protocol_error(msg: m.Message, data: st.DataObject) -> None:
    wire = bytearray(encode_frame(msg, 1))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(wire) - 1))
        wire[pos] = data.draw(st.integers(0, 255))
    dec = FrameDecoder()
    dec.feed(bytes(wire))
    try:
        frame = dec.next_frame()
    except ProtocolError:
        return
    if frame is None:  # the length grew: the decoder waits for bytes that never come
        assert dec.buffered() == len(wire)
        return
    for table in (m.REQUESTS, m.RESPONSES):
        decode_only_protocol_errors(table, frame.msg_type, frame.payload)


@FAST
@given(msg=any_message, other=st.integers(0, 255))
def test_wrong_type_codes_only_raise_protocol_error(msg: m.Message, other: int) -> None:
    payload = payload_of(msg)
    for table in (m.REQUESTS, m.RESPONSES):
        decode_only_protocol_errors(table, other, payload)


@pytest.mark.parametrize(
    "code", [c for c in range(256) if c not in m.REQUESTS and c not in m.RESPONSES][::17]
)
def test_unknown_type_codes(code: int) -> None:
    for table in (m.REQUESTS, m.RESPONSES):
        with pytest.raises(ProtocolError, match="unknown message type"):
            m.decode_message(table, code, b"")


def test_responses_are_not_requests() -> None:
    """A server must not accept a response type from a client, nor a client a request."""
    for code in m.RESPONSES:
        with pytest.raises(ProtocolError):
            m.decode_message(m.REQUESTS, code, b"")
    for code in m.REQUESTS:
        with pytest.raises(ProtocolError):
            m.decode_message(m.RESPONSES, code, b"")


# ---- counts and lengths are checked before anything is allocated -----------------------------

_HUGE = 2**32 - 1


def _default(kind: codec.Kind) -> Any:
    if kind in (codec.U8, codec.U16, codec.U32, codec.U64):
        return 0
    if kind is codec.ID:
        return b"\0" * ID_SIZE
    if kind is codec.BYTES:
        return b""
    if isinstance(kind, codec._TextKind):
        return ""
    if isinstance(kind, codec._TupleKind):
        return tuple(_default(k) for k in kind.items)
    return []  # lists


def sample_message(cls: type[m.Message]) -> m.Message:
    """An instance of `cls` with every field at its simplest value."""
    return cls(**{name: _default(kind) for name, kind in cls.FIELDS})


_LENGTH_PREFIXED = (codec._ListKind, codec._IdListKind, codec._TextKind, codec._BytesKind)


def _huge_count_payloads() -> list[tuple[str, dict[int, type[m.Message]], int, bytes]]:
    """For every length-prefixed field of every message: the fields before it, validly
    encoded, then a count or length of 2**32-1, then only 64 bytes."""
    out = []
    for table in (m.REQUESTS, m.RESPONSES):
        for cls in table.values():
            w = codec.Writer()
            if cls is m.Hello:
                w.raw(m.MAGIC)
            for name, kind in cls.FIELDS:
                if isinstance(kind, _LENGTH_PREFIXED):
                    payload = b"".join(w.parts) + struct.pack("!I", _HUGE) + b"x" * 64
                    out.append((f"{cls.__name__}.{name}", table, cls.TYPE, payload))
                kind.write(w, _default(kind))
    return out


@pytest.mark.parametrize(
    ("name", "table", "code", "payload"),
    _huge_count_payloads(),
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_huge_counts_in_a_small_frame_are_refused_fast(
    name: str, table: dict[int, type[m.Message]], code: int, payload: bytes
) -> None:
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(ProtocolError):
            m.decode_message(table, code, payload)
        elapsed = time.perf_counter() - start
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5, f"{name}: refusing a huge count took {elapsed:.2f} s"
    assert peak < 256 * 1024, f"{name}: decoding allocated {peak} bytes"


def test_huge_counts_cover_every_length_prefixed_field() -> None:
    names = {p[0] for p in _huge_count_payloads()}
    for cls in ALL.values():
        for name, kind in cls.FIELDS:
            if isinstance(kind, _LENGTH_PREFIXED):
                assert f"{cls.__name__}.{name}" in names
    assert "PutBlobs.blobs" in names and "Have.ids" in names and "Login.auth_key" in names


@pytest.mark.parametrize("count", [1, 2, 1000, 2**31, _HUGE])
def test_list_count_over_the_bytes_left(count: int) -> None:
    # One real item, then a claim of `count` items: refused unless the bytes are there.
    item = b"\x11" * ID_SIZE + b"\0" + struct.pack("!I", 0)
    payload = struct.pack("!I", count) + item
    if count == 1:
        assert m.decode_message(m.REQUESTS, m.PutBlobs.TYPE, payload) == m.PutBlobs(
            [(b"\x11" * ID_SIZE, 0, b"")]
        )
    else:
        with pytest.raises(ProtocolError):
            m.decode_message(m.REQUESTS, m.PutBlobs.TYPE, payload)


def test_text_longer_than_its_limit_is_refused_before_reading() -> None:
    payload = struct.pack("!I", m.NAME_LIMIT + 1) + b"a" * (m.NAME_LIMIT + 1)
    with pytest.raises(ProtocolError, match="longer than"):
        m.decode_message(m.REQUESTS, m.AuthParamsRequest.TYPE, payload)
    ok = struct.pack("!I", m.NAME_LIMIT) + b"a" * m.NAME_LIMIT
    assert m.decode_message(m.REQUESTS, m.AuthParamsRequest.TYPE, ok) == m.AuthParamsRequest(
        "a" * m.NAME_LIMIT
    )


def test_invalid_utf8_is_a_protocol_error() -> None:
    for bad in (b"\xff", b"\xc3", b"\xed\xa0\x80"):  # junk, truncated, a lone surrogate
        payload = struct.pack("!I", len(bad)) + bad
        with pytest.raises(ProtocolError, match="UTF-8"):
            m.decode_message(m.REQUESTS, m.AuthParamsRequest.TYPE, payload)


def test_id_list_not_a_multiple_of_32_is_refused() -> None:
    payload = struct.pack("!I", 2) + b"\0" * (ID_SIZE * 2 - 1)
    with pytest.raises(ProtocolError):
        m.decode_message(m.REQUESTS, m.Have.TYPE, payload)


# ---- frame sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [MAX_FRAME + 1, 2**31, 2**32 - 1])
def test_oversized_length_prefix_is_refused_from_the_header(size: int) -> None:
    dec = FrameDecoder()
    header = struct.pack("!I", size)
    for i in range(3):
        dec.feed(header[i : i + 1])
        assert dec.next_frame() is None
    dec.feed(header[3:])
    with pytest.raises(ProtocolError, match="over the"):
        dec.next_frame()
    assert dec.buffered() == 4  # nothing of the body was asked for or kept


def test_length_at_the_limit_is_waited_for() -> None:
    dec = FrameDecoder()
    dec.feed(struct.pack("!IBI", MAX_FRAME, m.PutBlobs.TYPE, 1))
    assert dec.next_frame() is None
    assert dec.needed() == MAX_FRAME - (HEADER_SIZE - 4)


def test_small_decoder_limit() -> None:
    dec = FrameDecoder(max_frame=100)
    dec.feed(struct.pack("!I", 101))
    with pytest.raises(ProtocolError):
        dec.next_frame()


@pytest.mark.parametrize("size", [0, 1, 4])
def test_frame_too_short_for_its_header(size: int) -> None:
    dec = FrameDecoder()
    dec.feed(struct.pack("!I", size) + b"\0" * size)
    with pytest.raises(ProtocolError, match="too short"):
        dec.next_frame()


def test_encoder_refuses_frames_over_the_limit() -> None:
    big = m.SetKeyFile(b"\0" * MAX_FRAME)
    with pytest.raises(ValueError, match="limit"):
        encode_frame(big, 1)


# ---- Hello and the encoders' own checks ------------------------------------------------------


def test_hello_round_trip_and_magic() -> None:
    hello = m.Hello(m.PROTOCOL_VERSION, "strongroom test")
    payload = payload_of(hello)
    assert payload.startswith(m.MAGIC)
    assert m.decode_message(m.REQUESTS, m.Hello.TYPE, payload) == hello
    for bad in (b"STRONGRX", b"GET / HT", b"\0" * 8, m.MAGIC.lower()):
        with pytest.raises(ProtocolError, match="magic"):
            m.decode_message(m.REQUESTS, m.Hello.TYPE, bad + payload[len(m.MAGIC) :])
    with pytest.raises(ProtocolError):
        m.decode_message(m.REQUESTS, m.Hello.TYPE, m.MAGIC[:5])


def test_hello_of_another_version_still_decodes() -> None:
    """The version is the session's to refuse (with UNSUPPORTED_VERSION), not the codec's."""
    hello = m.Hello(m.PROTOCOL_VERSION + 1, "future")
    assert m.decode_message(m.REQUESTS, 1, payload_of(hello)) == hello


@pytest.mark.parametrize("size", [0, 1, ID_SIZE - 1, ID_SIZE + 1, 64])
def test_encoders_reject_wrong_size_ids(size: int) -> None:
    bad = b"\x01" * size
    good = b"\x02" * ID_SIZE
    for msg in (
        m.Have([good, bad]),
        m.ManifestPart([bad]),
        m.ReadBlobs([bad]),
        m.Ids([bad, good]),
        m.PutBlobs([(bad, 0, b"data")]),
        m.Blobs([(good, 0, b""), (bad, 0, b"")]),
    ):
        with pytest.raises(ValueError, match="32"):
            encode_frame(msg, 1)


def test_encoders_reject_text_over_the_limit() -> None:
    with pytest.raises(ValueError, match="longer"):
        encode_frame(m.AuthParamsRequest("a" * (m.NAME_LIMIT + 1)), 1)
    with pytest.raises(ValueError, match="longer"):
        encode_frame(m.Error(1, "é" * m.MESSAGE_LIMIT), 1)  # 2 bytes a character


def test_encoders_reject_tuples_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="wrong length"):
        encode_frame(m.PutBlobs([(b"\0" * ID_SIZE, 0)]), 1)  # type: ignore[list-item]


def test_describe_never_shows_fields() -> None:
    secret = b"\xaa" * 32
    assert m.describe(m.Login("alice", secret)) == "Login"


# ---- the server's phases ---------------------------------------------------------------------

_SAMPLE_REQUESTS: list[m.Message] = [
    sample_message(cls) for _code, cls in sorted(m.REQUESTS.items())
]


def test_sample_requests_cover_every_request_type() -> None:
    assert {type(r).TYPE for r in _SAMPLE_REQUESTS} == set(m.REQUESTS)
    for req in _SAMPLE_REQUESTS:  # and each of them is encodable
        encode_frame(req, 1)


@pytest.mark.parametrize(
    "req",
    [r for r in _SAMPLE_REQUESTS if not isinstance(r, m.Hello)],
    ids=lambda r: type(r).__name__,
)
def test_anything_but_hello_first_is_fatal(req: m.Message) -> None:
    state = ServerState()
    with pytest.raises(ProtocolError, match="HELLO"):
        state.admit(req)


def test_hello_first_is_admitted_and_hello_twice_is_an_error() -> None:
    state = ServerState()
    assert state.admit(m.Hello(m.PROTOCOL_VERSION, "t")) is None
    state.phase = Phase.LOGIN  # what the session does after answering Welcome
    for phase in (Phase.LOGIN, Phase.MUST_CHANGE_PASSWORD, Phase.READY):
        state.phase = phase
        err = state.admit(m.Hello(m.PROTOCOL_VERSION, "t"))
        assert isinstance(err, m.Error)
        assert err.code == m.ErrorCode.BAD_REQUEST


def test_before_login_only_login_messages_are_admitted() -> None:
    state = ServerState()
    state.phase = Phase.LOGIN
    for req in _SAMPLE_REQUESTS[1:]:
        err = state.admit(req)
        if isinstance(req, m.AuthParamsRequest | m.Login | m.Bye):
            assert err is None, type(req).__name__
        else:
            assert isinstance(err, m.Error), type(req).__name__
            assert err.code == m.ErrorCode.NOT_LOGGED_IN


def test_must_change_password_admits_only_setkeyfile_and_bye() -> None:
    state = ServerState()
    state.phase = Phase.MUST_CHANGE_PASSWORD
    for req in _SAMPLE_REQUESTS[1:]:
        err = state.admit(req)
        if isinstance(req, m.SetKeyFile | m.Bye):
            assert err is None, type(req).__name__
        else:
            assert isinstance(err, m.Error), type(req).__name__
            assert err.code == m.ErrorCode.PASSWORD_CHANGE_REQUIRED
    write = state.admit(m.PutBlobs([]))
    assert write is not None and write.code == m.ErrorCode.PASSWORD_CHANGE_REQUIRED


def test_ready_admits_everything_but_a_second_login() -> None:
    state = ServerState()
    state.phase = Phase.READY
    for req in _SAMPLE_REQUESTS[1:]:
        err = state.admit(req)
        if isinstance(req, m.AuthParamsRequest | m.Login):
            assert err is not None and err.code == m.ErrorCode.BAD_REQUEST
        else:
            assert err is None, type(req).__name__


def test_login_frame_limit_can_be_raised_between_frames() -> None:
    """The server reads with a small limit until a login succeeds, then with MAX_FRAME."""
    dec = FrameDecoder(MAX_LOGIN_FRAME)
    header = struct.pack("!IBI", MAX_LOGIN_FRAME + 1, m.PutBlobs.TYPE, 1)
    dec.feed(header)
    with pytest.raises(ProtocolError, match="over the"):
        dec.next_frame()
    dec = FrameDecoder(MAX_LOGIN_FRAME)
    dec.feed(encode_frame(m.Bye(), 1))
    assert dec.next_frame() == Frame(m.Bye.TYPE, 1, b"")
    dec.max_frame = MAX_FRAME
    dec.feed(header)
    assert dec.next_frame() is None  # now merely waiting for the body
