"""A TLS connection to a strongroom server, usable from many threads at once.

An asyncio loop runs in a background thread and owns the socket (OpenSSL objects must not be
shared between threads). Callers send requests from any thread and get a future (one answer)
or an iterator (a streamed answer); answers are routed by request ID, so requests pipeline:
a backup keeps several batches of blobs in flight instead of waiting for each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import queue
import socket
import ssl
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import IntegrityError, StrongroomError, UsageError, WrongPasswordError
from ..fingerprint import fingerprint_of_der
from ..protocol import messages as m
from ..protocol.codec import ProtocolError
from ..protocol.framing import FrameDecoder, encode_frame

T = TypeVar("T")

CONNECT_TIMEOUT = 20.0
REPLY_TIMEOUT = 600.0  # a commit of a huge manifest or a flush on a slow disk can take long
_STREAM_QUEUE = 4  # streamed parts (~4 MiB each) buffered before the socket stops being read


class RemoteError(StrongroomError):
    """The server refused a request; `code` is a protocol ErrorCode."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class RemoteIntegrityError(RemoteError, IntegrityError):
    """The server says blobs are missing or damaged (not that it is failing): callers that
    repair or skip damage (a parent tree read afresh) treat it as local damage."""


class FingerprintMismatch(StrongroomError):
    pass


_INTEGRITY_CODES = (m.ErrorCode.NOT_FOUND, m.ErrorCode.MISSING_BLOBS, m.ErrorCode.DAMAGED)


def error_from(msg: m.Error, server: str) -> StrongroomError:
    text = msg.message
    if msg.code == m.ErrorCode.AUTH_FAILED:
        return WrongPasswordError(f"{server}: wrong user name or password")
    if msg.code == m.ErrorCode.QUOTA_EXCEEDED:
        return RemoteError(msg.code, f"server {server}: {text}")
    if msg.code == m.ErrorCode.DISK_FULL:
        return RemoteError(msg.code, f"server {server}: {text}")
    if msg.code in _INTEGRITY_CODES:
        return RemoteIntegrityError(msg.code, f"server {server}: {text}")
    return RemoteError(msg.code, f"server {server}: {text}")


@dataclass
class _Stream:
    items: queue.Queue[m.Message | BaseException] = field(
        default_factory=lambda: queue.Queue(_STREAM_QUEUE)
    )
    abandoned: bool = False


M = TypeVar("M", bound=m.Message)


def expect(answer: m.Message, kind: type[M], what: str) -> M:
    """The server's answer if it is of the kind the request calls for; a server that answers
    with something else is not trusted with an assert (it may be hostile)."""
    if not isinstance(answer, kind):
        raise IntegrityError(f"server sent a wrong answer to {what}: {m.describe(answer)}")
    return answer


def parse_address(text: str, default_port: int = 44000) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if not text:
        raise UsageError("the server address is empty")
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"bad server address {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"bad server address {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, text)
    if not host:
        raise UsageError(f"bad server address {text!r}")
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"bad port in server address {whole!r}")
    return int(text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Transport:
    def __init__(self, host: str, port: int, *, ca_file: str | None = None) -> None:
        self.host, self.port = host, port
        self.address = format_address(host, port)
        self.fingerprint = ""
        self._ca_file = ca_file
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[m.Message] | _Stream] = {}
        self._closed: BaseException | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_quiet_loop_errors)
        self._thread = threading.Thread(target=self._loop.run_forever, name="net", daemon=True)
        self._thread.start()
        try:
            self._run(self._connect(), CONNECT_TIMEOUT + 5)
        except BaseException:
            self.close()
            raise

    # ---- plumbing -------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise StrongroomError(f"server {self.address} did not answer in time") from None

    async def _connect(self) -> None:
        ctx = ssl.create_default_context(cafile=self._ca_file) if self._ca_file else None
        if ctx is None:
            # Identity comes from the pinned SHA-256 fingerprint, checked before any login data
            # is sent (trust on first use, as SSH does), not from a certificate authority.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=ctx, server_hostname=self.host, limit=8 << 20
                ),
                CONNECT_TIMEOUT,
            )
        except TimeoutError:
            raise StrongroomError(f"cannot reach server {self.address}: timed out") from None
        except ssl.SSLCertVerificationError as exc:
            raise FingerprintMismatch(
                f"server {self.address}: certificate not trusted ({exc.verify_message})"
            ) from None
        except ssl.SSLError as exc:
            raise StrongroomError(f"server {self.address}: TLS failed ({exc.reason})") from None
        except (OSError, socket.gaierror) as exc:
            raise StrongroomError(
                f"cannot reach server {self.address}: {exc.strerror or exc} "
                "(is strongroom-server running there?)"
            ) from None
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            writer.close()
            raise StrongroomError(f"server {self.address} sent no certificate")
        self.fingerprint = fingerprint_of_der(der)
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        error: BaseException
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    error = StrongroomError(f"server {self.address} closed the connection")
                    break
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    msg = m.decode_message(m.RESPONSES, frame.msg_type, frame.payload)
                    await self._deliver(frame.request_id, msg)
        except ProtocolError as exc:
            error = StrongroomError(f"server {self.address} sent invalid data: {exc}")
        except (OSError, ConnectionError, ssl.SSLError) as exc:
            error = StrongroomError(f"lost the connection to server {self.address} ({exc})")
        except asyncio.CancelledError:
            error = StrongroomError("connection closed")
        self._fail_all(error)

    async def _deliver(self, rid: int, msg: m.Message) -> None:
        target = self._pending.get(rid)
        if target is None:
            if rid == 0 and isinstance(msg, m.Error):  # the server is closing the connection
                self._fail_all(error_from(msg, self.address))
            return
        if isinstance(target, _Stream):
            last = isinstance(msg, m.End | m.Error)
            if last:
                del self._pending[rid]
            if target.abandoned:
                return
            item: m.Message | BaseException = (
                error_from(msg, self.address) if isinstance(msg, m.Error) else msg
            )
            # Back-pressure: stop reading the socket while the consumer is behind.
            while target.items.full() and not target.abandoned:
                await asyncio.sleep(0.002)
            if not target.abandoned:
                target.items.put_nowait(item)
            return
        del self._pending[rid]
        if isinstance(msg, m.Error):
            target.set_exception(error_from(msg, self.address))
        else:
            target.set_result(msg)

    def _fail_all(self, error: BaseException) -> None:
        if self._closed is None:
            self._closed = error
        pending, self._pending = self._pending, {}
        for target in pending.values():
            if isinstance(target, _Stream):
                if not target.abandoned:
                    try:
                        target.items.put_nowait(error)
                    except queue.Full:
                        target.abandoned = True
            elif not target.done():
                target.set_exception(error)

    async def _send(self, rid: int, frame: bytes, target: object) -> None:
        if self._closed is not None:
            raise self._closed
        assert self._writer is not None
        self._pending[rid] = target  # type: ignore[assignment]
        self._writer.write(frame)
        await self._writer.drain()

    # ---- API for any thread ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection is gone (closed, lost, or dropped by the server)."""
        return self._closed is not None or self._loop.is_closed()

    def request(self, msg: m.Message) -> concurrent.futures.Future[m.Message]:
        """Send `msg` and return the future of its single answer (pipelined)."""
        rid = next(self._ids)
        fut: concurrent.futures.Future[m.Message] = concurrent.futures.Future()
        frame = encode_frame(msg, rid)
        sent = asyncio.run_coroutine_threadsafe(self._send(rid, frame, fut), self._loop)
        sent.add_done_callback(lambda s: _propagate_send_error(s, fut))
        return fut

    def call(self, msg: m.Message, timeout: float = REPLY_TIMEOUT) -> m.Message:
        try:
            return self.request(msg).result(timeout)
        except concurrent.futures.TimeoutError:
            raise StrongroomError(f"server {self.address} did not answer in time") from None

    def stream(
        self, msg: m.Message, timeout: float = REPLY_TIMEOUT, *, end: bool = False
    ) -> Iterator[m.Message]:
        """Send `msg` and yield the parts of its streamed answer; the final End too if `end`
        (so the caller can hold the server to the count it announces)."""
        rid = next(self._ids)
        target = _Stream()
        frame = encode_frame(msg, rid)
        self._run(self._send(rid, frame, target), timeout)
        try:
            while True:
                try:
                    item = target.items.get(timeout=timeout)
                except queue.Empty:
                    raise StrongroomError(f"server {self.address} stopped sending") from None
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, m.End):
                    if end:
                        yield item
                    return
                yield item
        finally:
            target.abandoned = True

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            if self._writer is not None:
                self._writer.close()
                with contextlib.suppress(OSError, ConnectionError, TimeoutError, ssl.SSLError):
                    await asyncio.wait_for(self._writer.wait_closed(), 2)
            if self._reader_task is not None:
                self._reader_task.cancel()

        if self._thread.is_alive():
            with contextlib.suppress(concurrent.futures.TimeoutError, OSError, RuntimeError):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()


def _quiet_loop_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Errors reach callers through their futures; what asyncio reports on its own (e.g. a
    3.11 SSL transport tripping over a connection reset while closing) must not print a
    traceback at the user. STRONGROOM_DEBUG=1 shows it."""
    if os.environ.get("STRONGROOM_DEBUG"):
        loop.default_exception_handler(context)


def _propagate_send_error(
    sent: concurrent.futures.Future[None], fut: concurrent.futures.Future[m.Message]
) -> None:
    exc = sent.exception()
    if exc is not None and not fut.done():
        if not isinstance(exc, StrongroomError):
            exc = StrongroomError(f"lost the connection to the server ({exc})")
        fut.set_exception(exc)
