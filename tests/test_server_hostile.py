"""A real strongroom-server against hostile, broken and slow peers.

Raw TLS connections (stdlib `ssl` + `socket`, every operation with a timeout, every loop
bounded) send garbage, truncated and oversized frames, messages out of order, requests for
other users' data and guessed passwords. After each act the server process must be alive and
a normal client must still work; the server's log must hold no traceback (a session that died
of an unexpected exception instead of answering with a protocol error).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import socket
import sqlite3
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PASSWORD
from netfixtures import ADMIN_PASSWORD, NetCli, Server
from strongroom import crypto, keys
from strongroom.protocol import messages as m
from strongroom.protocol.codec import ID_SIZE
from strongroom.protocol.framing import (
    MAX_FRAME,
    MAX_LOGIN_FRAME,
    Frame,
    FrameDecoder,
    encode_frame,
)
from strongroom.snapshot import new_snapshot_id
from test_protocol import sample_message

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
IO_TIMEOUT = 10.0  # any single socket operation
CLOSE_TIMEOUT = 8.0  # how long the server may take to hang up on a peer it refused
# cryptography's Argon2id (OpenSSL) fails with MemoryError, or stalls, when several threads of
# one process derive at once; the slow-client test logs in from threads, so they take turns.
_KDF_LOCK = threading.Lock()


# ---- a raw protocol client -------------------------------------------------------------------


def tls_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def raw_frame(msg_type: int, request_id: int, payload: bytes) -> bytes:
    return struct.pack("!IBI", 5 + len(payload), msg_type, request_id) + payload


class Raw:
    """One connection to the server, speaking frames by hand."""

    def __init__(
        self,
        port: int,
        *,
        tls: bool = True,
        timeout: float = IO_TIMEOUT,
        rcvbuf: int = 0,
        source: str = "",
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:  # a small receive window: the server's answers back up quickly
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source:  # another loopback address (127.0.0.2 ...): another client host
                sock.bind((source, 0))
            sock.settimeout(timeout)
            sock.connect((HOST, port))
        except BaseException:
            sock.close()
            raise
        if tls:
            try:
                sock = tls_context().wrap_socket(sock, server_hostname=HOST)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.decoder = FrameDecoder()
        self.eof = False
        self.next_rid = 0

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- sending --

    def send_bytes(self, data: bytes) -> bool:
        """False if the server had already hung up."""
        self.sock.settimeout(IO_TIMEOUT)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise AssertionError("the server stopped reading") from None
        except OSError:  # reset, broken pipe, TLS alert: it closed on us
            return False
        return True

    def send(self, msg: m.Message) -> int:
        self.next_rid += 1
        self.send_bytes(encode_frame(msg, self.next_rid))
        return self.next_rid

    # -- receiving --

    def _fill(self, timeout: float) -> bool:
        """Read once; False if nothing came in `timeout` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return False
        except (ssl.SSLError, OSError):  # reset, or TLS ended without close_notify
            data = b""
        if data:
            self.decoder.feed(data)
        else:
            self.eof = True
        return True

    def recv_frame(self, timeout: float = IO_TIMEOUT) -> Frame | None:
        """The next frame, or None once the server has closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            if self.eof:
                assert not self.decoder.in_frame(), "the server closed in the middle of a frame"
                return None
            left = deadline - time.monotonic()
            if left <= 0 or not self._fill(left):
                raise AssertionError(f"no answer from the server in {timeout} s")

    def recv(self, timeout: float = IO_TIMEOUT) -> tuple[int, m.Message] | None:
        frame = self.recv_frame(timeout)
        if frame is None:
            return None
        # Whatever we sent, the server only ever answers with valid responses.
        return frame.request_id, m.decode_message(m.RESPONSES, frame.msg_type, frame.payload)

    def call(self, msg: m.Message) -> m.Message:
        rid = self.send(msg)
        got = self.recv()
        assert got is not None, f"the server closed the connection instead of answering {msg}"
        assert got[0] == rid
        return got[1]

    def stream(self, msg: m.Message) -> list[m.Message]:
        """A streamed answer: the parts, then End or Error (included)."""
        rid = self.send(msg)
        out: list[m.Message] = []
        for _ in range(10_000):
            got = self.recv()
            assert got is not None, "the server closed the connection in a streamed answer"
            assert got[0] == rid
            out.append(got[1])
            if isinstance(got[1], m.End | m.Error):
                return out
        raise AssertionError("endless stream")

    def until_closed(self, timeout: float = CLOSE_TIMEOUT) -> list[tuple[int, m.Message]]:
        """Every message up to the server's hang-up, which must come within `timeout`."""
        deadline = time.monotonic() + timeout
        out = []
        for _ in range(10_000):
            got = self.recv(max(deadline - time.monotonic(), 0.001))
            if got is None:
                return out
            out.append(got)
        raise AssertionError("the server kept sending")

    def closed_within(self, timeout: float) -> bool:
        """Poll for `timeout` s: True if the server hung up (or said anything) meanwhile."""
        deadline = time.monotonic() + timeout
        while not self.eof and self.decoder.buffered() == 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._fill(left)
        return True

    # -- the protocol's opening --

    def hello(self, version: int = m.PROTOCOL_VERSION) -> m.Message:
        return self.call(m.Hello(version, "hostile-test"))

    def auth_key(self, user: str, password: str) -> bytes:
        params = self.call(m.AuthParamsRequest(user))
        assert isinstance(params, m.AuthParams)
        kdf = crypto.KdfParams(params.memory_kib, params.iterations, params.lanes)
        with _KDF_LOCK:
            master = crypto.derive_master(password.encode(), params.salt, kdf)
        return crypto.split_master(master).auth_key

    def login(self, user: str, password: str = PASSWORD) -> m.Message:
        return self.call(m.Login(user, self.auth_key(user, password)))


def connect(
    server: Server, user: str | None = None, password: str = PASSWORD, rcvbuf: int = 0
) -> Raw:
    """A connection after HELLO, logged in as `user` if given."""
    raw = Raw(server.port, rcvbuf=rcvbuf)
    try:
        assert isinstance(raw.hello(), m.Welcome)
        if user is not None:
            ok = raw.login(user, password)
            assert isinstance(ok, m.LoginOk), ok
    except BaseException:
        raw.close()
        raise
    return raw


def is_error(msg: object, code: int) -> bool:
    return isinstance(msg, m.Error) and msg.code == code


def list_snapshots(raw: Raw) -> list[str]:
    parts = raw.stream(m.ListSnapshots())
    assert isinstance(parts[-1], m.End), parts[-1]
    ids = [row[0] for p in parts[:-1] if isinstance(p, m.SnapshotRows) for row in p.rows]
    assert len(ids) == parts[-1].count
    return ids


def assert_no_tracebacks(server: Server) -> None:
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "session failed" not in log, log[-4000:]


def assert_healthy(server: Server, alice: NetCli, *, full: bool = True) -> None:
    """The server is up, a protocol-level login works, and (full) so does the real client."""
    assert server.alive(), server.log.read_text()[-3000:]
    with connect(server, "alice") as raw:
        list_snapshots(raw)
        assert isinstance(raw.call(m.Bye()), m.Ok)
    if full:
        alice.run("snapshots", timeout=60)
    assert_no_tracebacks(server)


def make_tree(root: Path, dirs: int = 10) -> Path:
    """A small tree with many folders, so a backup stores more than a handful of blobs."""
    for i in range(dirs):
        d = root / f"d{i}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "f.txt").write_bytes(os.urandom(64) + f"file {i}\n".encode())
    return root


def storage_index(server: Server, user: str) -> Path:
    users = json.loads(server.admin("user", "list", "--json").stdout)
    (row,) = [u for u in users if u["name"] == user]
    return server.data_dir / "storage" / row["storage_id"] / "index.sqlite"


def stored_blob_ids(server: Server, user: str) -> list[bytes]:
    db = sqlite3.connect(storage_index(server, user), timeout=30)
    try:
        return [bytes(r[0]) for r in db.execute("SELECT blob_id FROM blobs ORDER BY id")]
    finally:
        db.close()


# ---- one server shared by the tests that leave it as they found it ---------------------------


@dataclass
class Shared:
    server: Server
    alice: NetCli
    root: Path
    snapshot: str


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp("hostile")
    srv = Server(root / "server-data").start()
    try:
        alice = srv.add_user("alice", root)
        out = alice.backup(make_tree(root / "alice-src"))
        yield Shared(srv, alice, root, out["snapshot"])
    finally:
        srv.kill()


# ---- garbage, broken and misplaced frames ----------------------------------------------------


def _garbage(server: Server) -> None:
    rnd = random.Random(1234)
    for size in (1, 3, 4, 9, 100, 5000):
        with Raw(server.port) as raw:
            raw.send_bytes(rnd.randbytes(size))
            raw.closed_within(0.3)  # refused at once, or waiting for more: either is fine
    # Garbage whose length prefix is small and valid: a complete frame of junk ends the session.
    with Raw(server.port) as raw:
        raw.send_bytes(raw_frame(0xEE, 7, rnd.randbytes(50)))
        for _rid, msg in raw.until_closed():
            assert is_error(msg, m.ErrorCode.BAD_REQUEST)


def _garbage_after_login(server: Server) -> None:
    with connect(server, "alice") as raw:
        raw.send_bytes(random.Random(99).randbytes(3000))
        raw.closed_within(0.3)


def _truncated_frames(server: Server) -> None:
    hello = encode_frame(m.Hello(m.PROTOCOL_VERSION, "x"), 1)
    for cut in (1, 4, 9, len(hello) - 1):
        with Raw(server.port) as raw:
            raw.send_bytes(hello[:cut])
    # A half-sent upload from a logged-in client, then a hang-up: nothing is stored.
    with connect(server, "alice") as raw:
        put = encode_frame(m.PutBlobs([(b"\x42" * ID_SIZE, 0, b"z" * 1000)]), 5)
        raw.send_bytes(put[: len(put) // 2])
    assert b"\x42" * ID_SIZE not in stored_blob_ids(server, "alice")


def _oversized_length(server: Server) -> None:
    for size in (MAX_FRAME + 1, 2**31, 2**32 - 1):
        for logged_in in (False, True):
            raw = connect(server, "alice") if logged_in else Raw(server.port)
            with raw:
                start = time.monotonic()
                # Only the header: the server must refuse it without waiting for the body.
                raw.send_bytes(struct.pack("!IBI", size, m.PutBlobs.TYPE, 3))
                answers = raw.until_closed()
                assert time.monotonic() - start < CLOSE_TIMEOUT
                assert [msg.code for _rid, msg in answers] == [m.ErrorCode.BAD_REQUEST]
                assert "limit" in answers[0][1].message  # type: ignore[attr-defined]
    # Before a login, far less is accepted: nobody needs a big frame to log in.
    with connect(server) as raw:
        raw.send_bytes(struct.pack("!IBI", MAX_LOGIN_FRAME + 1, m.Login.TYPE, 3))
        answers = raw.until_closed()
        assert [msg.code for _rid, msg in answers] == [m.ErrorCode.BAD_REQUEST]


def _unknown_message_type(server: Server) -> None:
    for code in (0, 18, 63, m.Welcome.TYPE, m.Error.TYPE, 200, 255):
        with connect(server) as raw:
            raw.send_bytes(raw_frame(code, 4, b""))
            answers = raw.until_closed()
            assert [msg.code for _r, msg in answers] == [m.ErrorCode.BAD_REQUEST], code
    with Raw(server.port) as raw:  # as the very first frame, too
        raw.send_bytes(raw_frame(99, 1, b"hello?"))
        assert all(is_error(msg, m.ErrorCode.BAD_REQUEST) for _r, msg in raw.until_closed())


def _malformed_payloads(server: Server) -> None:
    hello = b"".join(m.encode_payload(m.Hello(m.PROTOCOL_VERSION, "x")))
    before_login = [
        raw_frame(m.AuthParamsRequest.TYPE, 2, struct.pack("!I", 16) + b"abc"),  # truncated
        raw_frame(m.AuthParamsRequest.TYPE, 2, struct.pack("!I", 2) + b"\xff\xfe"),  # not UTF-8
        raw_frame(m.Login.TYPE, 2, struct.pack("!I", 1) + b"a" + struct.pack("!I", 2**32 - 1)),
        raw_frame(m.Bye.TYPE, 2, b"trailing"),
        raw_frame(m.Hello.TYPE, 2, hello + b"!"),  # a second, malformed HELLO
    ]
    for frame in before_login:
        with connect(server) as raw:
            raw.send_bytes(frame)
            answers = raw.until_closed()
            assert [msg.code for _r, msg in answers] == [m.ErrorCode.BAD_REQUEST]
    after_login = [
        raw_frame(m.PutBlobs.TYPE, 3, struct.pack("!I", 2**32 - 1) + b"\0" * 64),
        raw_frame(m.Have.TYPE, 3, struct.pack("!I", 3) + b"\0" * 65),
        raw_frame(m.Commit.TYPE, 3, struct.pack("!I", 32) + b"0" * 32 + b"\0\0"),
        raw_frame(m.ListSnapshots.TYPE, 3, b"\0"),
    ]
    for frame in after_login:
        with connect(server, "alice") as raw:
            raw.send_bytes(frame)
            answers = raw.until_closed()
            assert [msg.code for _r, msg in answers] == [m.ErrorCode.BAD_REQUEST]


def _bad_hello(server: Server) -> None:
    with Raw(server.port) as raw:  # a HELLO without the magic: not a strongroom client
        raw.send_bytes(raw_frame(m.Hello.TYPE, 1, b"NOTMAGIC\0\1\0\0\0\0"))
        answers = raw.until_closed()
        assert [msg.code for _r, msg in answers] == [m.ErrorCode.BAD_REQUEST]
        assert "magic" in answers[0][1].message  # type: ignore[attr-defined]
    with Raw(server.port) as raw:  # anything but HELLO first
        raw.send(m.AuthParamsRequest("alice"))
        answers = raw.until_closed()
        assert [msg.code for _r, msg in answers] == [m.ErrorCode.BAD_REQUEST]
    with connect(server) as raw:  # HELLO twice: an error, but the connection goes on
        assert is_error(raw.hello(), m.ErrorCode.BAD_REQUEST)
        assert isinstance(raw.login("alice"), m.LoginOk)


def _plain_tcp(server: Server) -> None:
    for data in (
        encode_frame(m.Hello(m.PROTOCOL_VERSION, "no tls"), 1),
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x16\x03\x01\x00\x05junk!",  # a TLS handshake record holding nonsense
    ):
        with Raw(server.port, tls=False) as raw:
            raw.send_bytes(data)
            start = time.monotonic()
            while not raw.eof:  # a TLS alert at most, then the hang-up
                assert time.monotonic() - start < CLOSE_TIMEOUT, "server kept a non-TLS peer"
                raw._fill(CLOSE_TIMEOUT)
                raw.decoder = FrameDecoder()  # it is not our protocol: just drain it


def _http_over_tls(server: Server) -> None:
    with Raw(server.port) as raw:
        raw.send_bytes(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answers = raw.until_closed()  # "GET " is a length of 1.2 GB: refused at once
        assert [msg.code for _r, msg in answers] == [m.ErrorCode.BAD_REQUEST]


ACTS: dict[str, Callable[[Server], None]] = {
    "garbage": _garbage,
    "garbage-after-login": _garbage_after_login,
    "truncated": _truncated_frames,
    "oversized-length": _oversized_length,
    "unknown-type": _unknown_message_type,
    "malformed-payload": _malformed_payloads,
    "bad-hello": _bad_hello,
    "plain-tcp": _plain_tcp,
    "http-over-tls": _http_over_tls,
}


@pytest.mark.parametrize("act", list(ACTS))
def test_hostile_bytes_leave_the_server_serving(shared: Shared, act: str) -> None:
    ACTS[act](shared.server)
    assert_healthy(shared.server, shared.alice)


_LOGIN_TYPES = {m.Hello.TYPE, m.AuthParamsRequest.TYPE, m.Login.TYPE, m.Bye.TYPE}
# One request of every other type (built from the message table, so new types are included).
_PRE_LOGIN_REQUESTS: list[m.Message] = [
    sample_message(cls) for code, cls in sorted(m.REQUESTS.items()) if code not in _LOGIN_TYPES
]


def test_requests_before_login_get_not_logged_in(shared: Shared) -> None:
    assert {type(r).TYPE for r in _PRE_LOGIN_REQUESTS} | _LOGIN_TYPES == set(m.REQUESTS)
    with connect(shared.server) as raw:
        for req in _PRE_LOGIN_REQUESTS:
            assert is_error(raw.call(req), m.ErrorCode.NOT_LOGGED_IN), type(req).__name__
        # A failed login does not log anyone in either.
        assert is_error(raw.login("alice", "wrong"), m.ErrorCode.AUTH_FAILED)
        assert is_error(raw.call(m.ListSnapshots()), m.ErrorCode.NOT_LOGGED_IN)
        assert isinstance(raw.call(m.Bye()), m.Ok)
        assert raw.until_closed() == []
    assert_healthy(shared.server, shared.alice)  # (its success also clears the failure count)


def test_hello_with_another_version_is_refused(shared: Shared) -> None:
    for version in (0, m.PROTOCOL_VERSION + 1, 0xFFFF):
        with Raw(shared.server.port) as raw:
            raw.send(m.Hello(version, "from the future"))
            answers = raw.until_closed()
            assert [msg.code for _r, msg in answers] == [m.ErrorCode.UNSUPPORTED_VERSION]
            assert "protocol" in answers[0][1].message  # type: ignore[attr-defined]
    assert_healthy(shared.server, shared.alice)


# ---- random frames (hypothesis) --------------------------------------------------------------


def _sample_requests() -> list[m.Message]:
    bid = b"\x07" * ID_SIZE
    return [
        *(sample_message(cls) for cls in m.REQUESTS.values()),
        m.Hello(m.PROTOCOL_VERSION, "x"),
        m.Have([bid, bid]),
        m.PutBlobs([(bid, 0, b"data")]),
        m.ManifestPart([bid]),
        m.Commit(new_snapshot_id(), 1, b"record", "", bid),
        m.DeleteSnapshot(new_snapshot_id()),
        m.ReadBlobs([bid]),
    ]


def _mutate(payload: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(payload)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf)


_request_payloads = [(type(r).TYPE, b"".join(m.encode_payload(r))) for r in _sample_requests()]

frames_strategy = st.lists(
    st.one_of(
        # a random type code and random bytes
        st.tuples(st.integers(0, 255), st.binary(max_size=120)),
        # a real request type with random bytes
        st.tuples(st.sampled_from(sorted(m.REQUESTS)), st.binary(max_size=120)),
        # a valid request, as it is or with a few bytes changed
        st.builds(
            lambda sample, edits: (sample[0], _mutate(sample[1], edits)),
            st.sampled_from(_request_payloads),
            st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
        ),
        # valid requests with generated field values (PutBlobs with any blob type, say)
        st.builds(
            lambda blobs: (m.PutBlobs.TYPE, b"".join(m.encode_payload(m.PutBlobs(blobs)))),
            st.lists(
                st.tuples(
                    st.binary(min_size=ID_SIZE, max_size=ID_SIZE),
                    st.integers(0, 255),
                    st.binary(max_size=64),
                ),
                max_size=3,
            ),
        ),
        st.builds(
            lambda snap, t, rec: (
                m.Commit.TYPE,
                b"".join(m.encode_payload(m.Commit(snap, t, rec, "", b"\x07" * ID_SIZE))),
            ),
            st.one_of(st.just(new_snapshot_id()), st.text(max_size=40)),
            st.integers(0, 2**64 - 1),
            st.binary(max_size=64),
        ),
    ),
    max_size=6,
)


def _send_random_frames(raw: Raw, frames: list[tuple[int, bytes]]) -> list[tuple[int, m.Message]]:
    wire = b"".join(raw_frame(t, 100 + i, p) for i, (t, p) in enumerate(frames))
    # A closing BYE, so that the server ends the connection whatever came before it.
    wire += raw_frame(m.Bye.TYPE, 999, b"")
    raw.send_bytes(wire)
    answers = raw.until_closed(15)
    for rid, _msg in answers:
        assert rid == 0 or 100 <= rid < 100 + len(frames) or rid == 999
    return answers


RANDOM = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@RANDOM
@given(with_hello=st.booleans(), frames=frames_strategy)
def test_random_frames_before_login(
    shared: Shared, with_hello: bool, frames: list[tuple[int, bytes]]
) -> None:
    with Raw(shared.server.port) as raw:
        if with_hello:
            assert isinstance(raw.hello(), m.Welcome)
        _send_random_frames(raw, frames)
    assert_healthy(shared.server, shared.alice, full=False)


@pytest.fixture(scope="module")
def mallory(shared: Shared) -> str:
    shared.server.add_user("mallory", shared.root)
    return "mallory"


@RANDOM
@given(frames=frames_strategy)
def test_random_frames_after_login(
    shared: Shared, mallory: str, frames: list[tuple[int, bytes]]
) -> None:
    with connect(shared.server, mallory) as raw:
        _send_random_frames(raw, frames)
    assert_healthy(shared.server, shared.alice, full=False)


def test_after_random_frames_the_real_client_works(shared: Shared) -> None:
    assert_healthy(shared.server, shared.alice, full=True)


# ---- slow and idle peers ---------------------------------------------------------------------


def _trickle(raw: Raw, data: bytes, interval: float, give_up: float) -> tuple[int, float]:
    """Send `data` a byte at a time; (bytes sent, seconds) when the server cut us off."""
    start = time.monotonic()
    for i in range(len(data)):
        if not raw.send_bytes(data[i : i + 1]):
            return i, time.monotonic() - start
        if raw.closed_within(interval):
            return i + 1, time.monotonic() - start
        if time.monotonic() - start > give_up:
            break
    return len(data), time.monotonic() - start


def _idle_tls(server: Server) -> tuple[str, bool, float, list[int]]:
    start = time.monotonic()
    with Raw(server.port) as raw:
        answers = raw.until_closed(15)
        return "idle-tls", True, time.monotonic() - start, [msg.code for _r, msg in answers]


def _idle_tcp(server: Server) -> tuple[str, bool, float, list[int]]:
    start = time.monotonic()
    with Raw(server.port, tls=False) as raw:  # not even a TLS handshake
        while not raw.eof and time.monotonic() - start < 15:
            raw._fill(15)
            raw.decoder = FrameDecoder()
        return "idle-tcp", raw.eof, time.monotonic() - start, []


def _idle_after_login(server: Server) -> tuple[str, bool, float, list[int]]:
    with connect(server, "alice") as raw:
        start = time.monotonic()
        answers = raw.until_closed(15)
        return "idle-login", True, time.monotonic() - start, [msg.code for _r, msg in answers]


def _trickle_hello(server: Server) -> tuple[str, bool, float, list[int]]:
    data = encode_frame(m.Hello(m.PROTOCOL_VERSION, "a very slow client indeed"), 1)
    with Raw(server.port) as raw:
        sent, took = _trickle(raw, data, 0.25, 15)
        answers = raw.until_closed(10)
        return "trickle-hello", sent < len(data), took, [msg.code for _r, msg in answers]


def _trickle_after_login(server: Server) -> tuple[str, bool, float, list[int]]:
    data = encode_frame(m.Have([bytes([i]) * ID_SIZE for i in range(4)]), 9)
    with connect(server, "alice") as raw:
        sent, took = _trickle(raw, data, 0.25, 15)
        answers = raw.until_closed(10)
        return "trickle-login", sent < len(data), took, [msg.code for _r, msg in answers]


def _never_reads(server: Server, ids: list[bytes]) -> tuple[str, bool, float, list[int]]:
    """Asks for megabytes and never reads them: the server must not wait on it for ever."""
    with connect(server, "alice", rcvbuf=4096) as raw:
        port = raw.sock.getsockname()[1]
        start = time.monotonic()
        raw.send(m.ReadBlobs(ids))
        while time.monotonic() - start < 30:
            if f":{port}: disconnected" in server.log.read_text(errors="replace"):
                return "never-reads", True, time.monotonic() - start, []
            time.sleep(0.2)
        return "never-reads", False, time.monotonic() - start, []


@pytest.mark.timeout(150)
def test_slow_and_idle_clients_are_cut_off_without_stalling_others(tmp_path: Path) -> None:
    server = Server(
        tmp_path / "server-data",
        env={"STRONGROOM_LOGIN_TIMEOUT": "2", "STRONGROOM_IDLE_TIMEOUT": "2"},
    ).start()
    try:
        alice = server.add_user("alice", tmp_path)
        src = make_tree(tmp_path / "src", dirs=3)
        big = [(os.urandom(ID_SIZE), 0, os.urandom(4 << 20)) for _ in range(3)]
        with connect(server, "alice") as raw:
            for blob in big:
                assert raw.call(m.PutBlobs([blob])) == m.Ok(1)
            assert raw.call(m.Flush()) == m.Ok()
        slow = [_idle_tls, _idle_tcp, _idle_after_login, _trickle_hello, _trickle_after_login]
        with concurrent.futures.ThreadPoolExecutor(len(slow) + 1) as pool:
            futures = [pool.submit(f, server) for f in slow]
            futures.append(pool.submit(_never_reads, server, [b[0] for b in big]))
            time.sleep(0.3)
            # Meanwhile a normal client backs up, undisturbed by the slow ones.
            start = time.monotonic()
            out = alice.backup(src)
            assert out["added"] == 3
            assert time.monotonic() - start < 60
            results = [f.result(60) for f in futures]
        for name, cut_off, took, codes in results:
            assert cut_off, f"{name}: the server never cut it off"
            # (the one that never reads gets a last few seconds to take the TIMEOUT error)
            assert 1.0 <= took < (25 if name == "never-reads" else 12), f"{name}: {took:.1f} s"
            assert set(codes) <= {m.ErrorCode.TIMEOUT}, f"{name}: {codes}"
        assert {name: codes for name, _c, _t, codes in results}["idle-login"] == [
            m.ErrorCode.TIMEOUT
        ]
        assert_healthy(server, alice)
        alice.backup(src)
    finally:
        server.kill()


# ---- the connection bound --------------------------------------------------------------------


def _welcomed(server: Server, wait: float = 15) -> Raw:
    """A connection the server accepted (retrying while it is still full, up to `wait` s)."""
    deadline = time.monotonic() + wait
    while True:
        raw = Raw(server.port)
        raw.send(m.Hello(m.PROTOCOL_VERSION, "x"))
        got = raw.recv()
        if got is not None and isinstance(got[1], m.Welcome):
            return raw
        raw.close()
        assert got is None or is_error(got[1], m.ErrorCode.BUSY), got
        assert time.monotonic() < deadline, "the server stayed full"
        time.sleep(0.1)


def test_connection_bound(tmp_path: Path) -> None:
    server = Server(tmp_path / "server-data", env={"STRONGROOM_MAX_CONNECTIONS": "3"}).start()
    try:
        alice = server.add_user("alice", tmp_path)
        held: list[Raw] = []
        try:
            for _ in range(3):  # logged in: not-yet-logged-in connections have half the slots
                raw = _welcomed(server)
                held.append(raw)
                assert isinstance(raw.login("alice"), m.LoginOk)
            with Raw(server.port) as fourth:
                answers = fourth.until_closed()
                assert [msg.code for _r, msg in answers] == [m.ErrorCode.BUSY]
            res = alice.run("snapshots", check=False, timeout=60)
            assert res.returncode == 1
            assert "busy" in res.stderr.lower()
            assert "Traceback" not in res.stderr
            for raw in held:  # the three are still served
                assert raw.stream(m.ListSnapshots()) == [m.End(0)]
        finally:
            for raw in held:
                raw.close()
        _welcomed(server).close()  # a slot is free again (once the server saw the hang-ups)
        # With 3 slots only one may be not-yet-logged-in: the probe's own slot must be let go
        # of before the health check's connection arrives, so retry it briefly.
        deadline = time.monotonic() + 15
        while True:
            try:
                assert_healthy(server, alice)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        server.kill()


# ---- logins ----------------------------------------------------------------------------------


def test_auth_params_for_unknown_users_look_real(shared: Shared) -> None:
    with connect(shared.server) as raw:
        real = raw.call(m.AuthParamsRequest("alice"))
        ghost1 = raw.call(m.AuthParamsRequest("nobody-here"))
        ghost2 = raw.call(m.AuthParamsRequest("nobody-here"))
        other = raw.call(m.AuthParamsRequest("nobody-else"))
    with connect(shared.server) as raw:  # and on another connection
        ghost3 = raw.call(m.AuthParamsRequest("nobody-here"))
    for msg in (real, ghost1, ghost2, ghost3, other):
        assert isinstance(msg, m.AuthParams)
    assert isinstance(real, m.AuthParams) and isinstance(ghost1, m.AuthParams)
    assert ghost1 == ghost2 == ghost3  # deterministic: asking twice reveals nothing
    assert isinstance(other, m.AuthParams) and other.salt != ghost1.salt
    assert len(ghost1.salt) == len(real.salt)
    assert (ghost1.memory_kib, ghost1.iterations, ghost1.lanes) == (
        real.memory_kib,
        real.iterations,
        real.lanes,
    )
    assert ghost1.salt != real.salt
    assert_healthy(shared.server, shared.alice, full=False)


def test_unknown_user_and_wrong_password_get_the_same_error(shared: Shared) -> None:
    with connect(shared.server) as raw:
        unknown = raw.login("nobody-here", PASSWORD)
        wrong = raw.login("alice", "not the password")
        short_key = raw.call(m.Login("alice", b"\0" * 5))
        empty_name = raw.call(m.Login("", b"\0" * 32))
    for err in (unknown, wrong, short_key, empty_name):
        assert isinstance(err, m.Error)
        assert (err.code, err.message) == (m.ErrorCode.AUTH_FAILED, wrong.message)  # type: ignore[union-attr]
    assert "alice" not in wrong.message and "nobody" not in unknown.message  # type: ignore[union-attr]
    assert_healthy(shared.server, shared.alice)  # a success clears the failure count


def _timed_login(server: Server, user: str, key: bytes) -> tuple[float, m.Message]:
    with connect(server) as raw:
        start = time.monotonic()
        answer = raw.call(m.Login(user, key))
        return time.monotonic() - start, answer


def test_repeated_login_failures_get_slower_and_success_resets(
    server: Server, alice: NetCli
) -> None:
    with connect(server) as raw:
        wrong = raw.auth_key("alice", "a wrong guess")
        right = raw.auth_key("alice", PASSWORD)
    failures = []
    for _ in range(5):
        took, answer = _timed_login(server, "alice", wrong)
        assert is_error(answer, m.ErrorCode.AUTH_FAILED)
        failures.append(took)
    # The throttle waits at least 1 s before the 5th answer (0.5 s before the 4th): a sleep, so
    # a lower bound that holds on any machine; the first answers come without a wait.
    baseline = min(failures[:3])
    assert failures[4] >= 0.95, failures
    assert failures[4] >= baseline + 0.5, failures
    took_ok, answer = _timed_login(server, "alice", right)
    assert isinstance(answer, m.LoginOk)  # still possible, only slower
    assert took_ok >= 1.9, took_ok
    # The success clears alice's own count, not this address's: a guesser who owns an account
    # cannot wipe their address's record by logging into it between guesses.
    took_after, answer = _timed_login(server, "alice", wrong)
    assert is_error(answer, m.ErrorCode.AUTH_FAILED)
    assert took_after >= 1.9, (took_after, took_ok)
    assert_healthy(server, alice)


# ---- isolation between users -----------------------------------------------------------------


def test_other_users_data_is_out_of_reach(shared: Shared, tmp_path: Path) -> None:
    server = shared.server
    shared.server.add_user("bob", tmp_path)
    alice_ids = stored_blob_ids(server, "alice")
    assert len(alice_ids) > 8  # so both the short and the long lookup paths are tried
    with connect(server, "bob") as bob:
        for wanted in (alice_ids[:1], alice_ids[:8], alice_ids):
            parts = bob.stream(m.ReadBlobs(wanted))
            assert not any(isinstance(p, m.Blobs) and p.blobs for p in parts), "data leaked"
            assert is_error(parts[-1], m.ErrorCode.NOT_FOUND), parts[-1]
        # Neither does bob learn which of alice's blobs exist.
        assert bob.call(m.Have(alice_ids)) == m.Ids(alice_ids)
        assert bob.stream(m.ListIds()) == [m.End(0)]
        assert list_snapshots(bob) == []
        assert bob.stream(m.GetManifest(shared.snapshot)) == [m.End(0)]
        assert bob.call(m.DeleteSnapshot(shared.snapshot)) == m.Ok(0)
        assert bob.stream(m.ReadAll()) == [m.End(0)]
        assert isinstance(bob.call(m.Bye()), m.Ok)
    with connect(server, "alice") as alice:
        assert list_snapshots(alice) == [shared.snapshot]
        manifest = alice.stream(m.GetManifest(shared.snapshot))
        assert manifest[-1] == m.End(len(alice_ids))
    assert set(stored_blob_ids(server, "alice")) == set(alice_ids)
    assert_healthy(server, shared.alice)


def test_append_only_refuses_deletes_even_on_an_open_connection(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    snap = alice.backup(make_tree(tmp_path / "src", dirs=2))["snapshot"]
    with connect(server, "alice") as conn:  # logged in before the admin's change
        server.admin("user", "set", "alice", "--append-only")
        # The change ends the open session at once (it was admitted under the other rule).
        answers = conn.until_closed()
        assert [msg.code for _r, msg in answers] == [m.ErrorCode.SESSION_ENDED], answers
    with connect(server, "alice") as conn:
        refused = conn.call(m.DeleteSnapshot(snap))
        assert is_error(refused, m.ErrorCode.FORBIDDEN), refused
        assert list_snapshots(conn) == [snap]
        with connect(server) as fresh:
            ok = fresh.login("alice")
            assert isinstance(ok, m.LoginOk) and ok.flags & m.LOGIN_APPEND_ONLY
            assert is_error(fresh.call(m.DeleteSnapshot(snap)), m.ErrorCode.FORBIDDEN)
        res = alice.run("forget", snap, check=False, timeout=60)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert "append-only" in res.stderr
        assert list_snapshots(conn) == [snap]
        alice.backup(tmp_path / "src")  # adding is still allowed
        # ...and lifting the flag ends the session too; a new one may delete.
        server.admin("user", "set", "alice", "--no-append-only")
        assert [msg.code for _r, msg in conn.until_closed()] == [m.ErrorCode.SESSION_ENDED]
    with connect(server, "alice") as conn:
        assert conn.call(m.DeleteSnapshot(snap)) == m.Ok(1)
        assert snap not in list_snapshots(conn)
    assert_healthy(server, alice)


# ---- the forced password change --------------------------------------------------------------


def test_nothing_is_stored_before_the_forced_password_change(shared: Shared) -> None:
    server = shared.server
    server.admin("user", "add", "erin", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    blob = (b"\x33" * ID_SIZE, 0, b"sneaky" * 8)
    with connect(server) as raw:
        ok = raw.login("erin", ADMIN_PASSWORD)
        assert isinstance(ok, m.LoginOk) and ok.flags & m.LOGIN_MUST_CHANGE_PASSWORD
        for req in (
            m.PutBlobs([blob]),
            m.Flush(),
            m.ManifestPart([blob[0]]),
            m.Commit(new_snapshot_id(), 1, b"r", "", blob[0]),
            m.ListSnapshots(),
            m.ReadBlobs([blob[0]]),
            m.DeleteSnapshot("0" * 32),
        ):
            assert is_error(raw.call(req), m.ErrorCode.PASSWORD_CHANGE_REQUIRED), req
        assert isinstance(raw.call(m.SetKeyFile(b"not a key file")), m.Error)  # refused, alive
        assert stored_blob_ids(server, "erin") == []
        # Choosing a password lifts the restriction, on this very connection.
        kdf = crypto.KdfParams(memory_kib=1024, iterations=1, lanes=4)
        keyfile = keys.create_keyfile(b"erin's own password", keys.RepoKeys.generate(), kdf)
        assert raw.call(m.SetKeyFile(keyfile.to_json().encode())) == m.Ok()
        assert raw.call(m.PutBlobs([blob])) == m.Ok(1)
        assert raw.call(m.Flush()) == m.Ok()
    assert stored_blob_ids(server, "erin") == [blob[0]]
    assert_healthy(server, shared.alice, full=False)


# ---- commits -------------------------------------------------------------------------------


def test_commit_with_missing_blobs_is_refused(shared: Shared) -> None:
    server = shared.server
    server.add_user("dave", shared.root)
    have = (os.urandom(ID_SIZE), 1, os.urandom(100))  # a tree: the snapshot's root
    absent = os.urandom(ID_SIZE)
    root = have[0]
    with connect(server, "dave") as raw:
        assert raw.call(m.ManifestPart([absent])) == m.Ok(1)
        refused = raw.call(m.Commit(new_snapshot_id(), time.time_ns(), b"record", "", root))
        assert is_error(refused, m.ErrorCode.MISSING_BLOBS), refused
        assert list_snapshots(raw) == []
        # One blob stored, one not: still refused, and nothing becomes visible.
        assert raw.call(m.PutBlobs([have])) == m.Ok(1)
        raw.call(m.ManifestPart([have[0], absent]))
        refused = raw.call(m.Commit(new_snapshot_id(), time.time_ns(), b"record", "", root))
        assert is_error(refused, m.ErrorCode.MISSING_BLOBS), refused
        assert list_snapshots(raw) == []
        # The refused manifest was dropped: a commit of what is stored now succeeds.
        assert raw.call(m.ManifestPart([have[0]])) == m.Ok(1)
        snap = new_snapshot_id()
        assert raw.call(m.Commit(snap, time.time_ns(), b"record", "", root)) == m.Ok()
        assert list_snapshots(raw) == [snap]
        assert raw.stream(m.GetManifest(snap)) == [m.Ids([have[0]]), m.End(1)]
        # The same snapshot ID again: refused with an error, and the session goes on.
        assert raw.call(m.ManifestPart([have[0]])) == m.Ok(1)
        again = raw.call(m.Commit(snap, time.time_ns(), b"other record", "", root))
        assert isinstance(again, m.Error), again
        assert is_error(again, m.ErrorCode.BAD_REQUEST) and "exists" in again.message, again
        assert list_snapshots(raw) == [snap]
    # An invalid snapshot ID, or a time past what the database holds, ends the connection.
    for bad in (
        m.Commit("../../etc/passwd", 1, b"r", "", root),
        m.Commit(new_snapshot_id(), 2**64 - 1, b"r", "", root),
    ):
        with connect(server, "dave") as raw:
            raw.send(bad)
            answers = raw.until_closed()
            assert [msg.code for _r, msg in answers] == [m.ErrorCode.BAD_REQUEST]
    with connect(server, "dave") as raw:
        assert list_snapshots(raw) == [snap]
    assert_healthy(server, shared.alice, full=False)
