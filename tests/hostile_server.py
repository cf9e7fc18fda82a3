"""A compromised strongroom server for tests: a tampering TLS proxy in front of a real one.

The proxy listens on 127.0.0.1 (a free port) with its own self-signed certificate; a client
configured with the proxy's address and fingerprint takes it for "the server", exactly as it
would a server whose machine an attacker controls. Each client connection gets its own TLS
connection to the real strongroom-server; frames are decoded with the protocol's own sans-IO
code and forwarded both ways. Tests install hooks that see every message:

- `Hooks.on_request(msg, request)`: a client -> server message (observe it; return None to
  forward it unchanged, or a list of messages / raw frames to send upstream instead);
- `Hooks.on_response(msg, request)`: a server -> client message and the request it answers
  (None for the server's connection-level errors, request ID 0); returns what the client gets
  instead, in order: `[msg]` forwards it, `[]` drops it, `[msg, msg]` duplicates it, other
  `Message`s are sent with the same request ID, `bytes` are written as they are (a frame made
  with `encode_frame(msg, rid)` for another request ID, or garbage). Raising `CloseConnection`
  cuts both connections.

Hooks run on the proxy's event loop thread, one message at a time per connection, in order. What
the client sent is recorded (`Proxy.sent`, `Proxy.sent_types`) so a test can assert, say, that
nothing followed AuthParamsRequest. A hook that raises anything else is recorded in
`Proxy.hook_errors` and ends that connection; `serve_proxy` fails the test on one.

Everything runs in a background thread with its own asyncio loop; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import ipaddress
import itertools
import ssl
import struct
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Cli
from strongroom.fingerprint import fingerprint_of_der
from strongroom.protocol import messages as m
from strongroom.protocol.codec import ProtocolError
from strongroom.protocol.framing import MAX_FRAME, Frame, FrameDecoder, encode_frame

HOST = "127.0.0.1"
CONNECT_TIMEOUT = 10.0  # TLS handshake with the client, and connecting to the real server
IDLE_TIMEOUT = 120.0  # a connection on which neither side sends anything for this long ends
_IDLE_POLL = 2.0
STOP_TIMEOUT = 10.0

# Requests answered by a stream of parts closed by End (or cut short by an Error).
STREAMED: tuple[type[m.Message], ...] = (
    m.ListIds,
    m.ListSnapshots,
    m.ReadBlobs,
    m.GetManifest,
    m.ReadAll,
)
# Requests too big to keep in the record (their type is still recorded).
_NOT_KEPT: tuple[type[m.Message], ...] = (m.PutBlobs, m.ManifestPart)

Out = list[m.Message | bytes]
T = TypeVar("T")


class CloseConnection(Exception):
    """Raised by a hook: the proxy closes both the client's and the server's connection."""


@dataclass
class Request:
    """A client request as the proxy saw it, handed to hooks with each of its answers."""

    conn: int  # the proxy's number for the client connection (1, 2, ...)
    rid: int  # the request ID the client chose
    msg: m.Message
    answers: int = 0  # answers already received from the server (before this one)

    @property
    def streamed(self) -> bool:
        return isinstance(self.msg, STREAMED)


@dataclass(frozen=True)
class Sent:
    """One message the client sent (msg is None for PutBlobs and ManifestPart)."""

    conn: int
    rid: int
    name: str
    msg: m.Message | None


class Hooks:
    """Transparent by default; subclass and override, or use `Rewrite`."""

    def on_connect(self, conn: int) -> None:
        """A client connected (connection number `conn`)."""

    def on_request(self, msg: m.Message, request: Request) -> Out | None:
        return None

    def on_response(self, msg: m.Message, request: Request | None) -> Out:
        return [msg]


class Rewrite(Hooks):
    """Hooks from plain functions: `Rewrite(on_response=lambda msg, req: [...])`."""

    def __init__(
        self,
        on_response: Callable[[m.Message, Request | None], Out] | None = None,
        on_request: Callable[[m.Message, Request], Out | None] | None = None,
    ) -> None:
        self._on_response = on_response
        self._on_request = on_request

    def on_request(self, msg: m.Message, request: Request) -> Out | None:
        return self._on_request(msg, request) if self._on_request else None

    def on_response(self, msg: m.Message, request: Request | None) -> Out:
        return self._on_response(msg, request) if self._on_response else [msg]


def raw_frame(frame: Frame) -> bytes:
    return struct.pack("!IBI", 5 + len(frame.payload), frame.msg_type, frame.request_id) + (
        frame.payload
    )


def self_signed_certificate(folder: Path) -> tuple[Path, Path, str]:
    """A fresh EC key and self-signed certificate for 127.0.0.1: (cert, key, fingerprint)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile strongroom server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "proxy-cert.pem", folder / "proxy-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path, fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


class Proxy:
    """The tampering proxy. `start()` it, point a client at `address` / `fingerprint`, `stop()`."""

    def __init__(
        self,
        upstream: str,
        upstream_fingerprint: str = "",
        hooks: Hooks | None = None,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream_host, self.upstream_port = host, int(port)
        self.upstream_fingerprint = upstream_fingerprint
        self.hooks = hooks or Hooks()  # may be replaced at any time; read per message
        self.idle_timeout = idle_timeout
        self.port = 0
        self.fingerprint = ""
        self.hook_errors: list[BaseException] = []
        self._sent: list[Sent] = []
        self._received: list[tuple[int, str]] = []
        self._record_lock = threading.Lock()
        self._conn_ids = itertools.count(1)
        self._connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._tmp = tempfile.TemporaryDirectory(prefix="strongroom-proxy-")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.Server | None = None

    # ---- life --------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> Proxy:
        cert, key, self.fingerprint = self_signed_certificate(Path(self._tmp.name))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        self._thread.start()

        async def listen() -> int:
            self._server = await asyncio.start_server(
                self._handle,
                HOST,
                0,
                ssl=ctx,
                ssl_handshake_timeout=CONNECT_TIMEOUT,
                limit=1 << 20,
            )
            port: int = self._server.sockets[0].getsockname()[1]
            return port

        try:
            self.port = self._run(listen(), CONNECT_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every connection; bounded, safe to call twice."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():

            async def shutdown() -> None:
                if self._server is not None:
                    self._server.close()
                for task in list(self._tasks):
                    task.cancel()
                if self._tasks:
                    await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT)
                await self._loop.shutdown_asyncgens()

            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                self._run(shutdown(), STOP_TIMEOUT + 2)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT)
        if not self._loop.is_running():
            self._loop.close()
        self._tmp.cleanup()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- what the client did -----------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        return self._connections

    def sent(self, conn: int | None = None) -> list[Sent]:
        """Every message the client sent (on connection `conn`, or on all), in order."""
        with self._record_lock:
            return [s for s in self._sent if conn is None or s.conn == conn]

    def sent_types(self, conn: int | None = None) -> list[str]:
        """The type names of what the client sent, e.g. ['Hello', 'AuthParamsRequest', 'Bye']."""
        return [s.name for s in self.sent(conn)]

    def received_types(self, conn: int | None = None) -> list[str]:
        """The type names of what the client was sent (after the hooks), in order."""
        with self._record_lock:
            return [name for c, name in self._received if conn is None or c == conn]

    def clear(self) -> None:
        """Forget what was recorded so far (e.g. after the setup's own commands)."""
        with self._record_lock:
            self._sent.clear()
            self._received.clear()

    # ---- one client connection ---------------------------------------------------------------

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = next(self._conn_ids)
        self._connections += 1
        swriter: asyncio.StreamWriter | None = None
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the real server is pinned by fingerprint below
            sreader, upstream = await asyncio.wait_for(
                asyncio.open_connection(
                    self.upstream_host,
                    self.upstream_port,
                    ssl=ctx,
                    server_hostname=self.upstream_host,
                    limit=1 << 20,
                ),
                CONNECT_TIMEOUT,
            )
            swriter = upstream
            if self.upstream_fingerprint:
                sslobj = upstream.get_extra_info("ssl_object")
                der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
                if not der or fingerprint_of_der(der) != self.upstream_fingerprint:
                    raise ConnectionError("the real server's fingerprint changed")
            self.hooks.on_connect(conn)
            pending: dict[int, Request] = {}
            active = [asyncio.get_running_loop().time()]  # when either side last sent something
            pumps = [
                asyncio.ensure_future(self._guard(pump))
                for pump in (
                    self._requests(conn, self._frames(creader, active), upstream, pending),
                    self._answers(conn, self._frames(sreader, active), cwriter, pending),
                )
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.wait(pumps, timeout=STOP_TIMEOUT)
        except (OSError, TimeoutError, ssl.SSLError, CloseConnection):
            pass  # the real server is unreachable (the client sees a closed connection)
        except Exception as exc:  # e.g. on_connect's bug: recorded, serve_proxy fails the test
            self.hook_errors.append(exc)
        finally:
            for writer in (cwriter, swriter):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer.wait_closed(), 2)
            self._tasks.discard(task)

    async def _guard(self, pump: Coroutine[Any, Any, None]) -> None:
        """Run one direction until its peer closes, a wait times out or a hook ends it."""
        try:
            await pump
        except (OSError, TimeoutError, ssl.SSLError, ProtocolError, CloseConnection):
            pass  # a closed or broken peer, a frame over the limit, or a hook's choice
        except Exception as exc:  # a hook's bug: recorded, serve_proxy fails the test
            self.hook_errors.append(exc)

    async def _frames(
        self, reader: asyncio.StreamReader, active: list[float]
    ) -> AsyncIterator[Frame]:
        """Whole frames from one peer, until it closes or the connection has been idle (both
        ways: a client waiting for a long answer sends nothing) for `idle_timeout`."""
        decoder = FrameDecoder(MAX_FRAME)
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await asyncio.wait_for(reader.read(1 << 20), _IDLE_POLL)
            except TimeoutError:
                if loop.time() - active[0] > self.idle_timeout:
                    return
                continue
            active[0] = loop.time()
            if not data:
                return
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                yield frame

    async def _requests(
        self,
        conn: int,
        frames: AsyncIterator[Frame],
        swriter: asyncio.StreamWriter,
        pending: dict[int, Request],
    ) -> None:
        async for frame in frames:
            try:
                msg = m.decode_message(m.REQUESTS, frame.msg_type, frame.payload)
            except ProtocolError:  # not ours to judge: the real server answers it
                self._record_sent(Sent(conn, frame.request_id, f"raw:{frame.msg_type}", None))
                swriter.write(raw_frame(frame))
                await swriter.drain()
                continue
            keep = None if isinstance(msg, _NOT_KEPT) else msg
            self._record_sent(Sent(conn, frame.request_id, type(msg).__name__, keep))
            request = Request(conn, frame.request_id, msg)
            pending[frame.request_id] = request
            out = self.hooks.on_request(msg, request)
            if out is None:
                swriter.write(raw_frame(frame))
            else:
                for item in out:
                    swriter.write(_bytes(item, frame.request_id))
            await swriter.drain()

    async def _answers(
        self,
        conn: int,
        frames: AsyncIterator[Frame],
        cwriter: asyncio.StreamWriter,
        pending: dict[int, Request],
    ) -> None:
        async for frame in frames:
            try:
                msg = m.decode_message(m.RESPONSES, frame.msg_type, frame.payload)
            except ProtocolError:  # forwarded as it is: the client must cope
                cwriter.write(raw_frame(frame))
                await cwriter.drain()
                continue
            request = pending.get(frame.request_id)
            if request is not None and (not request.streamed or isinstance(msg, m.End | m.Error)):
                del pending[frame.request_id]  # its last answer
            out = self.hooks.on_response(msg, request)
            if request is not None:
                request.answers += 1
            for item in out:
                cwriter.write(raw_frame(frame) if item is msg else _bytes(item, frame.request_id))
                with self._record_lock:
                    name = type(item).__name__ if isinstance(item, m.Message) else "raw"
                    self._received.append((conn, name))
            await cwriter.drain()

    def _record_sent(self, sent: Sent) -> None:
        with self._record_lock:
            self._sent.append(sent)


def _bytes(item: m.Message | bytes, rid: int) -> bytes:
    return item if isinstance(item, bytes) else encode_frame(item, rid)


# ---- for tests -------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_proxy(server: Any, hooks: Hooks | None = None) -> Iterator[Proxy]:
    """A started proxy in front of a `netfixtures.Server`; stopped (and its hooks' errors
    reported as a test failure) on leaving."""
    proxy = Proxy(server.address, server.fingerprint, hooks).start()
    try:
        yield proxy
    finally:
        proxy.stop()
    if proxy.hook_errors:
        raise AssertionError(f"a proxy hook failed: {proxy.hook_errors[0]!r}")


class ProxiedCli(Cli):
    """The real client of `user`, whose "server" is the proxy: same password, cache and config
    folder as `cli` (the same person on the same machine), the proxy's address and fingerprint."""

    def __init__(self, cli: Cli, proxy: Proxy) -> None:
        super().__init__(cli.repo.parent)
        self.env = {
            **cli.env,
            "STRONGROOM_SERVER": proxy.address,
            "STRONGROOM_FINGERPRINT": proxy.fingerprint,
        }
        self.proxy = proxy


# ---- ready-made tampering ----------------------------------------------------------------------


@dataclass
class StreamEdit(Hooks):
    """Rewrites whole streamed answers to one kind of request.

    The parts of each answer to a `request_type` request are held back (at most `hold` parts;
    tests use small streams) until its End arrives; then `edit(parts, end, request)` returns the
    messages the client gets instead (parts and End alike, which it may change, drop, repeat or
    reorder). Other answers pass unchanged. `edited` counts the answers rewritten; `only` limits
    the rewriting to answers whose request passes it (e.g. a ReadBlobs of more than one ID).
    """

    request_type: type[m.Message]
    edit: Callable[[list[m.Message], m.End, Request], list[m.Message]]
    only: Callable[[Request], bool] = lambda request: True
    hold: int = 64
    edited: int = 0
    _held: dict[tuple[int, int], list[m.Message]] = field(default_factory=dict)

    def on_response(self, msg: m.Message, request: Request | None) -> Out:
        if (
            request is None
            or not isinstance(request.msg, self.request_type)
            or not self.only(request)
        ):
            return [msg]
        key = (request.conn, request.rid)
        if isinstance(msg, m.Error):
            return [*self._held.pop(key, []), msg]
        if not isinstance(msg, m.End):
            held = self._held.setdefault(key, [])
            if len(held) >= self.hold:
                raise CloseConnection  # not a stream this helper is meant for
            held.append(msg)
            return []
        self.edited += 1
        return list(self.edit(self._held.pop(key, []), msg, request))
